"""The proxy's view of each replica, turned into the same :class:`~rlserve.snapshot.ReplicaState` the simulator fills.

What the proxy knows *exactly and live* comes from its own bookkeeping: every request it routed and has not
finished (queued at the admission gate or in flight upstream), their prompt and output sizes, streamed tokens,
completions and latencies. What only the engine knows (KV blocks in use, how the in-flight requests split into
running and waiting, preemptions) comes from the replica's last ``/metrics`` scrape, so it lags by at most the
scrape interval. Capabilities come from the :class:`~rlserve.serve.config.ReplicaSpec`.

Field by field, the definitions follow the simulator's (``rlserve.sim``) so a policy sees the same numbers for
the same situation:

- ``num_waiting`` = requests held at the proxy's admission gate (the simulator keeps capped requests in the
  replica's waiting queue too) + in-flight requests the engine reports as waiting;
  ``num_running`` = the rest of the in-flight requests (never more than ``max_num_seqs``).
- ``pending_prefill_tokens`` = prompt tokens of outstanding requests whose first token has not arrived;
  ``pending_decode_tokens`` = output tokens still to come, :func:`~rlserve.snapshot.decode_tokens_left`
  (``max_tokens`` minus tokens streamed so far, the first token included), summed over outstanding requests; the
  simulator counts with the same function over the declared sizes, and a request that ends early takes its
  remainder with it on stream end, as a simulated request does at completion.
- Tokens are counted from the response: one per SSE ``data:`` event while a stream runs (vLLM merges several
  tokens into one event when the client reads slower than the engine generates, so this is a lower bound), then
  corrected at the end from ``usage.completion_tokens`` when the response has it, or to ``max_tokens`` when the
  answer stopped for ``"length"``.
- ``recent_ttft_s`` is updated at each first token, ``recent_e2e_s`` at each completion, both as EWMAs with
  :data:`~rlserve.snapshot.RECENT_LATENCY_EWMA_ALPHA`, the first sample initialising the average. Latencies are
  measured from the moment the proxy received the request, admission wait included (the simulator's arrival).
  A non-streamed response has no observable first token, so it updates ``recent_e2e_s`` only.
- ``kv_blocks_used`` = ``kv_cache_usage * num_gpu_blocks`` (usage is a fraction in [0, 1]).
- ``power_w``, ``energy_j``, ``busy_s`` are ``None``: the proxy does not measure them (the energy controller
  reads NVML itself).
- ``prefix_hit_tokens`` is the proxy's prefix index's match of the request being routed on this replica
  (:mod:`rlserve.prefix_index`, the same index the simulator keeps); the caller passes it in.
"""

from __future__ import annotations

from rlserve.serve.admission import ReplicaGate
from rlserve.serve.config import ReplicaSpec
from rlserve.snapshot import RECENT_LATENCY_EWMA_ALPHA, QueuedRequestView, ReplicaState, decode_tokens_left
from rlserve.telemetry.vllm_metrics import VllmMetrics

DEFAULT_BLOCK_SIZE = 16  # vLLM's GPU default, used until /metrics says otherwise


class Tracked:
    """One outstanding request on one replica (queued at the gate or in flight)."""

    __slots__ = ("arrival_s", "prompt_tokens", "max_tokens", "output_exact", "generated_tokens", "first_token_s")

    def __init__(self, arrival_s: float, prompt_tokens: int, max_tokens: int, output_exact: bool = False) -> None:
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens  # the client's max_tokens (an upper bound) or the configured default
        self.output_exact = output_exact  # max_tokens is the exact length if the answer stops for "length"
        self.generated_tokens = 0
        self.first_token_s = -1.0  # < 0: no token yet


