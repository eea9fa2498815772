"""The clairvoyant lookahead: probing forks never disturbs the real run, and it routes at least as well as heuristics
where routing matters."""

from __future__ import annotations

import numpy as np
import pytest

from rlserve.policies import make_router
from rlserve.scenario import load_scenario
from rlserve.sim import ClusterSimulator, simulate
from rlserve.sim.lookahead import LookaheadPlanner, simulate_lookahead
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request


class Replay:
    """Routes request ``i`` to ``choices[i]``."""

    name = "replay"

    def __init__(self, choices: np.ndarray) -> None:
        self.choices = choices

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        return int(self.choices[request.id])


@pytest.fixture(scope="module")
def heterogeneous():
    scn = load_scenario("heterogeneous").with_num_requests(400)
    workload = scn.build_workload(3)
    result, choices = simulate_lookahead(scn.cluster, workload)
    return scn, workload, result, choices


def test_forks_leave_the_run_untouched(heterogeneous) -> None:
    # Replaying the lookahead's choices without any forking must reproduce every per-request outcome exactly.
    scn, workload, result, choices = heterogeneous
    replayed = simulate(scn.cluster, workload, Replay(choices)).records
    for column in ("replica", "first_token_s", "finish_s", "preemptions", "energy_j"):
        np.testing.assert_array_equal(getattr(replayed, column), getattr(result.records, column))


def test_it_beats_count_based_routing_on_a_heterogeneous_cluster(heterogeneous) -> None:
    scn, workload, result, choices = heterogeneous
    oracle_e2e = result.summary(scn.slo).e2e_s["mean"]
    for name in ("round_robin", "least_outstanding"):
        heuristic = simulate(scn.cluster, workload, make_router(name, seed=0)).summary(scn.slo).e2e_s["mean"]
        assert oracle_e2e < 0.95 * heuristic, name
    # it uses the fast replicas (H100s are 0 and 1) for most requests, but not for all
    fast_share = np.mean(choices < 2)
    assert 0.5 < fast_share < 1.0


def test_cached_choices_equal_fresh_ones_whatever_drives_the_cluster() -> None:
    # A planner reuses each replica's drained latencies until it receives a request; a fresh planner recomputes
    # everything from the request table. Under arbitrary (random) dispatching both must choose alike.
    scn = load_scenario("heterogeneous").with_num_requests(150)
    sim = ClusterSimulator(scn.cluster, scn.build_workload(5))
    cached = LookaheadPlanner(sim, ttft_weight=1.0)
    rng = np.random.default_rng(0)
    agree = 0
    while sim.peek_arrival() is not None:
        choice = cached.choose()
        assert choice == LookaheadPlanner(sim, ttft_weight=1.0).choose()
        agree += 1
        sim.dispatch(int(rng.integers(sim.num_replicas)))
    assert agree == 150
