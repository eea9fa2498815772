"""Heuristic routers: the baselines every learned router is judged against.

All share one rule: ties are broken uniformly at random with the router's own seeded generator, never towards
the lowest replica id (which would silently overload replica 0 at low load).
"""

from __future__ import annotations

import math

import numpy as np

from rlserve.policies.base import fair_argmax, fair_argmin, register_router
from rlserve.snapshot import ClusterSnapshot, ReplicaState
from rlserve.workload.request import Request


class _Seeded:
    """Base for routers that need randomness: a private generator, re-seeded by :meth:`reset`."""

    name = "base"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed the router's generator."""
        self.rng = np.random.default_rng(seed)


@register_router("random")
class RandomRouter(_Seeded):
    """Uniformly random replica."""

    name = "random"

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Pick any replica with equal probability."""
        return int(self.rng.integers(snapshot.num_replicas))


@register_router("round_robin")
class RoundRobinRouter:
    """Replicas in turn, starting from 0 (the default of Vidur and most proxies)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def reset(self, seed: int | None = None) -> None:
        """Start again from replica 0."""
        self._next = 0

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """The next replica in turn."""
        r = self._next % snapshot.num_replicas
        self._next = r + 1
        return r


@register_router("least_outstanding")
class LeastOutstandingRouter(_Seeded):
    """Fewest unfinished requests (waiting + running): llm-d / production-stack "least request"."""

    name = "least_outstanding"

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the fewest outstanding requests."""
        return fair_argmin([r.num_waiting + r.num_running for r in snapshot.replicas], self.rng)


@register_router("join_shortest_queue")
class JoinShortestQueueRouter(_Seeded):
    """Fewest waiting (not yet scheduled) requests; ties by fewest running, then at random."""

    name = "join_shortest_queue"

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the shortest waiting queue."""
        reps = snapshot.replicas
        return fair_argmin([r.num_waiting * 1_000_000 + r.num_running for r in reps], self.rng)


@register_router("least_kv")
class LeastKvRouter(_Seeded):
    """Lowest KV-cache usage fraction (vLLM ``kv_cache_usage_perc``), as KV-aware routers do.

    When a replica's KV size is unknown (a proxy whose /metrics scrape is off, failing or garbage reports
    ``kv_blocks_total == 0``), usage fractions cannot be compared: the router then degrades to what it does know,
    the fewest outstanding requests, rather than comparing a guess against measurements.
    """

    name = "least_kv"

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the most free KV cache relative to its size (fewest outstanding if a size is unknown)."""
        reps = snapshot.replicas
        if all(r.kv_blocks_total > 0 for r in reps):
            return fair_argmin([r.kv_blocks_used / r.kv_blocks_total for r in reps], self.rng)
        return fair_argmin([r.num_waiting + r.num_running for r in reps], self.rng)


@register_router("power_of_two")
class PowerOfTwoRouter(_Seeded):
    """Two distinct replicas sampled at random; the one with fewer outstanding requests wins."""

    name = "power_of_two"

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Best of two random choices by outstanding requests."""
        n = snapshot.num_replicas
        if n == 1:
            return 0
        a, b = (int(x) for x in self.rng.choice(n, size=2, replace=False))
        reps = snapshot.replicas
        la, lb = reps[a].outstanding, reps[b].outstanding
        if la == lb:
            return a if self.rng.random() < 0.5 else b
        return a if la < lb else b


KV_GROWTH = 1.0
"""Expected further KV growth of each request in flight, in expected outputs (see :func:`kv_load`). Not one half:
requests in flight are length-biased (long answers stay longer), so what they still have to generate averages
about one mean output. 0.5 and 1.0 gave the same results on the shipped scenarios; 1.0 thrashed less on an
overloaded H100 + A40 pair."""
BATCH_SLOWDOWN = 32.0
"""Sequences in a decode batch that double its per-token time (see :class:`LeastExpectedLatencyRouter`)."""


