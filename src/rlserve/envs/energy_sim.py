"""One simulated server driven one control interval at a time, and controllers run on it.

:class:`ControlledServer` is the loop shared by :class:`~rlserve.envs.energy_env.EnergyEnv` (training) and
:func:`run_controller` (evaluation of any controller, baselines included), so the DQN is trained and judged on
exactly the dynamics, observations and interval outcomes the baselines see.

SLO misses are counted once per request, as soon as they are certain: when a request has waited longer than the
TTFT (or E2E) SLO without its first token (or without finishing), or when it finishes outside any threshold.
Counting at the moment of certainty, not only at completion, puts the penalty next to the decisions that
caused it.

A clock change costs what the scenario's :class:`~rlserve.sim.clock_transition.ClockTransition` says: the old
clock holds for ``latency_s`` after the decision, then the engine stalls ``stall_s`` (at idle power, plus
``energy_j``). A latency beyond the interval is cut to the interval (the change lands before the next decision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rlserve.envs.energy_reward import IntervalOutcome
from rlserve.errors import ConfigError
from rlserve.metrics import Slo, Summary
from rlserve.policies.energy.base import EnergyController, EnergyDecision
from rlserve.sim import ClusterConfig, ClusterSimulator, SimResult
from rlserve.sim.clock_transition import FREE_TRANSITION, ClockTransition
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Workload

DEFAULT_QUEUE_K = 8  # queue entries in each snapshot: enough to find the oldest request not yet prefilled


class ControlledServer:
    """A one-replica simulation that applies a (cap, clock) decision and then advances one control interval."""

    def __init__(self, cluster: ClusterConfig, workload: Workload, slo: Slo, *, interval_s: float = 1.0,
                 queue_k: int = DEFAULT_QUEUE_K, transition: ClockTransition = FREE_TRANSITION) -> None:
        if len(cluster.replicas) != 1:
            raise ConfigError(f"an energy scenario controls one server; this cluster has {len(cluster.replicas)} "
                              "replicas (give one replica in cluster.replicas)")
        if not interval_s > 0:
            raise ConfigError(f"control interval_s must be > 0, got {interval_s}")
        self.cluster = cluster
        self.workload = workload
        self.slo = slo
        self.interval_s = float(interval_s)
        self.queue_k = queue_k
        self.sim = ClusterSimulator(cluster, workload)
        self.max_num_seqs = cluster.replicas[0].max_num_seqs
        self.transition = transition
        self._target_mhz = float(self.sim.replicas[0].perf.sm_clock_mhz)  # the clock last asked for
        self._pending_mhz: float | None = None
        self.clock_changes = 0  # decisions that changed the clock
        self.transition_s = 0.0  # time spent in transition (latency + stall per change)
        self._dispatched = 0
        self._settled = np.zeros(len(workload), bool)  # finished or already counted as a miss
        self._missed = np.zeros(len(workload), bool)
        self._open_from = 0  # every request below this index is settled
        first = self.snapshot().replicas[0]
        self._energy_j = first.energy_j or 0.0
        self._generated = first.generated_tokens_total

    @property
    def now_s(self) -> float:
        """Simulated time."""
        return self.sim.now

    @property
    def arrived(self) -> int:
        """Requests that have arrived so far."""
        return self._dispatched

    @property
    def arrivals_done(self) -> bool:
        """Every request of the workload has arrived."""
        return self._dispatched >= len(self.workload)

    @property
    def drained(self) -> bool:
        """Every request arrived and none is left on the server."""
        if not self.arrivals_done:
            return False
        r = self.sim.snapshot().replicas[0]
        return r.num_waiting + r.num_running == 0

    def snapshot(self) -> ClusterSnapshot:
        """The server now, with the queue view the observation needs."""
        return self.sim.snapshot(queue_k=self.queue_k)

    def apply(self, decision: EnergyDecision) -> EnergyDecision:
        """Set cap and clock for the next interval (the cap is clipped to ``max_num_seqs``); returns what was set."""
        cap = max(1, min(int(decision.concurrency_cap), self.max_num_seqs))
        self.sim.set_concurrency_cap(0, cap)
        mhz = float(decision.sm_clock_mhz)
        if mhz != self._target_mhz:
            self.clock_changes += 1
            self.transition_s += min(self.transition.latency_s, self.interval_s) + self.transition.stall_s
            self._target_mhz = mhz
            if self.transition.free:
                self.sim.set_sm_clock(0, mhz)
            else:
                self._pending_mhz = mhz
        return EnergyDecision(cap, decision.sm_clock_mhz)

    def _dispatch_before(self, t: float) -> int:
        """Dispatch every arrival before ``t``; returns how many."""
        until = int(np.searchsorted(self.workload.arrival_s, t, side="left"))
        n = max(0, until - self._dispatched)
        for _ in range(self._dispatched, until):
            self.sim.dispatch(0)
        self._dispatched = max(self._dispatched, until)
        return n

    def step(self) -> tuple[ClusterSnapshot, IntervalOutcome]:
        """Dispatch the interval's arrivals, advance to its end; return the new snapshot and what happened."""
        sim = self.sim
        t_end = sim.now + self.interval_s
        arrivals = 0
        if self._pending_mhz is not None:  # the old clock holds until the switch, then the engine stalls
            t_switch = min(sim.now + self.transition.latency_s, t_end)
            arrivals += self._dispatch_before(t_switch)
            sim.advance_to(t_switch)
            sim.set_sm_clock(0, self._pending_mhz)
            sim.stall(0, self.transition.stall_s, self.transition.energy_j)
            self._pending_mhz = None
        arrivals += self._dispatch_before(t_end)
        sim.advance_to(t_end)
        snap = self.snapshot()
        r = snap.replicas[0]
        energy = (r.energy_j or 0.0) - self._energy_j
        tokens = r.generated_tokens_total - self._generated
        self._energy_j, self._generated = r.energy_j or 0.0, r.generated_tokens_total
        finished = sim.pop_finished()
        misses, mean_e2e = self._settle(finished, t_end)
        return snap, IntervalOutcome(interval_s=self.interval_s, energy_j=energy, tokens=tokens,
                                     finished=len(finished), slo_misses=misses, mean_e2e_s=mean_e2e,
                                     kv_usage=r.kv_usage, arrivals=arrivals)

    def _settle(self, finished: np.ndarray, now: float) -> tuple[int, float]:
        """Count requests whose SLO miss became certain in this interval; mean E2E of those that finished."""
        rec = self.sim.records
        misses = 0
        mean_e2e = math.nan
        if len(finished):
            e2e = rec.e2e_s[finished]
            mean_e2e = float(e2e.mean())
            met = self.slo.met(rec.ttft_s[finished], rec.tpot_s[finished], e2e)
            new_miss = ~met & ~self._settled[finished]
            misses += int(new_miss.sum())
            self._missed[finished[new_miss]] = True
            self._settled[finished] = True
        lo, hi = self._open_from, self._dispatched
        if hi > lo:
            age = now - rec.arrival_s[lo:hi]
            late = np.zeros(hi - lo, bool)
            if self.slo.ttft_s is not None:
                late |= np.isnan(rec.first_token_s[lo:hi]) & (age > self.slo.ttft_s)
            if self.slo.e2e_s is not None:
                late |= np.isnan(rec.finish_s[lo:hi]) & (age > self.slo.e2e_s)
            late &= ~self._settled[lo:hi]
            misses += int(late.sum())
            self._missed[lo:hi] |= late
            self._settled[lo:hi] |= late
            open_ = np.flatnonzero(~self._settled[lo:hi])
            self._open_from = lo + (int(open_[0]) if len(open_) else hi - lo)
        return misses, mean_e2e

    def finish(self) -> SimResult:
        """Dispatch what is left and run the server to completion at the last settings."""
        for _ in range(self._dispatched, len(self.workload)):
            self.sim.dispatch(0)
        self._dispatched = len(self.workload)
        return self.sim.finish()


