"""The admission gate on its own: cap, FIFO order, bounded queue, timeout, cap changes, replica down, cancel."""

from __future__ import annotations

import asyncio

import pytest

from rlserve.serve.admission import ReplicaDown, ReplicaGate
from rlserve.serve.proxy_error import ProxyError

pytestmark = pytest.mark.anyio


async def test_uncapped_gate_never_waits() -> None:
    gate = ReplicaGate(0, None, max_queue=1)
    for _ in range(100):
        await gate.acquire(0.01)
    assert gate.in_flight == 100 and gate.queued == 0


async def test_waiters_are_admitted_in_arrival_order_as_slots_free() -> None:
    gate = ReplicaGate(0, 1, max_queue=10)
    await gate.acquire(1.0)
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.acquire(1.0)
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert gate.queued == 3
    for expected in ([0], [0, 1], [0, 1, 2]):
        gate.release()
        await asyncio.sleep(0)
        assert order == expected and gate.in_flight == 1
    await asyncio.gather(*tasks)


async def test_full_queue_is_rejected_with_429_at_once() -> None:
    gate = ReplicaGate(3, 1, max_queue=1)
    await gate.acquire(1.0)
    waiter = asyncio.create_task(gate.acquire(1.0))
    await asyncio.sleep(0)
    with pytest.raises(ProxyError) as info:
        await gate.acquire(1.0)
    assert info.value.status == 429 and "replica 3" in str(info.value)
    gate.release()
    await waiter


async def test_timeout_gives_503_and_leaves_no_trace() -> None:
    gate = ReplicaGate(0, 1, max_queue=5)
    await gate.acquire(1.0)
    with pytest.raises(ProxyError) as info:
        await gate.acquire(0.05)
    assert info.value.status == 503 and info.value.type == "queue_timeout"
    assert gate.queued == 0 and gate.in_flight == 1


async def test_raising_the_cap_admits_waiters_and_lowering_it_admits_none() -> None:
    gate = ReplicaGate(0, 2, max_queue=10)
    await gate.acquire(1.0)
    await gate.acquire(1.0)
    tasks = [asyncio.create_task(gate.acquire(1.0)) for _ in range(4)]
    await asyncio.sleep(0)
    gate.set_cap(4)
    await asyncio.sleep(0)
    assert gate.in_flight == 4 and gate.queued == 2
    gate.set_cap(1)
    for _ in range(3):
        gate.release()
    await asyncio.sleep(0)
    assert gate.in_flight == 1 and gate.queued == 2  # still above/at the new cap: nobody admitted
    gate.set_cap(None)
    await asyncio.gather(*tasks)
    assert gate.in_flight == 3 and gate.queued == 0


async def test_down_replica_fails_its_waiters() -> None:
    gate = ReplicaGate(0, 1, max_queue=10)
    await gate.acquire(1.0)
    tasks = [asyncio.create_task(gate.acquire(1.0)) for _ in range(2)]
    await asyncio.sleep(0)
    gate.fail_waiters()
    for t in tasks:
        with pytest.raises(ReplicaDown):
            await t
    assert gate.queued == 0 and gate.in_flight == 1


async def test_a_cancelled_waiter_frees_its_place_or_its_slot() -> None:
    gate = ReplicaGate(0, 1, max_queue=10)
    await gate.acquire(1.0)
    waiter = asyncio.create_task(gate.acquire(1.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.queued == 0
    # granted and cancelled in the same loop turn: the slot must come back
    waiter = asyncio.create_task(gate.acquire(1.0))
    await asyncio.sleep(0)
    gate.release()  # grants the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.in_flight == 0 and gate.queued == 0