def expected_latency_s(pending_prefill_tokens: float, prompt_tokens: float, prefill_tokens_per_s: float,
                       outstanding: float, output_tokens: float, decode_tokens_per_s: float,
                       cached_prefix_tokens: float = 0.0, kv_demand: float = 0.0) -> float:
    """Seconds a request would take on a replica: its prefill behind the replica's backlog, then its decode in a
    batch one larger than the replica's outstanding requests, stretched when the replica's KV cache cannot hold
    the work.

    - Prefill counts only the prompt tokens the replica must compute: ``cached_prefix_tokens`` (the expected
      prefix-cache hit) are skipped, as vLLM skips them (at least one token is always computed).
    - ``kv_demand`` is :func:`kv_load` (KV the replica will need over its cache). Above 1, vLLM keeps requests
      waiting or preempts them until memory frees, which happens as requests finish: the decode time is multiplied
      by it (twice the cache = about one more generation round to wait).

    Plain arithmetic on numbers: the PPO state builder compiles this same function into its kernel (a feature is
    this estimate), so the router and the feature cannot drift apart. With the defaults of the last two
    arguments it is the original estimate (no prefix hit, no KV limit).
    """
    new_prefill = prompt_tokens - cached_prefix_tokens if cached_prefix_tokens < prompt_tokens else 1.0
    prefill_s = (pending_prefill_tokens + new_prefill) / prefill_tokens_per_s
    decode_s = output_tokens * (1 + (outstanding + 1) / BATCH_SLOWDOWN) / decode_tokens_per_s
    if kv_demand > 1.0:
        decode_s *= kv_demand
    return prefill_s + decode_s


def kv_load(r: ReplicaState, request: Request, output_tokens: float) -> float:
    """KV tokens replica ``r`` will need once ``request`` (``output_tokens`` expected) runs there, as a fraction of
    its cache (0 when the capacity is unknown): what is cached now, the prompts still to prefill, the request's new
    prompt tokens (after the expected prefix hit), and :data:`KV_GROWTH` expected answers per request in flight,
    the new one included. Above 1 the engine must hold requests back or preempt (recompute) them."""
    if r.kv_capacity_tokens <= 0:
        return 0.0
    new_prefill = max(request.prompt_tokens - r.prefix_hit_tokens, 1)
    demand = (r.kv_blocks_used * r.block_size + r.pending_prefill_tokens + new_prefill
              + (r.num_waiting + r.num_running + 1) * output_tokens * KV_GROWTH)
    return demand / r.kv_capacity_tokens


def expected_output_tokens(request: Request, snapshot: ClusterSnapshot) -> float:
    """The output length a proxy can expect for ``request``: the mean output of the requests the cluster has
    finished (tokens streamed / completions, both counted by the proxy too), never more than the declared
    ``max_tokens``; ``max_tokens`` itself before anything has finished."""
    completed = generated = 0
    for r in snapshot.replicas:
        completed += r.completed_total
        generated += r.generated_tokens_total
    if completed == 0:
        return float(request.max_tokens)
    return min(float(request.max_tokens), generated / completed)


