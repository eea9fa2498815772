"""Per-replica admission control: the real-world actuator of an energy controller's concurrency cap.

vLLM fixes ``max_num_seqs`` at start-up, so the proxy enforces a *run-time* cap instead: at most ``cap``
requests are in flight to a replica; further requests routed there wait, first come first served, in a bounded
queue. This mirrors ``ClusterSimulator.set_concurrency_cap`` (the simulator's replica keeps capped requests in
its waiting queue), which is why the proxy reports those waiting requests in ``ReplicaState.num_waiting``.

Never a hang: a full queue rejects at once (HTTP 429) and a wait longer than the timeout gives up (HTTP 503),
both before anything was sent upstream. Raising the cap, or finishing a request, admits waiters immediately;
lowering it lets in-flight requests finish and admits no one until the count is below the new cap. A replica
found down fails its waiters with :class:`ReplicaDown` so the caller can send them elsewhere.

All methods run on the proxy's event loop (no locks: asyncio is single-threaded).
"""

from __future__ import annotations

import asyncio
from collections import deque

from rlserve.serve.proxy_error import ProxyError


class ReplicaDown(Exception):
    """Raised to waiters of a replica that was marked down while they waited (the caller re-routes)."""


class ReplicaGate:
    """Concurrency cap + bounded FIFO wait queue of one replica."""

    __slots__ = ("index", "cap", "in_flight", "max_queue", "_waiters")

    def __init__(self, index: int, cap: int | None, max_queue: int) -> None:
        self.index = index
        self.cap = cap  # None = uncapped
        self.in_flight = 0  # admitted and not yet released
        self.max_queue = max_queue
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    def _has_room(self) -> bool:
        return self.cap is None or self.in_flight < self.cap

    async def acquire(self, timeout_s: float) -> None:
        """Take a slot, waiting at most ``timeout_s``.

        Raises:
            ProxyError: 429 when the queue is full, 503 when the wait timed out.
            ReplicaDown: the replica was marked down while waiting.
        """
        if not self._waiters and self._has_room():
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise ProxyError(429, "queue_full", f"replica {self.index} is at its concurrency cap ({self.cap}) and "
                             f"{len(self._waiters)} requests already wait; retry later", retry_after_s=1.0)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except TimeoutError:
            if self._granted(fut):  # the slot arrived in the same loop turn as the timeout: keep it
                return
            self._forget(fut)
            raise ProxyError(503, "queue_timeout", f"no slot on replica {self.index} (cap {self.cap}) within "
                             f"{timeout_s:.2g} s (queue_timeout_s); retry later or raise the cap",
                             retry_after_s=1.0) from None
        except asyncio.CancelledError:  # the client went away
            if self._granted(fut):
                self.release()
            else:
                self._forget(fut)
            raise

    @staticmethod
    def _granted(fut: asyncio.Future[None]) -> bool:
        return fut.done() and not fut.cancelled() and fut.exception() is None

    def _forget(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:  # already popped (failed by fail_waiters)
            pass

    def release(self) -> None:
        """Give a slot back and admit the next waiter(s) if the cap allows."""
        self.in_flight -= 1
        if self._waiters:
            self._admit_waiters()

    def set_cap(self, cap: int | None) -> None:
        """Change the cap now; a higher cap admits waiters at once."""
        self.cap = cap
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._waiters and self._has_room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def fail_waiters(self) -> None:
        """Wake every waiter with :class:`ReplicaDown` (the replica was found down)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ReplicaDown(f"replica {self.index} is down"))
