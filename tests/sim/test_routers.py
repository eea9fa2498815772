"""Heuristic routers choose as their names say, and break ties fairly."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from rlserve.errors import ConfigError
from rlserve.policies import ROUTERS, make_router
from rlserve.policies.base import fair_argmin
from rlserve.policies.routers import LeastExpectedLatencyRouter, expected_latency_s, expected_output_tokens
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
    from rlserve.experiments import HEURISTICS

    for name in ("random", "round_robin", "least_outstanding", "join_shortest_queue", "least_kv", "power_of_two",
                 "least_expected_latency", "prefix_affinity", "llmd", "lmetric", "loadaware"):
        assert name in ROUTERS and name in HEURISTICS
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
                                  "power_of_two", "random", "prefix_affinity", "llmd", "lmetric", "loadaware"])
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
    assert Request._fields == ("id", "arrival_s", "prompt_tokens", "max_tokens")  # no truth, no prefix ids
    assert sim.finish().records.output_tokens.tolist() == [3, 4, 5, 6, 7]  # the truth was executed


def test_least_expected_latency_counts_only_new_prefill_tokens() -> None:
    """Same backlog and speed; replica 1 is expected to hold 1,500 of the 2,000 prompt tokens in its prefix cache."""
    r = make_router("least_expected_latency", seed=0)
    req = Request(0, 0.0, 2000, 100)
    busy = replace(BASE, pending_prefill_tokens=1000)
    assert r.select(req, snap(BASE, replace(busy, prefix_hit_tokens=1500))) == 1
    assert r.select(req, snap(BASE, busy)) == 0


def test_least_expected_latency_avoids_a_fast_replica_whose_kv_cache_is_full() -> None:
    fast = replace(BASE, decode_tokens_per_s=350.0, prefill_tokens_per_s=50_000.0)
    r = make_router("least_expected_latency", seed=0)
    assert r.select(REQ, snap(fast, BASE)) == 0
    assert r.select(REQ, snap(replace(fast, kv_blocks_used=990, num_running=20), BASE)) == 1


H100_A40_LONG_OUTPUTS = {
    "name": "h100_a40_long_outputs",
    "cluster": {"defaults": {"model": "llama-2-7b", "batching": "chunked"},
                "replicas": [{"gpu": "h100-sxm"}, {"gpu": "a40"}]},
    "workload": {"num_requests": 1200, "arrival": {"kind": "poisson", "qps": 5.5},
                 "lengths": {"kind": "lognormal", "prompt_mean": 800, "prompt_median": 600, "output_mean": 600,
                             "output_median": 450},
                 "max_total_tokens": 4096},
    "slo": {"ttft_s": 2.0, "tpot_s": 0.1},
}


class _KvBlindLeastExpectedLatency(LeastExpectedLatencyRouter):
    """The estimate without its KV term (prefill + batched decode only): the collapse this test reproduces."""

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        output = expected_output_tokens(request, snapshot)
        return fair_argmin([expected_latency_s(r.pending_prefill_tokens, request.prompt_tokens,
                                               r.prefill_tokens_per_s, r.outstanding, output,
                                               r.decode_tokens_per_s) for r in snapshot.replicas], self.rng)


def test_least_expected_latency_no_longer_collapses_on_one_h100_and_one_a40() -> None:
    """Without the KV term the router piles long answers onto the H100 until it thrashes (every preemption on the
    H100, SLO attainment lost); with it the pair serves the load without preemptions."""
    import warnings

    from rlserve.scenario import scenario_from_dict
    from rlserve.sim import simulate

    scn = scenario_from_dict(H100_A40_LONG_OUTPUTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a few lengths are clipped to the 4,096-token context
        workload = scn.build_workload(0)
    blind_router = _KvBlindLeastExpectedLatency()
    blind_router.reset(0)
    results = {"blind": simulate(scn.cluster, workload, blind_router),
               "fixed": simulate(scn.cluster, workload, make_router("least_expected_latency", seed=0))}
    blind, fixed = (results[n].summary(scn.slo) for n in ("blind", "fixed"))
    blind_stats = results["blind"].replica_stats
    assert blind.preemptions_total > 100 and blind_stats[1].preemptions == 0  # all on the H100
    assert blind.slo_attainment < 0.95
    assert fixed.preemptions_total <= 5 and fixed.slo_attainment > 0.99
    assert fixed.e2e_s["mean"] < blind.e2e_s["mean"]
    print(f"without KV term: SLO {blind.slo_attainment:.1%}, {blind.preemptions_total} preemptions; "
          f"with: SLO {fixed.slo_attainment:.1%}, {fixed.preemptions_total}")


# --- prefix-aware routers ---------------------------------------------------------------------------------------
PROMPT = Request(0, 0.0, 1000, 100)


def test_prefix_affinity_follows_the_cache_unless_load_is_imbalanced() -> None:
    r = make_router("prefix_affinity", seed=0)
    hit = replace(BASE, prefix_hit_tokens=800, num_running=10, kv_blocks_used=300)
    assert r.select(PROMPT, snap(BASE, hit)) == 1  # 80% match > 0.3, despite 10 more in flight and a fuller cache
    assert r.select(PROMPT, snap(BASE, replace(hit, prefix_hit_tokens=200))) == 0  # 20%: the most free cache
    # imbalanced: more than 64 apart and more than 1.5x: the least loaded wins whatever the cache says
    assert r.select(PROMPT, snap(replace(BASE, num_running=5), replace(hit, num_running=80))) == 0
    assert r.select(PROMPT, snap(replace(BASE, num_running=60), replace(hit, num_running=80))) == 1  # not 1.5x


def test_llmd_weighs_prefix_3_queue_2_kv_2() -> None:
    r = make_router("llmd", seed=0)
    a = replace(BASE, kv_blocks_used=100)  # 3 x 0 + 2 x 1 (shortest queue) + 2 x 0.9 = 3.8
    b = replace(BASE, prefix_hit_tokens=1000, num_waiting=4, kv_blocks_used=500)  # 3 x 1 + 2 x 0 + 2 x 0.5 = 4.0
    assert r.select(PROMPT, snap(a, b)) == 1
    assert r.select(PROMPT, snap(a, replace(b, kv_blocks_used=700))) == 0  # 3.6 < 3.8
    # equal queues score 1 each: 0 + 2 + 1.8 = 3.8 against 3 + 2 + 0.6 = 5.6
    assert r.select(PROMPT, snap(replace(a, num_waiting=4), replace(b, kv_blocks_used=700))) == 1


def test_lmetric_multiplies_new_prefill_tokens_by_batch_size() -> None:
    r = make_router("lmetric", seed=0)
    a = replace(BASE, num_running=4)  # 1000 new tokens x 4 = 4000
    b = replace(BASE, num_running=10, prefix_hit_tokens=900)  # 100 x 10 = 1000
    assert r.select(PROMPT, snap(a, b)) == 1
    assert r.select(PROMPT, snap(a, replace(b, num_running=50))) == 0  # 100 x 50 = 5000
    # idle replicas score 0; the tie goes to fewer prefill tokens
    assert r.select(PROMPT, snap(BASE, replace(BASE, prefix_hit_tokens=500))) == 1


def test_loadaware_trades_one_cache_hit_for_a_mean_load_of_relative_load() -> None:
    r = make_router("loadaware", seed=0)
    # loads 10 and 30 (mean 20): relative -0.5 and +0.5; a full hit (1.0) on the busy one exactly offsets it
    idle, busy = replace(BASE, num_running=10), replace(BASE, num_running=30)
    assert r.select(PROMPT, snap(idle, replace(busy, prefix_hit_tokens=900))) == 0  # 0.9 - 0.5 < 0 + 0.5
    assert r.select(PROMPT, snap(replace(idle, num_running=15), replace(busy, num_running=25,
                                                                       prefix_hit_tokens=900))) == 1
    assert make_router("loadaware", seed=0, beta=0.0).select(PROMPT, snap(idle, replace(busy,
                                                                                        prefix_hit_tokens=10))) == 1
