"""An SLO-slack feedback controller: the baseline an engineer writes first.

Every interval it measures how much of the latency budget is in use, from what a real server exposes: the age of
the oldest request still waiting for its first token, the pending prompt tokens over the prefill rate (both / the
TTFT SLO) and the measured inter-token time / the TPOT SLO. The largest of these is the *pressure*. Above
``high`` the clock jumps up ``up_steps`` steps of the action space's clock list (fast: misses are costly);
below ``low`` for ``calm_s`` seconds in a row it steps down one (slow: a lower clock only saves energy); in
between it holds. The gap between ``low`` and ``high`` is the hysteresis; ``calm_s`` the dwell before lowering.
The cap stays at its maximum: in our scenarios a lower cap only queued requests (docs/energy.md).

Spec: ``slack`` (defaults) or ``slack:LOW,HIGH,UP_STEPS,CALM_S`` (e.g. ``slack:0.3,0.6,3,2``).
"""

from __future__ import annotations

from rlserve.errors import ConfigError
from rlserve.policies.energy.base import ControlContext, EnergyDecision, register_controller
from rlserve.policies.energy.state import IntervalTracker
from rlserve.snapshot import ClusterSnapshot


@register_controller("slack")
class SlackController:
    """Raise the clock fast when the latency budget is being used up, lower it slowly while it is not."""

    name = "slack"

    def __init__(self, context: ControlContext, spec: str = "", *, low: float = 0.5, high: float = 0.8,
                 up_steps: int = 2, calm_s: float = 2.0) -> None:
        if spec:
            try:
                lo_s, hi_s, up_s, calm_str = spec.split(",")
                low, high, up_steps, calm_s = float(lo_s), float(hi_s), int(up_s), float(calm_str)
            except ValueError:
                raise ConfigError(f"slack controller spec {spec!r} must look like LOW,HIGH,UP_STEPS,CALM_S, "
                                  "e.g. slack:0.3,0.6,3,2") from None
            self.name = f"slack:{low:g},{high:g},{up_steps},{calm_s:g}"
        if not (0 <= low < high and up_steps >= 1 and calm_s >= 0):
            raise ConfigError(f"slack controller needs 0 <= low < high, up_steps >= 1, calm_s >= 0; got {low}, "
                              f"{high}, {up_steps}, {calm_s}")
        if context.slo.ttft_s is None and context.slo.tpot_s is None:
            raise ConfigError("the slack controller follows the TTFT/TPOT SLOs: the scenario needs one of them")
        self.context = context
        self.low, self.high, self.up_steps, self.calm_s = low, high, up_steps, calm_s
        self.clocks = sorted(context.action_space.sm_clocks_mhz)
        self.cap = min(context.max_num_seqs, context.action_space.max_cap)
        self._tracker = IntervalTracker()
        self._level = len(self.clocks) - 1
        self._calm_since: float | None = None

    def pressure(self, snapshot: ClusterSnapshot, replica: int) -> float:
        """The largest share of a latency budget in use now (0: idle, 1: at the SLO)."""
        stats = self._tracker.update(snapshot, replica)
        r = snapshot.replicas[replica]
        slo = self.context.slo
        p = 0.0
        if slo.ttft_s:
            oldest = next((q.age_s for q in r.queue if q.remaining_prefill_tokens > 0), 0.0)
            backlog = r.pending_prefill_tokens / r.prefill_tokens_per_s if r.prefill_tokens_per_s > 0 else 0.0
            p = max(oldest, backlog) / slo.ttft_s
        if slo.tpot_s and stats.dt_s > 0 and stats.inter_token_s > 0:
            p = max(p, stats.inter_token_s / slo.tpot_s)
        return p

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        """Up ``up_steps`` above ``high``; down one after ``calm_s`` below ``low``; else hold."""
        p = self.pressure(snapshot, replica)
        now = snapshot.time_s
        if p > self.high:
            self._level = min(len(self.clocks) - 1, self._level + self.up_steps)
            self._calm_since = None
        elif p < self.low:
            if self._calm_since is None:
                self._calm_since = now
            if now - self._calm_since >= self.calm_s and self._level > 0:
                self._level -= 1
                self._calm_since = now
        else:
            self._calm_since = None
        return EnergyDecision(self.cap, self.clocks[self._level])

    def reset(self, seed: int | None = None) -> None:
        """Start again at the maximum clock."""
        self._tracker.reset()
        self._level = len(self.clocks) - 1
        self._calm_since = None