@dataclass
class ControlTrace:
    """One row per control interval (the data behind the clock / cap / power plots)."""

    time_s: list[float]
    sm_clock_mhz: list[float]
    concurrency_cap: list[int]
    power_w: list[float]
    num_running: list[int]
    num_waiting: list[int]
    slo_misses: list[int]

    @classmethod
    def empty(cls) -> ControlTrace:
        """A trace with no rows."""
        return cls([], [], [], [], [], [], [])

    def add(self, t: float, d: EnergyDecision, outcome: IntervalOutcome, snap: ClusterSnapshot) -> None:
        """Append the interval that just ended under decision ``d``."""
        r = snap.replicas[0]
        self.time_s.append(t)
        self.sm_clock_mhz.append(d.sm_clock_mhz)
        self.concurrency_cap.append(d.concurrency_cap)
        self.power_w.append(outcome.energy_j / outcome.interval_s)
        self.num_running.append(r.num_running)
        self.num_waiting.append(r.num_waiting)
        self.slo_misses.append(outcome.slo_misses)

    def time_weighted_mean(self, name: str) -> float:
        """Mean of a column over the run (intervals are equal, so the plain mean)."""
        v = getattr(self, name)
        return float(np.mean(v)) if v else math.nan


@dataclass
class ControlRun:
    """A controller's whole run on one workload."""

    controller: str
    summary: Summary
    trace: ControlTrace
    clock_changes: int = 0
    transition_s: float = 0.0

    @property
    def controlled_s(self) -> float:
        """Simulated time under control (intervals run)."""
        t = self.trace.time_s
        return float(t[-1]) if t else 0.0

    def switching(self) -> dict[str, float]:
        """Clock and cap changes per minute and the fraction of the run spent in clock transitions."""
        minutes = max(self.controlled_s, 1e-9) / 60.0
        caps = self.trace.concurrency_cap
        cap_changes = sum(1 for a, b in zip(caps, caps[1:], strict=False) if a != b)
        return {"clock_changes_per_min": self.clock_changes / minutes, "cap_changes_per_min": cap_changes / minutes,
                "transition_time_frac": self.transition_s / max(self.controlled_s, 1e-9)}


def run_controller(controller: EnergyController, cluster: ClusterConfig, workload: Workload, slo: Slo, *,
                   interval_s: float = 1.0, seed: int | None = None, max_drain_s: float = 3600.0,
                   transition: ClockTransition = FREE_TRANSITION) -> ControlRun:
    """Run ``controller`` every ``interval_s`` over the whole workload and until the server drains.

    The summary's energy covers the run from the first arrival to the last completion (idle time included);
    ``transition`` is what each clock change costs (a scenario's ``clock_transition``).
    """
    server = ControlledServer(cluster, workload, slo, interval_s=interval_s, transition=transition)
    controller.reset(seed)
    trace = ControlTrace.empty()
    snap = server.snapshot()
    last_arrival = float(workload.arrival_s[-1]) if len(workload) else 0.0
    while not server.drained and server.now_s < last_arrival + max_drain_s:
        applied = server.apply(controller.decide(snap, 0))
        snap, outcome = server.step()
        trace.add(snap.time_s, applied, outcome, snap)
    result = server.finish()
    return ControlRun(getattr(controller, "name", type(controller).__name__), result.summary(slo), trace,
                      server.clock_changes, server.transition_s)
