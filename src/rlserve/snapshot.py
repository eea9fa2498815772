"""What a policy sees: one snapshot type, filled exactly by the simulator and from telemetry by the proxy.

A policy never knows which world produced a :class:`ClusterSnapshot`. The simulator builds the per-replica
states lazily (only when a policy reads ``snapshot.replicas``), so policies that ignore state (round robin,
random) cost nothing; the proxy builds them eagerly from its bookkeeping plus vLLM ``/metrics`` and NVML.

Units are in the field names. Counters (``*_total``) are cumulative since the replica started; rates are left
to the consumer (the state builders difference consecutive snapshots), so the same snapshot is valid in both
worlds without either having to agree on a rate window.

Treat snapshots as read-only. The state dataclasses are not ``frozen`` on purpose: a frozen dataclass's
``__init__`` assigns each field through ``object.__setattr__``, 4.1 us for ``ReplicaState``'s 25 fields against
1.5 us for a plain slotted one (measured), and the proxy builds one per replica in front of every request it
routes, inside a 100 us decision budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RECENT_LATENCY_EWMA_ALPHA = 0.2
"""Weight of the newest sample in ``ReplicaState.recent_ttft_s`` / ``recent_e2e_s``. The simulator and the proxy
must both use this value (the first sample initialises the average), or the same history would give a policy
different observations in the two worlds."""


def decode_tokens_left(max_tokens: int, generated_tokens: int) -> int:
    """Output tokens a request may still produce as a proxy sees it: declared ``max_tokens`` minus the tokens
    streamed so far, never below 0.

    The one definition of "pending decode work" in both worlds: the proxy's bookkeeping and the simulator's
    replicas both count ``ReplicaState.pending_decode_tokens`` and ``QueuedRequestView`` through it, so the
    simulator never shows a policy the true output length. A request that finishes before ``max_tokens`` takes
    what is left of its declared work with it (on stream end in the proxy, at completion in the simulator).
    """
    return max_tokens - generated_tokens if generated_tokens < max_tokens else 0


@dataclass(slots=True)
class QueuedRequestView:
    """One request waiting or running on a replica (the seed's per-request features)."""

    age_s: float  # now - arrival
    prompt_tokens: int
    processed_tokens: int  # prompt tokens already prefilled + tokens generated
    remaining_prefill_tokens: int
    max_tokens: int  # declared output size (both worlds; never the true length)
    generated_tokens: int
    priority: int = 0


@dataclass(slots=True)
class ReplicaState:
    """The state of one replica at ``ClusterSnapshot.time_s``.

    ``None`` means "not measured in this world" (e.g. power without NVML), distinct from 0.
    """

    num_waiting: int  # admitted to the replica, not yet scheduled (vLLM num_requests_waiting)
    num_running: int  # in the running batch (vLLM num_requests_running)
    kv_blocks_used: int
    kv_blocks_total: int
    block_size: int  # tokens per KV block
    max_num_seqs: int  # the engine's batch capacity
    concurrency_cap: int  # admission cap set by an energy controller (== max_num_seqs when uncapped)
    num_preemptions_total: int
    pending_prefill_tokens: int  # prompt tokens of waiting/running requests not yet prefilled
    pending_decode_tokens: int  # sum of decode_tokens_left(max_tokens, generated) over waiting/running requests
    completed_total: int  # finished requests
    generated_tokens_total: int
    recent_ttft_s: float  # exponentially weighted TTFT of recently finished requests (0 before the first)
    recent_e2e_s: float  # exponentially weighted end-to-end latency of recently finished requests
    decode_tokens_per_s: float  # capability: single-sequence decode speed of this replica (perf model / measured)
    prefill_tokens_per_s: float  # capability: prefill throughput of this replica
    kv_capacity_tokens: int  # kv_blocks_total * block_size
    sm_clock_mhz: float
    num_stages: int = 1  # pipeline stages
    power_w: float | None = None
    energy_j: float | None = None  # cumulative
    busy_s: float | None = None  # cumulative time the engine was executing iterations (utilisation = d busy / d t)
    healthy: bool = True
    queue: tuple[QueuedRequestView, ...] = ()  # oldest first, at most the builder's K (may be empty)
    # prompt tokens of the request being routed that this replica is expected to have cached (its prefix index,
    # the same one in both worlds: rlserve.prefix_index); 0 when nothing matches or no request is being routed
    prefix_hit_tokens: int = 0

    @property
    def outstanding(self) -> int:
        """Requests on this replica that have not finished (waiting + running)."""
        return self.num_waiting + self.num_running

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, in [0, 1] (vLLM's ``kv_cache_usage_perc`` is also a fraction)."""
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


class ClusterSnapshot:
    """Time plus per-replica states plus cluster counters.

    ``replicas`` may be given directly (proxy) or as a zero-argument factory called on first access
    (simulator), so that building state costs nothing for policies that never look at it.
    """

    __slots__ = ("time_s", "num_replicas", "arrivals_total", "_replicas", "_factory")

    def __init__(
        self,
        time_s: float,
        num_replicas: int,
        replicas: tuple[ReplicaState, ...] | Callable[[], tuple[ReplicaState, ...]],
        arrivals_total: int = 0,
    ) -> None:
        self.time_s = time_s
        self.num_replicas = num_replicas  # known without building the states
        self.arrivals_total = arrivals_total  # requests that reached the cluster before this one
        if callable(replicas):
            self._replicas: tuple[ReplicaState, ...] | None = None
            self._factory: Callable[[], tuple[ReplicaState, ...]] | None = replicas
        else:
            self._replicas = tuple(replicas)
            self._factory = None

    @property
    def replicas(self) -> tuple[ReplicaState, ...]:
        """Per-replica states, index = replica id."""
        if self._replicas is None:
            assert self._factory is not None  # internal invariant, not user input
            self._replicas = self._factory()
            self._factory = None
        return self._replicas
