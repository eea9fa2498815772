"""The cluster simulator: arrivals in time order, a router per arrival, replicas advanced lazily.

Replicas only interact through routing, so each one is advanced only when something needs it: the replica
that receives a request, every replica when a policy reads the snapshot, all of them at the end. Routers that
ignore state (round robin, random) therefore never pay for observations. The snapshot at an arrival reflects
every iteration that ended at or before that instant, never the future.

Typical use::

    sim = ClusterSimulator(cluster, workload, seed=0)
    sim.run(make_router("least_outstanding", seed=0))
    result = sim.finish()
    print(result.summary(Slo(ttft_s=2.0)).ttft_s["p99"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rlserve.errors import ConfigError
from rlserve.metrics import RequestRecords, Slo, Summary, summarize
from rlserve.prefix_index import PrefixIndex, prefix_block_hashes
from rlserve.sim.config import ClusterConfig, ReplicaConfig
from rlserve.sim.replica import PerfModel, Replica, RequestTable
from rlserve.snapshot import ClusterSnapshot, ReplicaState
from rlserve.workload.request import Request, Workload

if TYPE_CHECKING:
    from rlserve.policies.base import Router

_END_OF_TIME = 1e300  # finite, so that an idle replica (busy_until = inf) is never "due"


def build_perf_model(cfg: ReplicaConfig) -> PerfModel:
    """The roofline performance/power model of one replica configuration."""
    from pathlib import Path

    from rlserve.perf import ReplicaPerfModel, get_gpu, get_model, load_hf_config

    model = load_hf_config(cfg.model) if Path(cfg.model).suffix == ".json" else get_model(cfg.model)
    return ReplicaPerfModel(get_gpu(cfg.gpu), model, tp=cfg.tp, sm_clock_mhz=cfg.sm_clock_mhz)


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica did over a run."""

    requests: int
    rejected: int
    completed: int
    preemptions: int
    busy_s: float
    energy_j: float
    utilization: float  # busy time / run duration
    mean_kv_usage: float  # time-weighted fraction of KV blocks in use (trapezoid within decode runs)
    kv_blocks_total: int
    prefix_hit_tokens: int = 0  # prompt tokens found in the prefix cache instead of computed


@dataclass(frozen=True)
class SimResult:
    """The outcome of a finished simulation."""

    records: RequestRecords
    replica_stats: tuple[ReplicaStats, ...]
    duration_s: float
    rejected: int

    @property
    def energy_j(self) -> float:
        """GPU energy of the whole cluster over the run (busy + idle)."""
        return sum(r.energy_j for r in self.replica_stats)

    def summary(self, slo: Slo | None = None, percentiles: Sequence[float] = (50.0, 90.0, 99.0)) -> Summary:
        """Aggregates (latency distributions, throughput, SLO attainment, energy per token, per-replica use)."""
        extra: dict[str, Any] = {
            "rejected": self.rejected,
            "replicas": [vars(r) for r in self.replica_stats],
            "mean_kv_usage": float(np.mean([r.mean_kv_usage for r in self.replica_stats])),
            "mean_utilization": float(np.mean([r.utilization for r in self.replica_stats])),
            # share of the prompt tokens of finished requests served from a prefix cache (0 without prefixes)
            "prefix_hit_rate": sum(r.prefix_hit_tokens for r in self.replica_stats)
            / max(int(self.records.prompt_tokens[self.records.finished].sum()), 1),
        }
        return summarize(self.records, slo or Slo(), num_replicas=len(self.replica_stats),
                         energy_j=self.energy_j, percentiles=percentiles, extra=extra)


