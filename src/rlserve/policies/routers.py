"""Heuristic routers: the baselines every learned router is judged against.

All share one rule: ties are broken uniformly at random with the router's own seeded generator, never towards
the lowest replica id (which would silently overload replica 0 at low load).
"""

from __future__ import annotations

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


BATCH_SLOWDOWN = 32.0
"""Sequences in a decode batch that double its per-token time (see :class:`LeastExpectedLatencyRouter`)."""


def expected_latency_s(pending_prefill_tokens: float, prompt_tokens: float, prefill_tokens_per_s: float,
                       outstanding: float, output_tokens: float, decode_tokens_per_s: float) -> float:
    """Seconds a request would take on a replica: its prefill behind the replica's backlog, then its decode in a
    batch one larger than the replica's outstanding requests.

    Plain arithmetic on numbers: the PPO state builder compiles this same function into its kernel (a feature is
    this estimate), so the router and the feature cannot drift apart.
    """
    prefill_s = (pending_prefill_tokens + prompt_tokens) / prefill_tokens_per_s
    decode_s = output_tokens * (1 + (outstanding + 1) / BATCH_SLOWDOWN) / decode_tokens_per_s
    return prefill_s + decode_s


@register_router("least_expected_latency")
class LeastExpectedLatencyRouter(_Seeded):
    """Smallest estimated end-to-end latency of this request, from each replica's backlog and speed.

    Estimate (seconds) = prefill backlog ahead of the request plus its own prompt at the replica's prefill
    speed, plus its own output at the replica's single-sequence decode speed slowed by the batch it joins
    (decode iterations get slower as the batch grows; ``BATCH_SLOWDOWN`` sequences double the per-token time,
    roughly where a 7B model's decode stops being weight-bandwidth bound). It uses only what a proxy also
    knows (the proxy sees ``max_tokens`` instead of the true output length).
    """

    name = "least_expected_latency"

    @staticmethod
    def estimate_s(r: ReplicaState, request: Request) -> float:
        """The estimated latency (seconds) of ``request`` on replica ``r`` (:func:`expected_latency_s`)."""
        return expected_latency_s(r.pending_prefill_tokens, request.prompt_tokens, r.prefill_tokens_per_s,
                                  r.num_waiting + r.num_running, request.output_tokens, r.decode_tokens_per_s)

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Replica with the lowest estimated latency for ``request``."""
        return fair_argmin([self.estimate_s(r, request) for r in snapshot.replicas], self.rng)
