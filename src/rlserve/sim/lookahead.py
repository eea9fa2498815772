"""Clairvoyant lookahead routing: a reference for how much a workload leaves for any router to gain.

A router sees the cluster now and the request's prompt; it cannot know output lengths or the future. To tell "the
policy is weak" from "there is nothing to win", this module routes with knowledge no deployable router has: at
every arrival, each replica is forked and drained (no later arrivals) with the new request, using the true output
lengths, and the request goes to the replica where the summed latency of that replica's requests grows least
(completion times, plus ``ttft_weight`` times first-token times). That is the exact marginal cost of the decision
in total (hence mean) latency, given everything already in the system.

It is an oracle on purpose: it reads the simulator's true output lengths (never the declared ``max_tokens``
routers get), because it measures headroom, not a deployable policy; results label it as clairvoyant.

It is myopic (it ignores the arrivals still to come), so it is not a proven optimum, but it is a demanding bar: if
it gains only a few percent over the best heuristic on a scenario, no router can be expected to gain much more
there. ``benchmarks/router_quality.py`` reports its gain beside the PPO router's, and the PPO router's warm start
can use it as a teacher (``warm_start.teacher: [lookahead]``).

Cost: one fork-and-drain of each replica's pending work per arrival (a few ms at 4 replicas), which is why this
is a planner over the simulator's internals and not a :class:`~rlserve.policies.base.Router`.
"""

from __future__ import annotations

import math

import numpy as np

from rlserve.sim.cluster import ClusterSimulator, SimResult
from rlserve.sim.config import ClusterConfig
from rlserve.sim.replica import Replica
from rlserve.workload.request import Workload

_END_OF_TIME = 1e300


class LookaheadPlanner:
    """Chooses a replica for the simulator's next arrival (see module docstring).

    Without new requests a replica's trajectory is fixed, so each replica's drained latencies are cached and reused
    until the replica receives a request (the fork that probed the request it received is the new cache).
    """

    def __init__(self, sim: ClusterSimulator, ttft_weight: float = 0.0) -> None:
        self.sim = sim
        self.ttft_weight = ttft_weight
        # per replica: (requests assigned when computed, {unfinished request: drained latency cost})
        self._base: list[tuple[int, dict[int, float]]] = [(0, {}) for _ in sim.replicas]
        self._probe: list[tuple[int, int, dict[int, float]]] = [(-1, -1, {}) for _ in sim.replicas]

    def choose(self) -> int:
        """The replica for ``sim.peek_arrival()`` (ties go to the lowest index)."""
        request = self.sim.peek_arrival()
        if request is None:
            raise ValueError("no arrival left to route")
        best, best_cost = 0, math.inf
        for r, rep in enumerate(self.sim.replicas):
            rep.advance_to(request.arrival_s)
            base = self._drained_base(r, rep)
            probe = self._drain(rep, [*base, request.id], new=request.id)
            self._probe[r] = (rep.assigned + 1, request.id, probe)
            cost = sum(probe.values()) - sum(base.values())
            if cost < best_cost:
                best, best_cost = r, cost
        return best

    def _drained_base(self, r: int, rep: Replica) -> dict[int, float]:
        """Drained costs of the replica's unfinished requests, from the cache when still exact."""
        table = rep.t
        assigned, rid, probe = self._probe[r]
        if rep.assigned == assigned and table.replica[rid] == r:  # it received the request it was probed with
            self._base[r] = (assigned, {i: c for i, c in probe.items() if c < math.inf})
        count, base = self._base[r]
        if rep.assigned != count:  # dispatched without a probe: recompute from the table
            ids = [i for i, owner in enumerate(table.replica) if owner == r and not table.rejected[i]]
            base = self._drain(rep, ids, new=None)
            self._base[r] = (rep.assigned, base)
        live = {i: c for i, c in base.items() if table.finish[i] != table.finish[i]}  # NaN: not finished yet
        self._base[r] = (rep.assigned, live)
        return live

    def _drain(self, rep: Replica, ids: list[int], new: int | None) -> dict[int, float]:
        """Latency cost per request of ``ids`` when a fork of ``rep`` (with ``new`` enqueued now) runs with no later
        arrivals; a request the replica rejects costs infinity."""
        table = rep.t.copy()
        fork = rep.fork(table)
        if new is not None:
            fork.enqueue(new, table.arrival[new])
        fork.advance_to(_END_OF_TIME)
        w = self.ttft_weight
        return {i: math.inf if table.rejected[i] else table.finish[i] + w * table.first_token[i] for i in ids}


def simulate_lookahead(cluster: ClusterConfig, workload: Workload, *, seed: int = 0,
                       ttft_weight: float = 0.0) -> tuple[SimResult, np.ndarray]:
    """Route ``workload`` with the clairvoyant lookahead (see module docstring).

    Returns:
        The finished simulation and the replica chosen for each request.
    """
    sim = ClusterSimulator(cluster, workload, seed=seed)
    planner = LookaheadPlanner(sim, ttft_weight)
    choices = np.empty(len(workload), dtype=np.int64)
    for i in range(len(workload)):
        choices[i] = planner.choose()
        sim.dispatch(int(choices[i]))
    return sim.finish(), choices
