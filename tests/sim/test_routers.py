"""Heuristic routers choose as their names say, and break ties fairly."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from rlserve.errors import ConfigError
from rlserve.policies import ROUTERS, make_router
from rlserve.snapshot import ClusterSnapshot, ReplicaState
from rlserve.workload.request import Request

BASE = ReplicaState(num_waiting=0, num_running=0, kv_blocks_used=0, kv_blocks_total=1000, block_size=16,
                    max_num_seqs=256, concurrency_cap=256, num_preemptions_total=0, pending_prefill_tokens=0,
                    pending_decode_tokens=0, completed_total=0, generated_tokens_total=0, recent_ttft_s=0.0,
                    recent_e2e_s=0.0, decode_tokens_per_s=100.0, prefill_tokens_per_s=10_000.0,
                    kv_capacity_tokens=16_000, sm_clock_mhz=1410.0)
REQ = Request(0, 0.0, 500, 100)


def snap(*states: ReplicaState) -> ClusterSnapshot:
    return ClusterSnapshot(0.0, len(states), tuple(states))


def test_registry_has_every_heuristic_and_rejects_unknown_names() -> None:
    for name in ("random", "round_robin", "least_outstanding", "join_shortest_queue", "least_kv", "power_of_two",
                 "least_expected_latency"):
        assert name in ROUTERS
    with pytest.raises(ConfigError, match="unknown router"):
        make_router("nope")


def test_round_robin_cycles() -> None:
    r = make_router("round_robin")
    s = snap(BASE, BASE, BASE)
    assert [r.select(REQ, s) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_counts_waiting_plus_running() -> None:
    r = make_router("least_outstanding", seed=0)
    s = snap(replace(BASE, num_running=3), replace(BASE, num_waiting=1, num_running=1), replace(BASE, num_waiting=3))
    assert r.select(REQ, s) == 1


def test_jsq_prefers_short_waiting_queue_even_with_more_running() -> None:
    r = make_router("join_shortest_queue", seed=0)
    s = snap(replace(BASE, num_waiting=2), replace(BASE, num_running=10))
    assert r.select(REQ, s) == 1


def test_least_kv_uses_the_fraction_not_the_count() -> None:
    r = make_router("least_kv", seed=0)
    s = snap(replace(BASE, kv_blocks_used=300, kv_blocks_total=1000), replace(BASE, kv_blocks_used=400,
                                                                              kv_blocks_total=4000))
    assert r.select(REQ, s) == 1


def test_least_expected_latency_prefers_the_faster_replica_at_equal_load() -> None:
    r = make_router("least_expected_latency", seed=0)
    s = snap(replace(BASE, num_running=2), replace(BASE, num_running=2, decode_tokens_per_s=300.0,
                                                   prefill_tokens_per_s=30_000.0))
    assert r.select(REQ, s) == 1


@pytest.mark.parametrize("name", ["least_outstanding", "join_shortest_queue", "least_kv", "least_expected_latency",
                                  "power_of_two", "random"])
def test_ties_are_broken_fairly_not_towards_replica_zero(name: str) -> None:
    r = make_router(name, seed=1)
    s = snap(BASE, BASE, BASE, BASE)
    counts = Counter(r.select(REQ, s) for _ in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 800  # each ~1000


def test_power_of_two_never_picks_the_worse_of_its_two_samples() -> None:
    r = make_router("power_of_two", seed=0)
    s = snap(replace(BASE, num_running=9), BASE, replace(BASE, num_running=5))
    counts = Counter(r.select(REQ, s) for _ in range(3000))
    assert counts[0] == 0  # replica 0 is the worst of any pair it is in
    assert counts[1] > counts[2] > 0  # 1 wins every pair it is in; 2 only the pair (0, 2)


def test_same_seed_same_choices() -> None:
    s = snap(BASE, BASE, BASE)
    a = make_router("random", seed=3)
    b = make_router("random", seed=3)
    assert [a.select(REQ, s) for _ in range(50)] == [b.select(REQ, s) for _ in range(50)]


def test_routers_in_simulation_see_declared_sizes_never_the_truth() -> None:
    """Information parity: the Request a router gets carries max_tokens, and no field holds the true length."""
    import numpy as np

    from rlserve.sim import ClusterSimulator
    from rlserve.sim.config import ClusterConfig, ReplicaConfig
    from rlserve.workload.request import Workload

    seen: list[Request] = []

    class Spy:
        name = "spy"

        def reset(self, seed: int | None = None) -> None: ...

        def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
            seen.append(request)
            return 0

    w = Workload.from_arrays(np.arange(5) * 0.1, np.full(5, 100), np.array([3, 4, 5, 6, 7]),
                             max_tokens=np.full(5, 512))
    sim = ClusterSimulator(ClusterConfig((ReplicaConfig(model="llama-2-7b", gpu="a100-80gb"),)), w)
    sim.run(Spy())
    assert [r.max_tokens for r in seen] == [512] * 5
    assert "output_tokens" not in Request._fields
    assert sim.finish().records.output_tokens.tolist() == [3, 4, 5, 6, 7]  # the truth was executed
