"""Minimum dwell and hysteresis on the SM clock, around any energy controller.

A clock change is not free (:mod:`rlserve.sim.clock_transition`): each one stalls the engine briefly. This
wrapper lets any controller (``static``, ``clipper``, ``eais``, ``slack``, ``dqn``) trade reactivity for fewer
changes: the inner controller's clock is taken only if it differs from the current one by at least
``hysteresis_mhz`` and ``min_dwell_s`` has passed since the last change; raising the clock is exempt from the
dwell (``fast_up``, the default), because a late raise costs SLO misses while a late lowering only costs energy.
The concurrency cap (admission control in the proxy, free to change) passes through.

Spec syntax (:func:`~rlserve.policies.energy.base.make_controller`): ``NAME[:ARG]+dwell=SECONDS[+hyst=MHZ]
[+up=dwell]``, e.g. ``eais+dwell=2+hyst=100`` or ``dqn:runs/energy/best.pt+dwell=1``.
"""

from __future__ import annotations

import math

from rlserve.errors import ConfigError
from rlserve.policies.energy.base import EnergyController, EnergyDecision
from rlserve.snapshot import ClusterSnapshot


class DwellController:
    """``inner`` with a minimum time between clock changes and a minimum step (see the module docstring)."""

    def __init__(self, inner: EnergyController, *, min_dwell_s: float = 0.0, hysteresis_mhz: float = 0.0,
                 fast_up: bool = True) -> None:
        if not (min_dwell_s >= 0 and hysteresis_mhz >= 0):
            raise ConfigError(f"dwell needs min_dwell_s >= 0 and hysteresis_mhz >= 0, got {min_dwell_s}, "
                              f"{hysteresis_mhz}")
        self.inner = inner
        self.min_dwell_s = float(min_dwell_s)
        self.hysteresis_mhz = float(hysteresis_mhz)
        self.fast_up = fast_up
        opts = f"+dwell={min_dwell_s:g}" + (f"+hyst={hysteresis_mhz:g}" if hysteresis_mhz else "")
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}{opts}{'' if fast_up else '+up=dwell'}"
        self._clock = math.nan
        self._since = -math.inf

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        """The inner decision, with its clock held where the dwell or the hysteresis says so."""
        d = self.inner.decide(snapshot, replica)
        now = snapshot.time_s
        delta = d.sm_clock_mhz - self._clock
        if math.isnan(self._clock):
            self._clock, self._since = d.sm_clock_mhz, now
        elif delta and abs(delta) >= self.hysteresis_mhz and (
                now - self._since >= self.min_dwell_s or (self.fast_up and delta > 0)):
            self._clock, self._since = d.sm_clock_mhz, now
        return EnergyDecision(d.concurrency_cap, self._clock)

    def reset(self, seed: int | None = None) -> None:
        """Reset the inner controller and forget the current clock."""
        self.inner.reset(seed)
        self._clock = math.nan
        self._since = -math.inf


def with_dwell(inner: EnergyController, options: list[str]) -> DwellController:
    """``inner`` wrapped with the options of a spec, e.g. ``["dwell=2", "hyst=100", "up=dwell"]``."""
    dwell, hyst, fast_up = 0.0, 0.0, True
    for opt in options:
        key, _, value = opt.partition("=")
        try:
            if key == "dwell":
                dwell = float(value)
            elif key == "hyst":
                hyst = float(value)
            elif key == "up" and value in ("fast", "dwell"):
                fast_up = value == "fast"
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(f"controller option {opt!r} not understood; use +dwell=SECONDS, +hyst=MHZ, "
                              "+up=fast|dwell") from None
    return DwellController(inner, min_dwell_s=dwell, hysteresis_mhz=hyst, fast_up=fast_up)
