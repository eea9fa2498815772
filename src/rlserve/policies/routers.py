"""Heuristic routers: the baselines every learned router is judged against.

All share one rule: ties are broken uniformly at random with the router's own seeded generator, never towards
the lowest replica id (which would silently overload replica 0 at low load).
"""

from __future__ import annotations

import math

import numpy as np

from rlserve.policies.base import fair_argmin, register_router
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
    """Lowest KV-cache usage fraction (vLLM ``kv_cache_usage_perc``), as KV-aware routers do."""

    name = "least_kv"

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the most free KV cache relative to its size."""
        return fair_argmin([r.kv_blocks_used / r.kv_blocks_total for r in snapshot.replicas], self.rng)


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
