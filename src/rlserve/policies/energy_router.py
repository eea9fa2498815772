"""An energy-aware router for heterogeneous replicas: the cheapest replica in joules that still meets the SLO.

Latency routers (least outstanding, join-shortest-queue, least expected latency) spread load by speed. In a
cluster of different GPUs the joules a request costs also differ: an H100 decodes a token of a 7B model for a
fraction of the energy an A40 needs, while an idle replica draws its idle power whether or not it serves. This
router estimates, per replica, the *marginal* dynamic energy of the request (its prompt's prefill plus its output
tokens decoded in a batch one larger than the replica's, minus the idle power that would be spent anyway) from
each replica's performance model, and picks the cheapest replica whose estimated TTFT (prefill backlog ahead of
the request plus its own prompt, at the replica's prefill speed) stays within ``ttft_budget`` of the TTFT SLO,
whose decode batch stays within the TPOT SLO, whose KV cache is at most ``kv_limit`` full and which has at
most ``max_waiting`` requests not yet admitted (a full KV cache queues and preempts requests, which no
prefill-backlog estimate sees). When no replica qualifies it falls back to the least expected
latency. ``energy_weight`` blends in latency (0: pure latency, the least-expected-latency router).

It uses only what a proxy knows: each replica's GPU and model (the operator configured them), its queue state,
the request's prompt length and its expected output: the cluster's observed mean output capped by the declared
``max_tokens`` (:func:`~rlserve.policies.routers.expected_output_tokens`, as
:class:`~rlserve.policies.routers.LeastExpectedLatencyRouter` does), never the true length.
Not registered by name: it needs the cluster configuration (``EnergyAwareRouter(cluster, slo)``).
"""

from __future__ import annotations

from rlserve.metrics import Slo
from rlserve.policies.base import fair_argmin
from rlserve.policies.routers import LeastExpectedLatencyRouter, _Seeded, expected_output_tokens
from rlserve.sim import ClusterConfig, build_perf_model
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request

PROBE_CONTEXT = 1024  # tokens of context per sequence at which decode energy is estimated


class EnergyAwareRouter(_Seeded):
    """Least marginal energy among replicas predicted to meet the SLO (see the module docstring)."""

    name = "energy_aware"

    def __init__(self, cluster: ClusterConfig, slo: Slo, *, ttft_budget: float = 0.5,
                 energy_weight: float = 1.0, kv_limit: float = 0.85, max_waiting: int = 2) -> None:
        super().__init__()
        self.kv_limit = kv_limit
        self.max_waiting = max_waiting
        self.perfs = [build_perf_model(r) for r in cluster.replicas]
        self.max_seqs = [r.max_num_seqs for r in cluster.replicas]
        self.slo = slo
        self.ttft_budget = ttft_budget
        self.energy_weight = energy_weight
        self._decode: list[dict[int, tuple[float, float]]] = [{} for _ in self.perfs]
        self._prefill = []
        for p in self.perfs:  # dynamic joules per prompt token: a 1024-token prefill, idle power taken out
            t, e = p.step_cost([(1024, 0)], 0, 0)
            self._prefill.append((e - p.idle_power_w * t) / 1024)

    def _decode_step(self, i: int, batch: int) -> tuple[float, float]:
        """(seconds, dynamic joules) of one decode step of ``batch`` sequences at the probe context on replica i."""
        c = self._decode[i].get(batch)
        if c is None:
            p = self.perfs[i]
            t0, t1, e0, e1 = p.decode_coeffs(batch)
            s = batch * PROBE_CONTEXT
            t = t0 + t1 * s
            c = self._decode[i][batch] = (t, e0 + e1 * s - p.idle_power_w * t)
        return c

    def marginal_energy_j(self, i: int, batch: int, request: Request, output_tokens: float) -> float:
        """Dynamic joules replica ``i`` spends because of ``request`` (``output_tokens`` expected) joining a decode
        batch of ``batch``."""
        _, e_with = self._decode_step(i, batch + 1)
        _, e_without = self._decode_step(i, batch) if batch else (0.0, 0.0)
        return request.prompt_tokens * self._prefill[i] + output_tokens * (e_with - e_without)

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """The cheapest feasible replica; the least expected latency if none is feasible."""
        ttft_s = (self.slo.ttft_s or 2.0) * self.ttft_budget
        output = expected_output_tokens(request, snapshot)
        latency = [LeastExpectedLatencyRouter.estimate_s(r, request, output) for r in snapshot.replicas]
        scores, feasible = [], []
        for i, r in enumerate(snapshot.replicas):
            batch = min(r.num_running + r.num_waiting, self.max_seqs[i] - 1)
            wait_s = (r.pending_prefill_tokens + request.prompt_tokens) / r.prefill_tokens_per_s
            step_s, _ = self._decode_step(i, batch + 1)
            ok = (wait_s <= ttft_s and (self.slo.tpot_s is None or step_s <= self.slo.tpot_s)
                  and r.kv_usage <= self.kv_limit and r.num_waiting <= self.max_waiting)
            feasible.append(ok)
            scores.append(self.energy_weight * self.marginal_energy_j(i, batch, request, output)
                          + (1.0 - self.energy_weight) * latency[i])
        if not any(feasible):
            return fair_argmin(latency, self.rng)
        return fair_argmin([s if ok else float("inf") for s, ok in zip(scores, feasible, strict=True)], self.rng)
