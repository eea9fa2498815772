"""Randomised training scenarios: a new cluster and workload every episode, so the router generalises.

A policy trained on one scenario learns that scenario's replica order, cluster size, load and length mix. The
``randomized`` source draws, per episode (all from the environment's seeded generator), one member of each family
below; a family named in ``holdout`` is never drawn (training) so that the benchmark can report on it separately
(the generalisation figure). Randomised parameters inside a family make each episode different.

- **cluster size** uniform in the sampler's ``(min, max)`` replicas; one model per cluster (Llama-2-7B mostly,
  Llama-3-8B, Mistral-7B; Llama-2-13B on 80 GB GPUs only); replica order is random, so no position is special.
- **GPU mix** (:data:`GPU_MIXES`): ``homogeneous`` (one GPU kind), ``random`` (each replica's GPU drawn from the
  catalogue, at least two kinds), ``two_tier`` (half fast, half slow), ``one_fast`` (one fast replica, the rest
  slow: the uneven case). 15% of episodes cap the KV cache (1,000-2,500 blocks per replica) for preemption
  pressure.
- **lengths** (:data:`LENGTH_FAMILIES`, lognormal, means drawn from the family's ranges): ``conversational``,
  ``code`` (long prompt, short answer), ``summarisation`` (long / long), ``short``, ``long_output``,
  ``heavy_tailed`` (mean 3-6x the median).
- **arrivals**: Poisson, gamma with inter-arrival CV up to 6 (shape down to 1/36), a linear ramp, or a compressed
  diurnal cycle (piecewise-constant rates); the mean load is a utilisation ``rho ~ U[0.3, 1.1]`` of the cluster's
  estimated request capacity (sum over replicas of :func:`request_capacity_rps`), light to just past saturation.
- **declared sizes** (what the router sees of the output; the simulator executes the truth): half of the episodes
  declare a fixed ``max_tokens`` (512-4096, as chat clients do; outputs longer than it are cut), the other half a
  multiple (1-4x) of the true length (clients that know roughly what they ask for).
- **prefix sharing** (with prefix caching) in 25% of episodes: Zipf-popular shared system prompts (8-128 prompts of
  256-2,048 tokens in front of 50-95% of the requests) or multi-turn sessions (2-8 turns, 2-30 s think time), with
  the KV cap above in 15% of them.

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
FAST_GPUS = ("h100-sxm", "h200")
SLOW_GPUS = ("a100-80gb", "l40s", "a40")
ALL_GPUS = FAST_GPUS + SLOW_GPUS
BIG_MEMORY_GPUS = ("h100-sxm", "h200", "a100-80gb")  # where a 13B model leaves room for a KV cache
MODELS = ("llama-2-7b", "llama-3-8b", "mistral-7b", "llama-2-13b")
MODEL_P = (0.55, 0.15, 0.15, 0.15)
GPU_MIXES = ("homogeneous", "random", "two_tier", "one_fast")
GPU_MIX_P = (0.35, 0.35, 0.15, 0.15)
# family: (prompt mean range, output mean range, mean/median ratio range, max total tokens)
LENGTH_FAMILIES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], int]] = {
    "conversational": ((600, 1600), (120, 350), (1.1, 1.7), 4096),
    "code": ((3000, 8000), (15, 60), (1.1, 1.5), 16000),
    "summarisation": ((2500, 6000), (250, 700), (1.1, 1.4), 16000),
    "short": ((150, 400), (60, 200), (1.2, 1.6), 4096),
    "long_output": ((400, 1000), (500, 1000), (1.2, 1.5), 4096),
    "heavy_tailed": ((500, 2000), (150, 500), (3.0, 6.0), 16000),
}
ARRIVAL_FAMILIES = ("poisson", "gamma", "ramp", "diurnal")
FAMILIES = (*GPU_MIXES, *LENGTH_FAMILIES, *ARRIVAL_FAMILIES)
"""Every name ``holdout`` accepts."""
DEFAULT_HOLDOUT = ("code", "summarisation", "two_tier", "one_fast")
"""Families kept out of training by the shipped recipe (two length shapes, two GPU mixes)."""
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


def _pick(rng: np.random.Generator, names: Sequence[str], p: Sequence[float] | None, excluded: set[str]) -> str:
    """One of ``names`` (weights ``p``, renormalised) that is not excluded."""
    keep = [i for i, n in enumerate(names) if n not in excluded]
    if not keep:
        raise ConfigError(f"every one of {list(names)} is held out; keep at least one")
    w = np.array([p[i] if p is not None else 1.0 for i in keep])
    return names[keep[int(rng.choice(len(keep), p=w / w.sum()))]]


class ScenarioSampler:
    """Draws one :class:`Scenario` per episode from named scenarios and/or the randomised family.

    Args:
        sources: scenario names/paths and/or ``"randomized"``.
        num_replicas: the cluster size, or a ``(min, max)`` range (randomised clusters draw a size uniformly;
            named scenarios must fit in it).
        holdout: names from :data:`FAMILIES` never drawn.
        only: restrict the randomised draw to these families (e.g. to evaluate on held-out ones); empty = all.
    """

    def __init__(self, sources: Sequence[str] = (RANDOMIZED,), num_replicas: int | tuple[int, int] = 4, *,
                 holdout: Sequence[str] = (), only: Sequence[str] = ()) -> None:
        if not sources:
            raise ConfigError("env.scenarios must name at least one scenario (or 'randomized')")
        lo, hi = (num_replicas, num_replicas) if isinstance(num_replicas, int) else num_replicas
        if not 1 <= lo <= hi:
            raise ConfigError(f"replica range must satisfy 1 <= min <= max, got ({lo}, {hi})")
        unknown = sorted(set(holdout) - set(FAMILIES)) + sorted(set(only) - set(FAMILIES))
        if unknown:
            raise ConfigError(f"unknown scenario families {unknown}; known: {list(FAMILIES)}")
        self.num_replicas = hi
        self.sizes = (lo, hi)
        self.excluded = set(holdout)
        self.only = set(only)
        self.sources = list(sources)
        self._named = {s: load_scenario(s) for s in self.sources if s != RANDOMIZED}
        for name, scn in self._named.items():
            if not lo <= len(scn.cluster.replicas) <= hi:
                raise ConfigError(f"scenario {name!r} has {len(scn.cluster.replicas)} replicas; the router is "
                                  f"trained for {lo}-{hi} replicas (env.num_replicas / env.min/max_replicas)")
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

    def _choose(self, rng: np.random.Generator, names: Sequence[str], p: Sequence[float] | None = None) -> str:
        allowed = set(names) & self.only if set(names) & self.only else set(names)
        return _pick(rng, names, p, self.excluded | (set(names) - allowed))

    def _gpus(self, rng: np.random.Generator, n: int, mix: str, model: str) -> list[str]:
        pool = BIG_MEMORY_GPUS if model == "llama-2-13b" else ALL_GPUS
        fast = [g for g in FAST_GPUS if g in pool]
        slow = [g for g in SLOW_GPUS if g in pool]
        if mix == "homogeneous" or n == 1:
            return [str(rng.choice(pool))] * n
        if mix == "random":
            gpus = [str(g) for g in rng.choice(pool, size=n)]
            while len(set(gpus)) < 2:
                gpus[int(rng.integers(n))] = str(rng.choice(pool))
            return gpus
        f, s = str(rng.choice(fast)), str(rng.choice(slow))
        n_fast = 1 if mix == "one_fast" else n // 2
        gpus = [f] * n_fast + [s] * (n - n_fast)
        return [gpus[i] for i in rng.permutation(n)]

    def _randomized(self, rng: np.random.Generator, num_requests: int) -> SampledScenario:
        n = int(rng.integers(self.sizes[0], self.sizes[1] + 1))
        model = str(rng.choice(MODELS, p=MODEL_P))
        mix = self._choose(rng, GPU_MIXES, GPU_MIX_P)
        gpus = self._gpus(rng, n, mix, model)
        kv_blocks = int(rng.integers(1000, 2501)) if rng.random() < 0.15 else None
        family = self._choose(rng, list(LENGTH_FAMILIES))
        (p_lo, p_hi), (o_lo, o_hi), (r_lo, r_hi), max_total = LENGTH_FAMILIES[family]
        p_mean, o_mean = float(rng.uniform(p_lo, p_hi)), float(rng.uniform(o_lo, o_hi))
        ratio = float(rng.uniform(r_lo, r_hi))
        share_prefix = rng.random() < 0.25
        replicas = tuple(ReplicaConfig(gpu=g, model=model, batching="chunked", num_gpu_blocks=kv_blocks,
                                       max_model_len=16384, enable_prefix_caching=share_prefix) for g in gpus)
        capacity = sum(request_capacity_rps(self._perf_model(r), p_mean, o_mean) for r in replicas)
        rho = float(rng.uniform(0.3, 1.1))
        qps = rho * capacity
        kind = self._choose(rng, ARRIVAL_FAMILIES)
        arrival: dict[str, Any]
        if kind == "poisson":
            arrival = {"kind": "poisson", "qps": qps}
        elif kind == "gamma":  # inter-arrival CV = 1/sqrt(shape): shape 1/36 .. 1 gives CV 6 .. 1
            arrival = {"kind": "gamma", "qps": qps, "burstiness": float(np.exp(rng.uniform(np.log(1 / 36), 0.0)))}
        elif kind == "ramp":  # rising or falling load around the mean
            lo, hi = 0.4 * qps, 1.6 * qps
            arrival = {"kind": "ramp", "qps_start": lo, "qps_end": hi} if rng.random() < 0.5 else \
                {"kind": "ramp", "qps_start": hi, "qps_end": lo}
        else:  # a compressed day: 8 segments, low at night, peak in the afternoon; the episode covers ~1.5 days
            shape = 0.5 - 0.45 * np.cos(np.linspace(0, 2 * np.pi, 8, endpoint=False))
            rates = (qps * shape / shape.mean()).tolist()
            arrival = {"kind": "piecewise", "rates_qps": rates, "segment_s": num_requests / qps / 12}
        workload: dict[str, Any] = {
            "num_requests": num_requests, "arrival": arrival,
            "lengths": {"kind": "lognormal", "prompt_mean": p_mean, "prompt_median": p_mean / ratio,
                        "output_mean": o_mean, "output_median": o_mean / ratio},
            "max_total_tokens": max_total}
        if rng.random() < 0.5:
            workload["max_tokens"] = {"kind": "fixed", "tokens": int(rng.choice([512, 1024, 2048, 4096]))}
        else:
            workload["max_tokens"] = {"kind": "multiple", "factor": float(rng.uniform(1.0, 4.0))}
        prefix: dict[str, Any] | None = None
        if share_prefix:  # parity's workloads: Zipf-popular shared system prompts, or multi-turn sessions
            if rng.random() < 0.5 or arrival["kind"] not in ("poisson", "gamma"):  # sessions need a steady rate
                prefix = {"share_fraction": float(rng.uniform(0.5, 0.95)), "num_prefixes": int(rng.integers(8, 129)),
                          "prefix_tokens": int(rng.integers(256, 2049)), "zipf_s": float(rng.uniform(0.6, 1.4)),
                          "prepend": True}
                workload["prefix"] = prefix
            else:
                prefix = {"turns_mean": float(rng.uniform(2.0, 8.0)), "think_time_s": float(rng.uniform(2.0, 30.0))}
                workload["sessions"] = prefix
        cfg = WorkloadConfig.from_dict(workload, where="randomized scenario: workload")
        scenario = Scenario(RANDOMIZED, f"{family} lengths, {kind} arrivals at rho={rho:.2f} on {n}x {model} "
                            f"({mix}: {gpus})", ClusterConfig(replicas), cfg, Slo())
        params = {"source": RANDOMIZED, "replicas": n, "model": model, "gpu_mix": mix, "gpus": gpus,
                  "kv_blocks": kv_blocks, "lengths": family, "arrival": kind, "rho": rho, "qps": qps,
                  "max_tokens": workload["max_tokens"], "prefix": prefix}
        return SampledScenario(scenario, params)
