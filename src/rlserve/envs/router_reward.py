"""RewardCalculator: the reward of one routing decision, from what happened between it and the next arrival.

The seed computed rewards from *since-start* throughput and mean latency; after a few hundred requests those
numbers barely move whatever the router does, so the policy had nothing to learn from (defect 1). Here every
quantity is measured over the step's own interval ``[t_k, t_{k+1})`` (from this arrival to the next):

- ``e2e_request_s`` = ∫ (requests in the system) dt over the interval. By Little's law the sum over an episode is
  the total end-to-end latency of its requests, so maximising the return minimises mean E2E exactly, and every
  request-second is charged to the interval in which it was spent — soon after the decision that caused it.
- ``ttft_request_s`` = ∫ (requests still waiting for their first token) dt; sums to total TTFT.
- ``finished_e2e_s``: latencies of the requests that finished in the interval (the seed's "latency", now
  per-interval), and their count (the seed's "throughput", now completions of this step).
- ``outstanding``: per-replica unfinished requests at the end of the interval (the balance term's input).

Modes (``RewardConfig.mode``):

``cost``
    ``-(e2e_request_s + ttft_weight * ttft_request_s) / cost_scale_s - balance_weight * cv``. The return is the
    negative of exactly what the benchmark measures (mean E2E and mean TTFT), attributable and dense.
``instant``
    ``throughput - latency_weight * latency - balance_weight * cv - threshold_penalty(latency)``
``delta``
    the same terms as ``instant`` but as changes from the previous step's values.
``hybrid`` (the seed's recommended mode; the default: it validated narrowly best, see docs/ppo_router.md)
    ``absolute_weight * (throughput / target - alpha * latency / threshold)
    + delta_weight * (beta * Δthroughput_norm - delta_latency_weight * Δlatency_norm)
    - balance_weight * cv - kappa / (1 + exp(-(latency - threshold) / sigma))``

with ``cv`` the coefficient of variation of outstanding requests across replicas and
``threshold_penalty(l) = threshold_penalty_scale * (1 - exp(-(l - threshold)))`` above the threshold, 0 below.
Every component is returned in the info dict (``rollout/reward/<name>``) so it can be logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rlserve.rl.config import RewardConfig


@dataclass(frozen=True)
class StepOutcome:
    """What happened in one decision's interval (see module docstring)."""

    dt_s: float
    e2e_request_s: float
    ttft_request_s: float
    finished_e2e_s: np.ndarray
    outstanding: np.ndarray


def load_balance_cv(outstanding: np.ndarray) -> float:
    """Coefficient of variation (std / mean) of per-replica outstanding requests; 0 for an empty cluster."""
    mean = float(np.mean(outstanding)) if len(outstanding) else 0.0
    return float(np.std(outstanding) / mean) if mean > 0 else 0.0


class RewardCalculator:
    """Computes the reward of each step and its components; :meth:`reset` at the start of every episode."""

    def __init__(self, cfg: RewardConfig | None = None) -> None:
        self.cfg = cfg or RewardConfig()
        self.reset()

    def component_keys(self) -> list[str]:
        """The info keys :meth:`calculate_reward` returns in this mode (a fixed schema for metric files)."""
        extra = {"cost": ["cost"], "instant": ["threshold_penalty"], "delta": ["threshold_penalty"],
                 "hybrid": ["absolute_score", "delta_score", "logistic_penalty"]}[self.cfg.mode]
        names = ["throughput", "latency_s", "balance_cv", "e2e_request_s", "ttft_request_s", *extra, "total"]
        return [f"rollout/reward/{k}" for k in names]

    def reset(self) -> None:
        """Forget the previous step's values (used by the delta terms)."""
        self._prev_throughput = 0.0
        self._prev_latency = 0.0
        self._latency = 0.0

    def threshold_penalty(self, latency_s: float) -> float:
        """Soft exponential penalty above the latency threshold (0 at or below it)."""
        excess = latency_s - self.cfg.latency_threshold_s
        return self.cfg.threshold_penalty_scale * (1.0 - math.exp(-excess)) if excess > 0 else 0.0

    def logistic_penalty(self, latency_s: float) -> float:
        """Smooth penalty rising around the threshold: ``kappa / (1 + exp(-(latency - threshold) / sigma))``."""
        z = (latency_s - self.cfg.latency_threshold_s) / self.cfg.sigma
        return self.cfg.kappa / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def calculate_reward(self, outcome: StepOutcome) -> tuple[float, dict[str, float]]:
        """The reward of the step and every component, keyed ``rollout/reward/<name>``."""
        c = self.cfg
        throughput = float(len(outcome.finished_e2e_s))
        if throughput:  # latency of this step's completions; without completions it carries over
            self._latency = float(np.mean(outcome.finished_e2e_s))
        latency = self._latency
        cv = load_balance_cv(outcome.outstanding)
        balance = c.balance_weight * cv
        parts = {"throughput": throughput, "latency_s": latency, "balance_cv": cv,
                 "e2e_request_s": outcome.e2e_request_s, "ttft_request_s": outcome.ttft_request_s}
        if c.mode == "cost":
            cost = (outcome.e2e_request_s + c.ttft_weight * outcome.ttft_request_s) / c.cost_scale_s
            reward = -cost - balance
            parts["cost"] = cost
        elif c.mode in ("instant", "delta"):
            thr_pen = self.threshold_penalty(latency)
            if c.mode == "instant":
                reward = throughput - c.latency_weight * latency - balance - thr_pen
            else:
                reward = ((throughput - self._prev_throughput) - c.latency_weight * (latency - self._prev_latency)
                          - balance - thr_pen)
            parts["threshold_penalty"] = thr_pen
        else:  # hybrid
            absolute = throughput / c.throughput_target - c.alpha * latency / c.latency_threshold_s
            d_tp = (throughput - self._prev_throughput) / (abs(self._prev_throughput) + 1.0)
            d_lat = (latency - self._prev_latency) / (abs(self._prev_latency) + 1e-3)
            delta_score = c.beta * d_tp - c.delta_latency_weight * d_lat
            logistic = self.logistic_penalty(latency)
            reward = c.absolute_weight * absolute + c.delta_weight * delta_score - balance - logistic
            parts.update(absolute_score=absolute, delta_score=delta_score, logistic_penalty=logistic)
        self._prev_throughput, self._prev_latency = throughput, latency
        parts["total"] = reward
        return reward, {f"rollout/reward/{k}": float(v) for k, v in parts.items()}