@register_router("least_expected_latency")
class LeastExpectedLatencyRouter(_Seeded):
    """Smallest estimated end-to-end latency of this request, from each replica's backlog, speed and KV cache.

    Estimate (:func:`expected_latency_s`, seconds) = the prefill backlog ahead of the request plus its own new
    prompt tokens (after the replica's expected prefix-cache hit) at the replica's prefill speed, plus its expected
    output at the replica's single-sequence decode speed slowed by the batch it joins (``BATCH_SLOWDOWN`` sequences
    double the per-token time, roughly where a 7B model's decode stops being weight-bandwidth bound), stretched by
    the replica's KV demand over its capacity. The expected output is the cluster's observed mean output, capped
    by the request's declared ``max_tokens`` (:func:`expected_output_tokens`): a proxy knows both, never the true
    length. Replicas whose cache the request would over-commit (:func:`kv_load` > 1) are avoided while another can
    take it. Without the KV term, on 1 x H100 + 1 x A40 with long answers at 5.5 req/s, it piled requests onto the
    H100 until its cache thrashed: 39.1% SLO attainment, 462 preemptions, all on the H100; with it, 100% and none
    (tests/sim/test_routers.py reproduces both).
    """

    name = "least_expected_latency"

    @staticmethod
    def estimate_s(r: ReplicaState, request: Request, output_tokens: float | None = None) -> float:
        """The estimated latency (seconds) of ``request`` on replica ``r`` (:func:`expected_latency_s`)."""
        output = request.max_tokens if output_tokens is None else output_tokens
        return expected_latency_s(r.pending_prefill_tokens, request.prompt_tokens, r.prefill_tokens_per_s,
                                  r.num_waiting + r.num_running, output, r.decode_tokens_per_s, r.prefix_hit_tokens,
                                  kv_load(r, request, output))

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the lowest estimated latency for ``request`` among those whose KV cache can take it
        (:func:`kv_load` <= 1); the least over-committed cache when none can (it thrashes least)."""
        output = expected_output_tokens(request, snapshot)
        reps = snapshot.replicas
        load = [kv_load(r, request, output) for r in reps]
        if min(load) > 1.0:
            return fair_argmin(load, self.rng)
        return fair_argmin([self.estimate_s(r, request, output) if x <= 1.0 else math.inf
                            for r, x in zip(reps, load, strict=True)], self.rng)


# --- prefix-aware routers: the policies production routers run today, on ReplicaState.prefix_hit_tokens --------


def _hit_fraction(r: ReplicaState, request: Request) -> float:
    """Share of the request's prompt this replica is expected to hold in cache (the prefix index's match)."""
    return min(r.prefix_hit_tokens, request.prompt_tokens) / max(request.prompt_tokens, 1)


@register_router("prefix_affinity")
class PrefixAffinityRouter(_Seeded):
    """Cache-aware routing with load-imbalance thresholds, as SGLang's router / vllm-router ``cache_aware`` policy.

    Source: SGLang model gateway ``cache_aware`` policy (vllm-router is its fork), command-line defaults
    ``--cache-threshold 0.3 --balance-abs-threshold 64 --balance-rel-threshold 1.5``. When the load is imbalanced
    (``max - min > balance_abs_threshold`` *and* ``max > balance_rel_threshold x min``, load = requests in flight)
    the least loaded replica gets the request. Otherwise the replica with the highest prefix match ratio gets it if
    that ratio exceeds ``cache_threshold``; else the one with the most free cache (SGLang: the smallest radix tree;
    here the lowest KV usage, which the proxy scrapes). The match ratio comes from the prefix index
    (:mod:`rlserve.prefix_index`) instead of SGLang's character radix tree: both approximate the engine's cache from
    the prompts routed.
    """

    name = "prefix_affinity"

    def __init__(self, cache_threshold: float = 0.3, balance_abs_threshold: float = 64.0,
                 balance_rel_threshold: float = 1.5) -> None:
        super().__init__()
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Least loaded when imbalanced, else best prefix match above the threshold, else most free cache."""
        reps = snapshot.replicas
        load = [r.num_waiting + r.num_running for r in reps]
        lo, hi = min(load), max(load)
        if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
            return fair_argmin(load, self.rng)
        match = [_hit_fraction(r, request) for r in reps]
        if max(match) > self.cache_threshold:
            return fair_argmax(match, self.rng)
        return fair_argmin([r.kv_usage for r in reps], self.rng)


LLMD_WEIGHTS = {"prefix": 3.0, "queue": 2.0, "kv": 2.0}
"""llm-d's default scorer weights (inference-scheduling guide: prefix-cache-scorer 3, queue-scorer 2,
kv-cache-utilization-scorer 2)."""


