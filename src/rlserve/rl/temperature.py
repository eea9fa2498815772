"""Exploration temperature driven by load pressure (the seed's TemperatureController), for training only.

``T = clip(base * (1 + qps_sensitivity * qps_pressure + latency_sensitivity * latency_pressure
+ balance_sensitivity * imbalance), min, max)`` with

- ``qps_pressure = (target_qps - qps) / target_qps``: a quiet cluster (few arrivals) is a cheap place to explore;
- ``latency_pressure = (latency - target_latency) / target_latency``: when latency is above target the current
  policy is doing badly, so try other actions;
- ``imbalance``: the coefficient of variation of per-replica load.

The result is smoothed by an exponential moving average so that it does not pulse from step to step (the seed's
pulsed temperature made ~37% of decisions near-random). The trainer records the temperature of every step and the
update evaluates actions at that same temperature, so PPO's ratio is unaffected. Inference never uses this class:
routers act greedily (argmax) unless a fixed temperature is asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TemperatureController:
    """Computes a smoothed, clamped exploration temperature from QPS, latency and balance pressure."""

    def __init__(self, base_temperature: float = 1.0, min_temperature: float = 0.8, max_temperature: float = 3.0,
                 qps_sensitivity: float = 0.3, latency_sensitivity: float = 0.5, balance_sensitivity: float = 0.0,
                 smoothing: float = 0.1) -> None:
        self.base_temperature = base_temperature
        self.min_temperature, self.max_temperature = min_temperature, max_temperature
        self.qps_sensitivity = qps_sensitivity
        self.latency_sensitivity = latency_sensitivity
        self.balance_sensitivity = balance_sensitivity
        self.smoothing = smoothing
        self.temperature = float(np.clip(base_temperature, min_temperature, max_temperature))

    def target(self, current_qps: float, target_qps: float, current_latency_s: float, target_latency_s: float,
               load_balance_cv: float = 0.0) -> float:
        """The unsmoothed, clamped temperature for the given pressures (non-positive targets count as no pressure)."""
        qps_p = (target_qps - current_qps) / target_qps if target_qps > 0 else 0.0
        lat_p = (current_latency_s - target_latency_s) / target_latency_s if target_latency_s > 0 else 0.0
        pressure = (self.qps_sensitivity * qps_p + self.latency_sensitivity * lat_p
                    + self.balance_sensitivity * load_balance_cv)
        return float(np.clip(self.base_temperature * (1.0 + pressure), self.min_temperature, self.max_temperature))

    def compute_temperature(self, current_qps: float, target_qps: float, current_latency_s: float,
                            target_latency_s: float, load_balance_cv: float = 0.0) -> float:
        """Move the smoothed temperature toward :meth:`target` and return it."""
        goal = self.target(current_qps, target_qps, current_latency_s, target_latency_s, load_balance_cv)
        self.temperature += self.smoothing * (goal - self.temperature)
        return self.temperature

    def state_dict(self) -> dict[str, Any]:
        """Settings and the current smoothed temperature."""
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        for k, v in state.items():
            setattr(self, k, float(v))
