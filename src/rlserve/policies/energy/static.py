"""Fixed (cap, clock) controllers: the static-max-clock baseline and any static pair (e.g. the grid-search best)."""

from __future__ import annotations

from rlserve.errors import ConfigError
from rlserve.policies.energy.base import ControlContext, EnergyDecision, register_controller
from rlserve.snapshot import ClusterSnapshot


@register_controller("static")
class StaticController:
    """Always the same cap and clock.

    ``static`` alone is the usual way GPUs serve: no admission cap (``max_num_seqs``) at the maximum clock.
    ``static:CAP@MHZ`` (or the keyword arguments) pins any other pair, such as the best one a grid search found.
    """

    name = "static"

    def __init__(self, context: ControlContext, spec: str = "", *, concurrency_cap: int | None = None,
                 sm_clock_mhz: float | None = None) -> None:
        if spec:
            cap_s, _, clock_s = spec.partition("@")
            try:
                concurrency_cap, sm_clock_mhz = int(cap_s), float(clock_s)
            except ValueError:
                raise ConfigError(f"static controller spec {spec!r} must look like CAP@MHZ, "
                                  "e.g. static:16@1200") from None
        cap = context.max_num_seqs if concurrency_cap is None else int(concurrency_cap)
        if not 1 <= cap <= context.max_num_seqs:
            raise ConfigError(f"static concurrency cap {cap} must be in [1, max_num_seqs={context.max_num_seqs}]")
        self.decision = EnergyDecision(cap, context.max_clock_mhz if sm_clock_mhz is None else float(sm_clock_mhz))
        if spec or concurrency_cap is not None or sm_clock_mhz is not None:
            self.name = f"static:{cap}@{self.decision.sm_clock_mhz:g}"

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        """The fixed pair."""
        return self.decision

    def reset(self, seed: int | None = None) -> None:
        """Nothing to forget."""
