"""What changing a GPU's locked SM clock costs: latency until the new clock holds, a stall, transition energy.

A locked-clock change (``nvmlDeviceSetGpuLockedClocks``) is not instantaneous. Velička, Vysocký and Říha
(*Methodology for GPU Frequency Switching Latency Measurement*, IPDPSW 2025, arXiv:2502.20075) measured it on an
A100 and a GH200 with an iterative micro-kernel: the time from the request until kernels run at the new clock is
tens to hundreds of milliseconds, depends mostly on the *target* frequency, and varies widely between devices. No
H100/H200 figure is published. The model has three parts, all per change of one GPU's clock:

- ``latency_s``: the old clock keeps running for this long after the decision (work proceeds at the old speed
  and power);
- ``stall_s``: then the engine makes no progress for this long (the pessimistic reading: the PLL relock and
  the driver call block the work queue), booked at the first iteration boundary after the switch, at idle power;
- ``energy_j``: extra energy charged per change (default 0: no measurement of it exists; the stall's idle
  energy is charged anyway).

Defaults (:data:`DEFAULT_TRANSITION`): latency 50 ms and a 50 ms stall, the cost the issue-17 audit charged. They
are an assumption in the range of the paper's measurements, not a measurement of an H200; a scenario sets its
own (``clock_transition:`` section) or turns the model off (``clock_transition: off``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rlserve.errors import ConfigError


@dataclass(frozen=True)
class ClockTransition:
    """Cost of one SM-clock change of one GPU (see the module docstring for the meaning and the sources)."""

    latency_s: float = 0.05
    stall_s: float = 0.05
    energy_j: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or not v >= 0:
                raise ConfigError(f"clock_transition.{f.name} must be a number >= 0, got {v!r}")

    @property
    def free(self) -> bool:
        """Changes cost nothing (the simulator then applies a new clock at once, as before this model)."""
        return self.latency_s == 0 and self.stall_s == 0 and self.energy_j == 0

    @property
    def duration_s(self) -> float:
        """Time one change spends in transition (latency + stall)."""
        return self.latency_s + self.stall_s

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "clock_transition") -> ClockTransition:
        """Parse ``{latency_s, stall_s, energy_j}`` (missing keys: defaults), ``off``/``false`` (free) or None."""
        if d is None:
            return DEFAULT_TRANSITION
        if d is False or d == "off":
            return FREE_TRANSITION
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys latency_s, stall_s, energy_j, or 'off'")
        allowed = {f.name for f in fields(cls)}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        try:
            return cls(**{k: float(v) for k, v in d.items()})
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: values must be numbers, got {dict(d)!r}") from None

    def as_dict(self) -> dict[str, float]:
        """Plain data (checkpoint metadata, result JSON)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


DEFAULT_TRANSITION = ClockTransition()
FREE_TRANSITION = ClockTransition(0.0, 0.0, 0.0)
