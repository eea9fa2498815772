"""EAIS-style controller: each interval, the (cap, clock) with the lowest *predicted* energy that meets the SLO.

GreenDLS's ``eais`` baseline predicts the latency and energy of each configuration with a model and picks the
cheapest one meeting the SLO. Ours predicts with the replica's performance model (the roofline the simulator
also uses, so in simulation its predictions are as good as they get) from a steady-state view of the measured
load, re-estimated every interval (EWMA):

- demand ``D = arrival rate x mean output tokens`` tokens/s; prefill busy fraction ``rho_p = arrival rate x
  prompt tokens x prefill seconds per token``;
- the running batch ``b`` solves Little's law ``b = min(cap, D * tpot(b) / (1 - rho_p))`` (fixed point), where
  ``tpot(b) = t0(b) + t1 * b * context`` is the decode iteration time at that clock;
- the GPU decodes whenever a request is present (a fraction ``min(1, D * tpot(1))`` of the time at light load);
  predicted energy per token = (decode power x decode fraction + prefill energy rate + idle power x idle
  fraction) / D;
- feasible when the stretched inter-token time meets the TPOT SLO (with ``slo_margin``), the prompt's prefill
  meets the TTFT SLO, and the concurrency the load needs at the cap stays below ``utilisation_limit x cap``
  (otherwise the admission queue grows without bound).

What it cannot see is what a steady-state model ignores: bursts (the EWMA lags), queue build-up and the
latency tail. That is the gap a learned controller can close.
"""

from __future__ import annotations

import numpy as np

from rlserve.errors import ConfigError
from rlserve.policies.energy.base import ControlContext, EnergyDecision, register_controller
from rlserve.policies.energy.state import IntervalTracker
from rlserve.snapshot import ClusterSnapshot

_PREFILL_PROBE_TOKENS = 512
_FIXED_POINT_ITERATIONS = 12


