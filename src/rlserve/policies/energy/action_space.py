"""The discrete action space of energy controllers: concurrency caps x SM clocks (the seed's ``ActionSpace``).

Action ``i`` decodes to ``(caps[i // n_clocks], clocks[i % n_clocks])``, the seed's layout, so indices from
the seed's tables keep their meaning. The KV block size is deliberately not an action: vLLM fixes it when the
server starts (the seed's section 4.2), so it is an environment parameter instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlserve.errors import ConfigError
from rlserve.policies.energy.base import EnergyDecision

#: The seed's (and GreenDLS's) batch sizes, used as concurrency caps.
SEED_CAPS: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36)
#: GreenDLS used 18 clock levels; we spread as many over the GPU's usable range.
DEFAULT_NUM_CLOCKS = 18
#: Clocks below this fraction of the maximum are left out by default: on the GPUs we model, decode slows
#: down sharply there while idle power stays, so energy per token rises again (see docs/energy.md).
DEFAULT_LOWEST_CLOCK_FRACTION = 0.3


@dataclass(frozen=True)
class ActionSpace:
    """Concurrency caps x SM clocks, both ascending."""

    concurrency_caps: tuple[int, ...] = SEED_CAPS
    sm_clocks_mhz: tuple[float, ...] = (1980.0,)

    def __post_init__(self) -> None:
        caps, clocks = self.concurrency_caps, self.sm_clocks_mhz
        if not caps or not clocks:
            raise ConfigError("the action space needs at least one concurrency cap and one SM clock")
        if any(c < 1 for c in caps) or list(caps) != sorted(set(caps)):
            raise ConfigError(f"concurrency caps must be distinct, ascending and >= 1, got {list(caps)}")
        if any(not f > 0 for f in clocks) or list(clocks) != sorted(set(clocks)):
            raise ConfigError(f"SM clocks must be distinct, ascending and > 0 MHz, got {list(clocks)}")

    @classmethod
    def for_gpu(cls, clock_min_mhz: float, clock_max_mhz: float, clock_step_mhz: float, *,
                num_clocks: int = DEFAULT_NUM_CLOCKS, lowest_clock_mhz: float | None = None,
                concurrency_caps: Sequence[int] = SEED_CAPS) -> ActionSpace:
        """Spread ``num_clocks`` clocks evenly from the lowest useful clock to the maximum, on the GPU's grid.

        ``lowest_clock_mhz`` defaults to 30% of the maximum (never below the GPU's minimum). Clocks are snapped
        to ``clock_min_mhz + k * clock_step_mhz`` (NVML accepts only supported clocks); duplicates collapse.
        """
        if not 0 < clock_min_mhz <= clock_max_mhz or not clock_step_mhz > 0:
            raise ConfigError(f"bad GPU clock range {clock_min_mhz}-{clock_max_mhz} MHz step {clock_step_mhz}")
        if num_clocks < 1:
            raise ConfigError(f"num_clocks must be >= 1, got {num_clocks}")
        low = max(clock_min_mhz, DEFAULT_LOWEST_CLOCK_FRACTION * clock_max_mhz if lowest_clock_mhz is None
                  else lowest_clock_mhz)
        if low > clock_max_mhz:
            raise ConfigError(f"lowest clock {low} MHz is above the GPU's maximum {clock_max_mhz} MHz")
        raw = np.linspace(low, clock_max_mhz, num_clocks) if num_clocks > 1 else np.array([clock_max_mhz])
        steps = np.round((raw - clock_min_mhz) / clock_step_mhz)
        snapped = np.minimum(clock_min_mhz + steps * clock_step_mhz, clock_max_mhz)
        return cls(tuple(int(c) for c in concurrency_caps), tuple(sorted({float(f) for f in snapped})))

    @property
    def n_actions(self) -> int:
        """Number of discrete actions (caps x clocks)."""
        return len(self.concurrency_caps) * len(self.sm_clocks_mhz)

    @property
    def max_clock_mhz(self) -> float:
        """The highest clock in the space."""
        return self.sm_clocks_mhz[-1]

    @property
    def min_clock_mhz(self) -> float:
        """The lowest clock in the space."""
        return self.sm_clocks_mhz[0]

    @property
    def max_cap(self) -> int:
        """The largest concurrency cap in the space."""
        return self.concurrency_caps[-1]

    def decode_action(self, action: int) -> EnergyDecision:
        """The (cap, clock) of action index ``action`` (the seed's layout: cap-major)."""
        if not 0 <= action < self.n_actions:
            raise ConfigError(f"action {action} out of range [0, {self.n_actions})")
        cap_idx, clock_idx = divmod(int(action), len(self.sm_clocks_mhz))
        return EnergyDecision(self.concurrency_caps[cap_idx], self.sm_clocks_mhz[clock_idx])

    def encode_action(self, concurrency_cap: int, sm_clock_mhz: float) -> int:
        """The index of an exact (cap, clock) pair of this space."""
        try:
            cap_idx = self.concurrency_caps.index(int(concurrency_cap))
            clock_idx = self.sm_clocks_mhz.index(float(sm_clock_mhz))
        except ValueError:
            raise ConfigError(f"({concurrency_cap}, {sm_clock_mhz} MHz) is not in the action space; caps: "
                              f"{list(self.concurrency_caps)}, clocks: {list(self.sm_clocks_mhz)}") from None
        return cap_idx * len(self.sm_clocks_mhz) + clock_idx

    def nearest_action(self, concurrency_cap: int, sm_clock_mhz: float) -> int:
        """The index of the closest pair in the space (for expressing any decision as an action)."""
        cap_idx = int(np.argmin(np.abs(np.asarray(self.concurrency_caps) - concurrency_cap)))
        clock_idx = int(np.argmin(np.abs(np.asarray(self.sm_clocks_mhz) - sm_clock_mhz)))
        return cap_idx * len(self.sm_clocks_mhz) + clock_idx

    def to_dict(self) -> dict[str, list[float]]:
        """Plain dict, stored in checkpoints so a controller rebuilds exactly the space it was trained on."""
        return {"concurrency_caps": list(self.concurrency_caps), "sm_clocks_mhz": list(self.sm_clocks_mhz)}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[float]]) -> ActionSpace:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(int(c) for c in d["concurrency_caps"]), tuple(float(f) for f in d["sm_clocks_mhz"]))
        except KeyError as exc:
            raise ConfigError(f"action space needs key {exc.args[0]!r}") from None
