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
from typing import Annotated, Any

from pydantic import Field

from rlserve.errors import ConfigError
from rlserve.validation import parse_config

_NonNegative = Annotated[float, Field(ge=0)]


@dataclass(frozen=True)
class ClockTransition:
    """Cost of one SM-clock change of one GPU (see the module docstring for the meaning and the sources)."""

    latency_s: _NonNegative = 0.05
    stall_s: _NonNegative = 0.05
    energy_j: _NonNegative = 0.0

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
        """Parse ``{latency_s, stall_s, energy_j}`` (missing keys: defaults), ``off``/``false`` (free) or None;
        validated by :func:`rlserve.validation.parse_config` (numbers >= 0, no other keys)."""
        if d is None:
            return DEFAULT_TRANSITION
        if d is False or d == "off":
            return FREE_TRANSITION
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping with keys latency_s, stall_s, energy_j, or 'off', "
                              f"got {type(d).__name__}")
        return parse_config(cls, dict(d), where)

    def as_dict(self) -> dict[str, float]:
        """Plain data (checkpoint metadata, result JSON)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


DEFAULT_TRANSITION = ClockTransition()
FREE_TRANSITION = ClockTransition(0.0, 0.0, 0.0)