@register_controller("eais")
class EaisController:
    """Lowest predicted energy per token among (cap, clock) pairs predicted to meet the SLO."""

    name = "eais"

    def __init__(self, context: ControlContext, *, utilisation_limit: float = 0.85, slo_margin: float = 0.9,
                 smoothing: float = 0.3) -> None:
        perf = context.perf
        if perf is None:
            raise ConfigError("the eais controller needs the replica's performance model (give the GPU and model)")
        if not (0 < utilisation_limit <= 1 and 0 < slo_margin <= 1 and 0 < smoothing <= 1):
            raise ConfigError("eais needs 0 < utilisation_limit <= 1, 0 < slo_margin <= 1, 0 < smoothing <= 1")
        self.context = context
        self.utilisation_limit = utilisation_limit
        self.slo_margin = slo_margin
        self.smoothing = smoothing
        space = context.action_space
        # the action space's caps (those the engine allows) plus "uncapped", so EAIS is never throttled by the list
        caps = sorted({c for c in space.concurrency_caps if c <= context.max_num_seqs} | {context.max_num_seqs})
        self.caps = np.array(caps, np.float64)
        self.clocks = np.array(space.sm_clocks_mhz, np.float64)
        # per clock: decode coefficients for batch sizes 1..max cap, prefill time and energy per token
        max_b = int(self.caps.max())
        saved = perf.sm_clock_mhz
        t0 = np.zeros((len(self.clocks), max_b + 1))
        e0 = np.zeros_like(t0)
        t1 = np.zeros(len(self.clocks))
        e1 = np.zeros(len(self.clocks))
        self.prefill_s_per_tok = np.zeros(len(self.clocks))
        self.prefill_j_per_tok = np.zeros(len(self.clocks))
        try:
            for i, f in enumerate(self.clocks):
                perf.set_sm_clock(float(f))
                for b in range(1, max_b + 1):
                    t0[i, b], t1[i], e0[i, b], e1[i] = perf.decode_coeffs(b)
                t, e = perf.step_cost([(_PREFILL_PROBE_TOKENS, 0)], 0, 0)
                self.prefill_s_per_tok[i] = t / _PREFILL_PROBE_TOKENS
                self.prefill_j_per_tok[i] = e / _PREFILL_PROBE_TOKENS
        finally:
            perf.set_sm_clock(saved)
        self._t0, self._t1, self._e0, self._e1 = t0, t1, e0, e1
        self.idle_power_w = float(perf.idle_power_w)
        self._tracker = IntervalTracker()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the load estimates."""
        self._tracker.reset()
        self.arrival_rate = 0.0
        self.output_tokens = 0.0
        self.context_tokens = 0.0

    def _observe(self, snapshot: ClusterSnapshot, replica: int) -> None:
        stats = self._tracker.update(snapshot, replica)
        r = snapshot.replicas[replica]
        a = self.smoothing

        def ewma(old: float, new: float) -> float:
            return new if old == 0.0 else (1 - a) * old + a * new

        if stats.dt_s > 0:
            self.arrival_rate = (1 - a) * self.arrival_rate + a * stats.arrivals / stats.dt_s
            if stats.completed > 0:
                self.output_tokens = ewma(self.output_tokens, stats.generated_tokens / stats.completed)
        if r.num_running > 0:
            self.context_tokens = ewma(self.context_tokens, r.kv_blocks_used * r.block_size / r.num_running)

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """(energy per output token in J, feasible mask), each of shape (clocks, caps), for the current load."""
        slo = self.context.slo
        out = max(self.output_tokens, 1.0)
        ctx = max(self.context_tokens, out)
        prompt = max(ctx - out / 2, 1.0)
        demand = self.arrival_rate * out
        rho_p = (self.arrival_rate * prompt * self.prefill_s_per_tok)[:, None]  # (clocks, 1)
        caps = self.caps[None, :]
        rows = np.arange(len(self.clocks))[:, None]
        t1, e1 = self._t1[:, None], self._e1[:, None]

        def tpot(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            idx = np.clip(np.ceil(b), 1, caps.max()).astype(np.int64)
            return self._t0[rows, idx] + t1 * b * ctx, idx

        stretch = 1.0 / np.maximum(1.0 - rho_p, 1e-6)  # decode iterations share the GPU with prefills
        b = np.ones((len(self.clocks), len(self.caps)))
        for _ in range(_FIXED_POINT_ITERATIONS):
            b = np.clip(demand * tpot(b)[0] * stretch, 1.0, caps)
        step_s, idx = tpot(b)
        step_j = self._e0[rows, idx] + e1 * b * ctx
        needed_at_cap = demand * tpot(np.broadcast_to(caps, b.shape).astype(np.float64))[0] * stretch
        # decode runs whenever a request is present: all the time from one running request on
        decode_busy = np.minimum(demand * step_s * stretch, 1.0) * np.maximum(1.0 - rho_p, 0.0)
        idle = np.maximum(1.0 - rho_p - decode_busy, 0.0)
        power = (decode_busy * step_j / step_s + (self.arrival_rate * prompt * self.prefill_j_per_tok)[:, None]
                 + idle * self.idle_power_w)
        ept = power / max(demand, 1e-9)
        ok = (needed_at_cap <= self.utilisation_limit * caps) & (rho_p < self.utilisation_limit)
        if slo.tpot_s is not None:
            ok &= step_s * stretch <= slo.tpot_s * self.slo_margin
        if slo.ttft_s is not None:
            ok &= (prompt * self.prefill_s_per_tok)[:, None] <= slo.ttft_s * self.slo_margin
        return ept, ok

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        """Update the load estimate, then take the cheapest feasible pair (uncapped at max clock if none is)."""
        self._observe(snapshot, replica)
        if self.arrival_rate * max(self.output_tokens, 1.0) < 1e-6:  # no load yet: nothing to predict from
            return EnergyDecision(int(self.caps[-1]), float(self.clocks[-1]))
        ept, ok = self.predict()
        if not ok.any():
            return EnergyDecision(int(self.caps[-1]), float(self.clocks[-1]))
        cost = np.where(ok, ept, np.inf)
        i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
        return EnergyDecision(int(self.caps[j]), float(self.clocks[i]))