class ReplicaBook:
    """Everything the proxy tracks about one replica; :meth:`state` renders it as a :class:`ReplicaState`."""

    __slots__ = ("index", "spec", "gate", "healthy", "engine", "outstanding", "pending_prefill_tokens",
                 "pending_decode_tokens", "completed_total", "generated_tokens_total", "routed_total",
                 "retried_total", "recent_ttft_s", "recent_e2e_s", "_ttft_seen")

    def __init__(self, index: int, spec: ReplicaSpec, max_queue: int) -> None:
        self.index = index
        self.spec = spec
        self.gate = ReplicaGate(index, spec.concurrency_cap, max_queue)
        self.healthy = True  # optimistic until the first probe says otherwise
        self.engine: VllmMetrics | None = None  # the last good /metrics scrape
        self.outstanding: dict[int, Tracked] = {}  # request id -> request, in routing order
        self.pending_prefill_tokens = 0
        self.pending_decode_tokens = 0
        self.completed_total = 0
        self.generated_tokens_total = 0
        self.routed_total = 0  # attempts sent to (or queued for) this replica
        self.retried_total = 0  # attempts here that failed before the first byte and were retried elsewhere
        self.recent_ttft_s = 0.0
        self.recent_e2e_s = 0.0
        self._ttft_seen = False

    # --- request lifecycle (called on the event loop, O(1) each) ------------------------------------------------

    def add(self, request_id: int, arrival_s: float, prompt_tokens: int, max_tokens: int,
            output_exact: bool = False) -> Tracked:
        """A request was routed here (it may still wait at the gate)."""
        t = Tracked(arrival_s, prompt_tokens, max_tokens, output_exact)
        self.outstanding[request_id] = t
        self.pending_prefill_tokens += prompt_tokens
        self.pending_decode_tokens += decode_tokens_left(max_tokens, 0)
        self.routed_total += 1
        return t

    def first_token(self, t: Tracked, now_s: float) -> None:
        """The first output bytes of a streamed response arrived."""
        t.first_token_s = now_s
        self.pending_prefill_tokens -= t.prompt_tokens
        ttft = now_s - t.arrival_s
        if self._ttft_seen:
            self.recent_ttft_s += RECENT_LATENCY_EWMA_ALPHA * (ttft - self.recent_ttft_s)
        else:
            self.recent_ttft_s, self._ttft_seen = ttft, True

    def tokens(self, t: Tracked, n: int) -> None:
        """``n`` more output tokens arrived for ``t`` (the first one included)."""
        left = decode_tokens_left(t.max_tokens, t.generated_tokens)
        t.generated_tokens += n
        self.pending_decode_tokens -= left - decode_tokens_left(t.max_tokens, t.generated_tokens)
        self.generated_tokens_total += n

    def remove(self, request_id: int, t: Tracked) -> None:
        """Forget ``t`` without counting a completion (failed attempt, rejection, client gone)."""
        if self.outstanding.pop(request_id, None) is None:
            return
        if t.first_token_s < 0:
            self.pending_prefill_tokens -= t.prompt_tokens
        self.pending_decode_tokens -= decode_tokens_left(t.max_tokens, t.generated_tokens)

    def complete(self, request_id: int, t: Tracked, now_s: float, generated_tokens: int | None = None) -> None:
        """``t`` finished successfully; ``generated_tokens`` is its exact output size when the response said it."""
        self.remove(request_id, t)
        if generated_tokens is not None:  # settles the per-event count (events may merge or be usage-only)
            self.generated_tokens_total += generated_tokens - t.generated_tokens
            t.generated_tokens = generated_tokens
        self.completed_total += 1
        e2e = now_s - t.arrival_s
        if self.completed_total == 1:
            self.recent_e2e_s = e2e
        else:
            self.recent_e2e_s += RECENT_LATENCY_EWMA_ALPHA * (e2e - self.recent_e2e_s)

    # --- observation --------------------------------------------------------------------------------------------

    def state(self, now_s: float, queue_k: int = 0, prefix_hit_tokens: int = 0) -> ReplicaState:
        """This replica as a policy sees it at ``now_s`` (proxy clock), with the routed request's expected cached
        prefix here (``prefix_hit_tokens``, from the proxy's prefix index)."""
        spec, gate, engine = self.spec, self.gate, self.engine
        in_flight = gate.in_flight
        engine_waiting = 0
        block_size = spec.block_size
        blocks_total = spec.kv_blocks_total
        kv_blocks_used = 0
        preemptions = 0
        if engine is not None:
            engine_waiting = min(in_flight, int(engine.num_requests_waiting))
            block_size = block_size or engine.block_size
            blocks_total = blocks_total or engine.num_gpu_blocks
            if blocks_total:
                kv_blocks_used = round(engine.kv_cache_usage * blocks_total)
            if engine.num_preemptions_total == engine.num_preemptions_total:  # not NaN
                preemptions = int(engine.num_preemptions_total)
        engine_waiting = max(engine_waiting, in_flight - spec.max_num_seqs)
        block_size = block_size or DEFAULT_BLOCK_SIZE
        blocks_total = blocks_total or 0
        # positional, in ReplicaState's field order: keyword parsing cost 1 us of the ~1.5 us each state takes to
        # build, per replica and routing decision (tests/serve/test_serve_bookkeeping.py checks every field by name)
        return ReplicaState(
            gate.queued + engine_waiting,  # num_waiting
            in_flight - engine_waiting,  # num_running
            kv_blocks_used,
            blocks_total,  # kv_blocks_total
            block_size,
            spec.max_num_seqs,
            spec.max_num_seqs if gate.cap is None else gate.cap,  # concurrency_cap
            preemptions,  # num_preemptions_total
            self.pending_prefill_tokens,
            self.pending_decode_tokens,
            self.completed_total,
            self.generated_tokens_total,
            self.recent_ttft_s,
            self.recent_e2e_s,
            spec.decode_tokens_per_s,
            spec.prefill_tokens_per_s,
            blocks_total * block_size,  # kv_capacity_tokens
            spec.sm_clock_mhz,
            spec.num_stages,
            None,  # power_w: not measured by the proxy (the energy loop adds NVML)
            None,  # energy_j
            None,  # busy_s
            self.healthy,
            self._queue_view(now_s, queue_k) if queue_k else (),  # queue
            prefix_hit_tokens,
        )

    def _queue_view(self, now_s: float, k: int) -> tuple[QueuedRequestView, ...]:
        views = []
        for t in self.outstanding.values():  # insertion order = routing order = oldest first
            started = t.first_token_s >= 0
            views.append(QueuedRequestView(
                age_s=now_s - t.arrival_s, prompt_tokens=t.prompt_tokens,
                processed_tokens=t.prompt_tokens + t.generated_tokens if started else 0,
                remaining_prefill_tokens=0 if started else t.prompt_tokens,
                max_tokens=t.max_tokens, generated_tokens=t.generated_tokens))
            if len(views) == k:
                break
        return tuple(views)