@register_router("llmd")
class LlmdRouter(_Seeded):
    """llm-d's inference scheduler with its default weighted scorers and the max-score picker.

    Source: llm-d inference scheduler / Gateway API Inference Extension endpoint picker, default profile
    ``prefix-cache-scorer`` (weight 3), ``queue-scorer`` (2), ``kv-cache-utilization-scorer`` (2),
    ``max-score-picker``. Each scorer gives a replica a score in [0, 1]: prefix = matched blocks / prompt blocks
    (the approximate prefix index, :mod:`rlserve.prefix_index`, with llm-d's block size and capacity); queue =
    ``(max - q) / (max - min)`` of the waiting queues (1 for every replica when they are equal); KV = ``1 - usage``.
    The highest weighted sum wins, ties at random.
    """

    name = "llmd"

    def __init__(self, prefix_weight: float = LLMD_WEIGHTS["prefix"], queue_weight: float = LLMD_WEIGHTS["queue"],
                 kv_weight: float = LLMD_WEIGHTS["kv"]) -> None:
        super().__init__()
        self.weights = (prefix_weight, queue_weight, kv_weight)

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the highest weighted score."""
        reps = snapshot.replicas
        wp, wq, wk = self.weights
        queue = [r.num_waiting for r in reps]
        lo, hi = min(queue), max(queue)
        scores = [wp * _hit_fraction(r, request) + wq * ((hi - q) / (hi - lo) if hi > lo else 1.0)
                  + wk * (1.0 - r.kv_usage) for r, q in zip(reps, queue, strict=True)]
        return fair_argmax(scores, self.rng)


@register_router("lmetric")
class LMetricRouter(_Seeded):
    """LMetric: new prefill tokens times batch size, lowest wins; no weights to tune.

    Source: Zhang et al., "LMetric: Simple is Better - Multiplication May Be All You Need for LLM Request
    Scheduling" (OSDI'26, arXiv:2603.15202): the score of an instance is the prefill tokens the request would add
    there (its prompt minus the expected cached prefix; here plus the prompt tokens already queued for prefill on
    that instance, which it waits behind) multiplied by the instance's current batch size (running requests).
    Multiplying makes the relative weight of the two terms cancel out in the comparison. An idle instance scores 0;
    ties go to fewer prefill tokens, then at random.
    """

    name = "lmetric"

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the smallest (new prefill tokens) x (batch size)."""
        reps = snapshot.replicas
        prefill = [r.pending_prefill_tokens + max(request.prompt_tokens - r.prefix_hit_tokens, 1) for r in reps]
        scores = [p * r.num_running for p, r in zip(prefill, reps, strict=True)]
        best = min(scores)
        return fair_argmin([p if s == best else math.inf for p, s in zip(prefill, scores, strict=True)], self.rng)


@register_router("loadaware")
class LoadAwareRouter(_Seeded):
    """Cache benefit minus beta times relative load, as vLLM production-stack's ``loadaware`` routing logic.

    Source: vLLM production-stack router, ``--routing-logic loadaware`` (``DEFAULT_LOADAWARE_BETA = 1.0``):
    ``score = min(matched, prompt) / prompt - beta x (load - mean) / max(1, mean)`` with load = requests in flight
    per endpoint (event-driven, not scraped) and the matched prefix from the router's own prefix index; highest
    wins. beta = 1: an endpoint at twice the fleet's mean load loses one full cache hit's worth of preference.
    """

    name = "loadaware"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the best cache benefit net of its relative load."""
        reps = snapshot.replicas
        load = [r.num_waiting + r.num_running for r in reps]
        mean = sum(load) / len(load)
        scale = max(1.0, mean)
        return fair_argmax([_hit_fraction(r, request) - self.beta * (x - mean) / scale
                             for r, x in zip(reps, load, strict=True)], self.rng)
