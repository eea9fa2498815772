"""Randomised training scenarios: a new cluster and workload every episode, so the router generalises.

A policy trained on one scenario learns that scenario's replica order, load and length mix. The ``randomized``
source draws, per episode (all from the environment's seeded generator):

- **cluster** (``num_replicas`` replicas of Llama-2-7B, chunked prefill): 35% homogeneous (A100-80GB mostly,
  else H100-SXM or A40), 65% heterogeneous (each replica's GPU from H100-SXM / A100-80GB / L40S / A40, at least two
  kinds, so speeds differ 2-5x); replica order is random, so no position is "the fast one". 15% of episodes cap
  the KV cache (1,000-2,500 blocks per replica) to create preemption pressure.
- **lengths**: conversation-like (prompt mean 1155, output mean 211; the Splitwise trace's shape), long prompts
  (6000 / 100), long outputs (800 / 600) or short (300 / 150), lognormal.
- **load**: a utilisation target rho ~ U[0.3, 1.0] of the cluster's estimated request capacity (sum over replicas
  of what :func:`request_capacity_rps` estimates from the perf model), Poisson or gamma arrivals with burstiness
  log-uniform in [0.1, 1] (CV of gaps up to ~3).

Named scenarios (``configs/scenarios``) can be mixed in; their seeds vary per episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlserve.errors import ConfigError
from rlserve.metrics import Slo
from rlserve.perf import ReplicaPerfModel
from rlserve.scenario import Scenario, load_scenario
from rlserve.sim import ClusterConfig, ReplicaConfig, build_perf_model
from rlserve.workload import WorkloadConfig

RANDOMIZED = "randomized"
HETERO_GPUS = ("h100-sxm", "a100-80gb", "l40s", "a40")
HOMO_GPUS = ("a100-80gb", "h100-sxm", "a40")
HOMO_GPU_P = (0.6, 0.2, 0.2)
# name: (prompt mean, prompt median, output mean, output median, max total tokens), with its probability
LENGTH_MIXES: dict[str, tuple[int, int, int, int, int]] = {
    "conversation": (1155, 1020, 211, 129, 4096),
    "long_prompt": (6000, 5000, 100, 60, 16000),
    "long_output": (800, 600, 600, 450, 4096),
    "short": (300, 200, 150, 100, 4096),
}
LENGTH_MIX_P = (0.5, 0.15, 0.2, 0.15)
CAPACITY_BATCH = 48  # decode batch at which capacity is estimated (a busy but not KV-bound replica)


def request_capacity_rps(perf: ReplicaPerfModel, prompt_tokens: float, output_tokens: float,
                         batch: int = CAPACITY_BATCH) -> float:
    """Requests per second one replica sustains: prefill of one prompt plus its share of batched decode steps.

    A rough roofline estimate (about 15% below what the simulator sustains for conversation lengths on an
    A100); it only sets the scale of the sampled loads.
    """
    step_s, _ = perf.step_cost([], batch, int(batch * (prompt_tokens + output_tokens / 2)))
    prefill_s, _ = perf.step_cost([(int(prompt_tokens), 0)], 0, 0)
    return 1.0 / (prefill_s + output_tokens * step_s / batch)


@dataclass(frozen=True)
class SampledScenario:
    """A scenario drawn for one episode, with what was drawn (for logging)."""

    scenario: Scenario
    params: dict[str, Any]


class ScenarioSampler:
    """Draws one :class:`Scenario` per episode from named scenarios and/or the randomised family."""

    def __init__(self, sources: Sequence[str] = (RANDOMIZED,), num_replicas: int = 4) -> None:
        if not sources:
            raise ConfigError("env.scenarios must name at least one scenario (or 'randomized')")
        self.num_replicas = num_replicas
        self.sources = list(sources)
        self._named = {s: load_scenario(s) for s in self.sources if s != RANDOMIZED}
        for name, scn in self._named.items():
            if len(scn.cluster.replicas) != num_replicas:
                raise ConfigError(f"scenario {name!r} has {len(scn.cluster.replicas)} replicas; the router is "
                                  f"trained for env.num_replicas={num_replicas}")
        self._perf: dict[tuple[str, ...], ReplicaPerfModel] = {}

    def sample(self, rng: np.random.Generator, num_requests: int) -> SampledScenario:
        """One scenario with ``num_requests`` requests."""
        source = self.sources[int(rng.integers(len(self.sources)))]
        if source != RANDOMIZED:
            return SampledScenario(self._named[source].with_num_requests(num_requests), {"source": source})
        return self._randomized(rng, num_requests)

    def _perf_model(self, cfg: ReplicaConfig) -> ReplicaPerfModel:
        key = (cfg.gpu, cfg.model)
        if key not in self._perf:
            self._perf[key] = build_perf_model(cfg)  # type: ignore[assignment]
        return self._perf[key]

    def _randomized(self, rng: np.random.Generator, num_requests: int) -> SampledScenario:
        n = self.num_replicas
        if rng.random() < 0.35:
            gpus = [str(rng.choice(HOMO_GPUS, p=HOMO_GPU_P))] * n
        else:
            gpus = [str(g) for g in rng.choice(HETERO_GPUS, size=n)]
            while len(set(gpus)) < 2:
                gpus[int(rng.integers(n))] = str(rng.choice(HETERO_GPUS))
        kv_blocks = int(rng.integers(1000, 2501)) if rng.random() < 0.15 else None
        replicas = tuple(ReplicaConfig(gpu=g, model="llama-2-7b", batching="chunked", num_gpu_blocks=kv_blocks,
                                       max_model_len=16384) for g in gpus)
        mix = str(rng.choice(list(LENGTH_MIXES), p=LENGTH_MIX_P))
        p_mean, p_med, o_mean, o_med, max_total = LENGTH_MIXES[mix]
        capacity = sum(request_capacity_rps(self._perf_model(r), p_mean, o_mean) for r in replicas)
        rho = float(rng.uniform(0.3, 1.0))
        qps = rho * capacity
        if rng.random() < 0.5:
            arrival: dict[str, Any] = {"kind": "poisson", "qps": qps}
            burstiness = 1.0
        else:
            burstiness = float(np.exp(rng.uniform(np.log(0.1), 0.0)))
            arrival = {"kind": "gamma", "qps": qps, "burstiness": burstiness}
        workload = WorkloadConfig.from_dict(
            {"num_requests": num_requests, "arrival": arrival,
             "lengths": {"kind": "lognormal", "prompt_mean": p_mean, "prompt_median": p_med, "output_mean": o_mean,
                         "output_median": o_med},
             "max_total_tokens": max_total}, where="randomized scenario: workload")
        scenario = Scenario(RANDOMIZED, f"{mix} lengths at rho={rho:.2f} on {gpus}", ClusterConfig(replicas),
                            workload, Slo())
        params = {"source": RANDOMIZED, "gpus": gpus, "kv_blocks": kv_blocks, "lengths": mix, "rho": rho,
                  "qps": qps, "burstiness": burstiness}
        return SampledScenario(scenario, params)

