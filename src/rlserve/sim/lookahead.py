"""Clairvoyant lookahead routing: a reference for how much a workload leaves for any router to gain.

A router sees the cluster now and the request's prompt; it cannot know output lengths or the future. To tell "the
policy is weak" from "there is nothing to win", this module routes with knowledge no deployable router has: at
every arrival, each replica is forked and drained (no later arrivals) once with the new request and once without,
using the true output lengths, and the request goes to the replica where the summed completion times of that
replica's requests grow least. That is the exact marginal cost of the decision in total (hence mean) end-to-end
latency, given everything already in the system.

It is myopic (it ignores the arrivals still to come), so it is not a proven optimum, but it is a demanding bar: if
it gains only a few percent over the best heuristic on a scenario, no router can be expected to gain much more
there. ``benchmarks/router_quality.py`` reports its gain beside the PPO router's.

Cost: one fork-and-drain of each replica's pending work per arrival (about 10 s for 3,000
requests on 4 replicas), which is why this is an analysis tool and not a :class:`~rlserve.policies.base.Router`.
"""

from __future__ import annotations

import numpy as np

from rlserve.sim.cluster import ClusterSimulator, SimResult
from rlserve.sim.config import ClusterConfig
from rlserve.sim.replica import Replica
from rlserve.workload.request import Workload

_END_OF_TIME = 1e300


def _drained_finish_s(replica: Replica, now: float, ids: list[int], new: int | None) -> dict[int, float]:
    """Finish times of ``ids`` (and ``new``, enqueued at ``now``) when ``replica`` runs with no later arrivals;
    a request the replica rejects finishes at infinity."""
    table = replica.t.copy()
    fork = replica.fork(table)
    if new is not None:
        fork.enqueue(new, now)
        ids = [*ids, new]
    fork.advance_to(_END_OF_TIME)
    return {i: np.inf if table.rejected[i] else table.finish[i] for i in ids}


def simulate_lookahead(cluster: ClusterConfig, workload: Workload, *, seed: int = 0) -> tuple[SimResult, np.ndarray]:
    """Route ``workload`` with the clairvoyant lookahead (see module docstring).

    Returns:
        The finished simulation and the replica chosen for each request (ties go to the lowest index).
    """
    sim = ClusterSimulator(cluster, workload, seed=seed)
    table = sim.table
    live: list[list[int]] = [[] for _ in sim.replicas]  # unfinished requests per replica
    drained: list[dict[int, float]] = [{} for _ in sim.replicas]  # their finish times with no new arrivals
    choices = np.empty(len(workload), dtype=np.int64)
    for i in range(len(workload)):
        now = table.arrival[i]
        best, best_cost, best_finish = 0, np.inf, {}
        for r, rep in enumerate(sim.replicas):
            rep.advance_to(now)
            live[r] = [j for j in live[r] if table.finish[j] != table.finish[j]]  # NaN: not finished yet
            with_new = _drained_finish_s(rep, now, live[r], i)
            # Without a new request a replica's trajectory is fixed, so its cached drained times stay exact.
            cost = sum(with_new.values()) - sum(drained[r][j] for j in live[r])
            if cost < best_cost or r == 0:
                best, best_cost, best_finish = r, cost, with_new
        sim.dispatch(best)
        choices[i] = best
        if not table.rejected[i]:
            live[best].append(i)
        drained[best] = {j: best_finish[j] for j in live[best]}  # the fork ran exactly what dispatch did
    return sim.finish(), choices
