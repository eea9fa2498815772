"""Clipper's adaptive batching (Crankshaw et al., NSDI 2017) as a concurrency-cap controller at the default clock.

Clipper raises its batch size additively while the measured batch latency stays within the SLO and cuts it
multiplicatively (by 10%) when the SLO is exceeded. In continuous batching the batch latency is the inter-token
time of the running requests, so the controller compares the measured inter-token time with the TPOT SLO. It
never touches the clock: it shows how much a latency-driven cap alone saves (GreenDLS's ``clipper`` baseline).
"""

from __future__ import annotations

import math

from rlserve.errors import ConfigError
from rlserve.policies.energy.base import ControlContext, EnergyDecision, register_controller
from rlserve.policies.energy.state import IntervalTracker
from rlserve.snapshot import ClusterSnapshot


@register_controller("clipper")
class ClipperController:
    """AIMD on the concurrency cap from the measured inter-token time, at the maximum clock."""

    name = "clipper"

    def __init__(self, context: ControlContext, *, additive_step: int = 1, decrease_factor: float = 0.9,
                 start_cap: int | None = None) -> None:
        if context.slo.tpot_s is None:
            raise ConfigError("the clipper controller adapts to a batch-latency SLO: the scenario needs slo.tpot_s")
        if additive_step < 1 or not 0 < decrease_factor < 1:
            raise ConfigError("clipper needs additive_step >= 1 and 0 < decrease_factor < 1")
        self.context = context
        self.additive_step = additive_step
        self.decrease_factor = decrease_factor
        self.start_cap = min(context.max_num_seqs, start_cap or context.action_space.max_cap)
        self._tracker = IntervalTracker()
        self.cap = self.start_cap

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        """Additive increase while the inter-token time meets the TPOT SLO, multiplicative decrease otherwise."""
        stats = self._tracker.update(snapshot, replica)
        slo_s = self.context.slo.tpot_s
        assert slo_s is not None  # checked in __init__
        if stats.dt_s > 0 and stats.inter_token_s > 0:  # something ran: the interval says something
            if stats.inter_token_s > slo_s:
                self.cap = max(1, math.floor(self.cap * self.decrease_factor))
            else:
                self.cap = min(self.context.max_num_seqs, self.cap + self.additive_step)
        return EnergyDecision(self.cap, self.context.max_clock_mhz)

    def reset(self, seed: int | None = None) -> None:
        """Start again from the initial cap."""
        self._tracker.reset()
        self.cap = self.start_cap