class ClusterSimulator:
    """Discrete-event simulation of a vLLM cluster driven one arrival at a time (see module docstring)."""

    def __init__(self, cluster: ClusterConfig, workload: Workload, *, seed: int = 0,
                 perf_models: Sequence[PerfModel] | None = None, exact_steps: bool = False) -> None:
        if perf_models is not None and len(perf_models) != len(cluster.replicas):
            raise ConfigError(f"got {len(perf_models)} perf models for {len(cluster.replicas)} replicas")
        self.cluster = cluster
        self.workload = workload
        self.seed = seed  # the simulator itself is deterministic; the seed is recorded for provenance
        self.table = RequestTable(
            workload.arrival_s.tolist(), workload.prompt_tokens.tolist(), workload.output_tokens.tolist(),
            workload.prefix_id.tolist(), workload.prefix_tokens.tolist(), workload.max_tokens.tolist())
        perfs = list(perf_models) if perf_models is not None else [build_perf_model(c) for c in cluster.replicas]
        self.replicas = [Replica(i, c, p, self.table, exact_steps=exact_steps)
                         for i, (c, p) in enumerate(zip(cluster.replicas, perfs, strict=True))]
        self.num_replicas = len(self.replicas)
        # What a proxy would know about cached prefixes: the same bounded index the proxy keeps, over prefix ids.
        # A workload without shared prefixes can never match, so it skips the index (and its cost).
        self.prefix_index: PrefixIndex | None = None
        if len(workload) and int(workload.prefix_id.max()) >= 0:
            self.prefix_index = PrefixIndex(self.num_replicas, block_size=min(c.block_size for c in cluster.replicas))
        self._hashes: tuple[int, list[int]] = (-1, [])  # (request, its block hashes): computed once per request
        self.now = 0.0
        self._next = 0  # index of the next arrival to dispatch
        self._finished_seen = 0  # prefix of table.finished_order already returned by pop_finished

    # ------------------------------------------------------------------ stepping
    def peek_arrival(self) -> Request | None:
        """The next request not yet dispatched (time does not advance)."""
        return self.workload.request(self._next) if self._next < len(self.workload) else None

    def snapshot(self, queue_k: int = 0) -> ClusterSnapshot:
        """State at :attr:`now`; replica states are computed when first read."""
        now = self.now

        nxt = self._next

        def states() -> tuple[ReplicaState, ...]:
            for r in self.replicas:
                r.advance_to(now)
            out = tuple(r.state(now, queue_k) for r in self.replicas)
            if self.prefix_index is not None and nxt < len(self.workload):
                for state, hit in zip(out, self.prefix_index.matched_tokens(self._block_hashes(nxt), now),
                                      strict=True):
                    state.prefix_hit_tokens = hit
            return out

        return ClusterSnapshot(now, self.num_replicas, states, self._next)

    def _block_hashes(self, i: int) -> list[int]:
        """The prefix-index block hashes of request ``i`` (cached for the request being routed)."""
        if self._hashes[0] != i:
            t = self.table
            assert self.prefix_index is not None  # internal invariant
            self._hashes = (i, prefix_block_hashes(i, t.prompt[i], t.prefix_id[i], t.prefix_tokens[i],
                                                   self.prefix_index.block_size))
        return self._hashes[1]

    def _route(self, i: int, replica: int, t: float) -> None:
        """Hand request ``i`` to ``replica`` at ``t`` and remember its prompt blocks there, as the proxy does."""
        rep = self.replicas[replica]
        rep.advance_to(t)
        rep.enqueue(i, t)
        if self.prefix_index is not None:
            self.prefix_index.record(replica, self._block_hashes(i), t)

    def dispatch(self, replica: int) -> None:
        """Route the next arrival to ``replica``; time advances to its arrival."""
        if not 0 <= replica < self.num_replicas:
            raise ConfigError(f"replica index {replica} out of range [0, {self.num_replicas})")
        i = self._next
        if i >= len(self.workload):
            raise ConfigError("no request left to dispatch")
        t = self.table.arrival[i]
        self.now = t
        self._route(i, replica, t)
        self._next = i + 1

    def run(self, router: Router, until_s: float | None = None) -> None:
        """Dispatch arrivals with ``router`` (all of them, or those arriving before ``until_s``)."""
        arrival = self.table.arrival
        n = len(arrival)
        end = n if until_s is None else int(np.searchsorted(self.workload.arrival_s, until_s, side="left"))
        num = self.num_replicas
        table = self.table
        # what the router is told: the declared max_tokens, never the true output length (table.output)
        prompt, declared = table.prompt, table.declared
        select = router.select
        queue_k = getattr(router, "queue_k", 0)  # per-request queue views, as the proxy honours too
        for i in range(self._next, max(end, self._next)):
            t = arrival[i]
            self.now = t
            self._next = i
            r = select(Request(i, t, prompt[i], declared[i]), self.snapshot(queue_k))
            if not 0 <= r < num:
                raise ConfigError(f"router {getattr(router, 'name', router)!r} chose replica {r}, "
                                  f"outside [0, {num})")
            self._route(i, r, t)
            self._next = i + 1
        if until_s is not None:
            self.advance_to(max(self.now, until_s))

    def advance_to(self, t_s: float) -> None:
        """Process every replica up to ``t_s`` without dispatching anything."""
        if t_s < self.now:
            raise ConfigError(f"cannot go back in time from {self.now} to {t_s}")
        if self._next < len(self.workload) and self.table.arrival[self._next] < t_s:
            raise ConfigError(f"advance_to({t_s}) would skip undispatched arrivals; dispatch or run() first")
        self.now = t_s
        for r in self.replicas:
            r.advance_to(t_s)

    def set_sm_clock(self, replica: int, mhz: float) -> None:
        """SM clock of ``replica`` for iterations that start after :attr:`now`."""
        rep = self.replicas[replica]
        rep.advance_to(self.now)
        rep.set_sm_clock(mhz, self.now)

    def set_concurrency_cap(self, replica: int, cap: int) -> None:
        """Admission cap of ``replica`` from its next scheduling decision on."""
        rep = self.replicas[replica]
        rep.advance_to(self.now)
        rep.set_concurrency_cap(cap, self.now)

    def pop_finished(self) -> np.ndarray:
        """Ids of requests finished since the previous call (up to :attr:`now`), ordered by finish time."""
        for r in self.replicas:
            r.advance_to(self.now)
        order = self.table.finished_order
        ids = np.asarray(order[self._finished_seen:], dtype=np.int64)
        self._finished_seen = len(order)
        finish = np.asarray(self.table.finish)[ids] if len(ids) else np.empty(0)
        return ids[np.argsort(finish, kind="stable")]

    def replica_energy_j(self, replica: int) -> float:
        """Cumulative GPU energy of ``replica`` up to :attr:`now` (busy + idle)."""
        rep = self.replicas[replica]
        rep.advance_to(self.now)
        return rep.state(self.now).energy_j or 0.0

    @property
    def records(self) -> RequestRecords:
        """Per-request outcomes so far (NaN where not yet known)."""
        t = self.table
        w = self.workload
        return RequestRecords(
            arrival_s=w.arrival_s, prompt_tokens=w.prompt_tokens, output_tokens=w.output_tokens,
            replica=np.asarray(t.replica, np.int64), first_scheduled_s=np.asarray(t.first_sched),
            first_token_s=np.asarray(t.first_token), finish_s=np.asarray(t.finish),
            preemptions=np.asarray(t.preemptions, np.int64), energy_j=np.asarray(t.energy))

    def finish(self) -> SimResult:
        """Run every replica to completion (no further arrivals) and collect the result."""
        if self._next < len(self.workload):
            raise ConfigError(f"{len(self.workload) - self._next} requests were never dispatched; call run() first")
        for r in self.replicas:
            r.advance_to(_END_OF_TIME)
        records = self.records
        done = records.finished
        start = float(self.workload.arrival_s[0]) if len(self.workload) else 0.0
        end = float(records.finish_s[done].max()) if done.any() else self.now
        end = max(end, self.now)
        stats = []
        for r in self.replicas:
            r.close_idle(end)
            duration = max(end - start, 1e-12)
            stats.append(ReplicaStats(
                requests=r.assigned, rejected=r.rejected, completed=r.completed, preemptions=r.preemptions_total,
                busy_s=r.busy_s, energy_j=r.energy_j, utilization=r.busy_s / duration,
                mean_kv_usage=r.kv_block_seconds / duration / r.total_blocks, kv_blocks_total=r.total_blocks,
                prefix_hit_tokens=r.prefix_hit_tokens))
        self.now = end
        return SimResult(records=records, replica_stats=tuple(stats), duration_s=end - start,
                         rejected=sum(r.rejected for r in self.replicas))


def simulate(cluster: ClusterConfig, workload: Workload, router: Router, *, seed: int = 0,
             exact_steps: bool = False) -> SimResult:
    """Run a whole workload through ``router`` and return the result."""
    sim = ClusterSimulator(cluster, workload, seed=seed, exact_steps=exact_steps)
    sim.run(router)
    return sim.finish()
