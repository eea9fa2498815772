"""Rewards of the energy controller, computed from what happened in one control interval.

Two forms, both attributable to the interval's decision (defect 1 of the seed systems was a reward computed from
since-start aggregates):

``greendls``
    The seed's form (GreenDLS ``scheduler.py``): with ``delay`` = mean end-to-end latency (ms) of the requests
    that finished in the interval and ``energy`` = the interval's GPU energy per finished request (mJ),
    ``k * delay / energy`` when ``delay <= SLO`` plus the seed's KV-usage term, else ``SLO - delay``; then
    divided by 50 and clipped to [-2, 2] (the seed's normalisation). Intervals where nothing finished give 0.

``energy_per_token``
    Energy per token with an SLO penalty, written so that it adds up over an episode:
    ``(ept_ref * tokens - energy) / energy_scale - slo_penalty * misses``. Summed over an episode whose work is
    fixed (the workload is given), the first term is ``tokens_total * (ept_ref - episode energy per token) /
    energy_scale``, so maximising the return minimises the episode's energy per token exactly; tokens are
    credited when generated, so deferring work earns nothing. ``ept_ref`` only shifts when credit arrives
    (choose it near the scenario's energy per token to centre rewards on 0).

docs/energy.md compares the two on the same training budget and explains why ``energy_per_token`` learns better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlserve.errors import ConfigError


@dataclass(frozen=True, slots=True)
class IntervalOutcome:
    """What one replica did during one control interval."""

    interval_s: float
    energy_j: float  # GPU energy of the replica (NVML counter / simulator), idle included
    tokens: int  # tokens generated in the interval
    finished: int  # requests that finished in the interval
    slo_misses: int  # requests whose SLO miss became known in the interval
    mean_e2e_s: float  # mean end-to-end latency of the finished requests (NaN when none finished)
    kv_usage: float  # fraction of KV blocks in use at the end of the interval
    arrivals: int = 0  # requests that arrived in the interval


@dataclass(frozen=True, slots=True)
class RewardParts:
    """The reward and its components (every component is logged)."""

    total: float
    components: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GreenDlsReward:
    """The seed's GreenDLS reward with its KV-usage term and normalisation (see the module docstring)."""

    slo_delay_s: float
    k: float = 150.0
    kv_term: bool = True
    scale: float = 50.0
    clip: float = 2.0

    def __post_init__(self) -> None:
        if not (self.slo_delay_s > 0 and self.scale > 0 and self.clip > 0):
            raise ConfigError("greendls reward needs slo_delay_s, scale and clip > 0")

    def __call__(self, o: IntervalOutcome) -> RewardParts:
        """Reward of one interval."""
        if o.finished == 0 or not math.isfinite(o.mean_e2e_s):
            return RewardParts(0.0, {"efficiency": 0.0, "kv": 0.0, "slo": 0.0})
        delay_ms = 1000.0 * o.mean_e2e_s
        slo_ms = 1000.0 * self.slo_delay_s
        energy_mj = max(1000.0 * o.energy_j / o.finished, 1e-9)
        if delay_ms <= slo_ms:
            efficiency = self.k * delay_ms / energy_mj
            kv = _seed_kv_term(o.kv_usage) if self.kv_term else 0.0
            slo = 0.0
        else:
            efficiency, kv, slo = 0.0, 0.0, slo_ms - delay_ms
        raw = efficiency + kv + slo
        total = max(-self.clip, min(self.clip, raw / self.scale))
        return RewardParts(total, {"efficiency": efficiency / self.scale, "kv": kv / self.scale,
                                   "slo": slo / self.scale})


def _seed_kv_term(kv_usage: float) -> float:
    """The seed's KV term: penalise under-used (< 0.5) and over-full (> 0.9) caches, 0 in between."""
    if kv_usage < 0.5:
        return -5.0 * (0.5 - kv_usage)
    if kv_usage > 0.9:
        return -10.0 * (kv_usage - 0.9)
    return 0.0


@dataclass(frozen=True)
class EnergyPerTokenReward:
    """Energy per token with an SLO penalty, in additive form (see the module docstring)."""

    ept_ref_j: float  # reference energy per generated token
    energy_scale_j: float  # energy that maps to 1.0 (e.g. max power x interval)
    slo_penalty: float = 1.0  # reward lost per request that misses its SLO

    def __post_init__(self) -> None:
        if not (self.ept_ref_j > 0 and self.energy_scale_j > 0 and self.slo_penalty >= 0):
            raise ConfigError("energy_per_token reward needs ept_ref_j > 0, energy_scale_j > 0, slo_penalty >= 0")

    def __call__(self, o: IntervalOutcome) -> RewardParts:
        """Reward of one interval."""
        energy = (self.ept_ref_j * o.tokens - o.energy_j) / self.energy_scale_j
        slo = -self.slo_penalty * o.slo_misses
        return RewardParts(energy + slo, {"energy": energy, "slo": slo})


RewardFn = Callable[[IntervalOutcome], RewardParts]
REWARDS: dict[str, Callable[..., RewardFn]] = {"greendls": GreenDlsReward, "energy_per_token": EnergyPerTokenReward}


def make_reward(name: str, **params: Any) -> RewardFn:
    """Build a reward by name with its parameters (from the training config)."""
    if name not in REWARDS:
        raise ConfigError(f"unknown energy reward {name!r}; choose one of: {', '.join(sorted(REWARDS))}")
    try:
        return REWARDS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for reward {name!r}: {exc}") from None
