"""One simulated vLLM engine: continuous batching over paged KV blocks, stepped in exact multi-iteration jumps.

Scheduling semantics (see docs/simulator.md for the comparison with vLLM):

- ``prefill_priority`` (vLLM V0 without chunked prefill, Vidur's "vllm" scheduler): if waiting requests can be
  admitted (sequence cap, token budget, KV blocks above the watermark), the iteration is a prefill-only batch of
  them, FCFS; otherwise every running request decodes one token.
- ``chunked`` (vLLM V1 / Sarathi): every running request in decode takes one token of the budget, then partially
  prefilled requests continue, then waiting requests are admitted FCFS with prompt chunks that fit the remaining
  budget; admission stops at the first request that does not fit (no head-of-line bypass).
- KV memory is paged in ``block_size``-token blocks allocated as sequences grow. When a decode step needs more
  blocks than are free, the most recently arrived running request is preempted (recompute: its blocks are freed
  and it goes back to the front of the waiting queue, to re-prefill prompt + generated tokens).
- Prefix caching (``enable_prefix_caching``; vLLM V1 turns it on by default): requests with the same
  ``prefix_id`` share the full blocks of their common prefix; a request that hit a shorter cached prefix extends it
  with the prefix blocks it computed (a conversation's turns); a prefix stays cached after its last user finishes
  until its blocks are needed (LRU eviction).

Speed: while the batch is decode-only and nothing arrives, iteration ``i`` of a run costs ``t0 + t1 * S_i`` with
``S_i = S_0 + i * B`` (perf model contract), so ``k`` iterations are summed in closed form. A run stops at the
first completion, at the first step that would run out of KV blocks, at an arrival, or at a control change, so
the jump is exact: ``exact_steps=True`` executes the same schedule one iteration at a time (tests compare both).
Per-request decode state is kept relative to a replica-wide step counter so a jump costs O(1), not O(batch).
"""

from __future__ import annotations

import copy
import heapq
import math
from collections import OrderedDict, deque
from typing import Protocol

from rlserve.errors import ConfigError
from rlserve.sim.config import ReplicaConfig
from rlserve.snapshot import RECENT_LATENCY_EWMA_ALPHA as _EWMA_ALPHA
from rlserve.snapshot import QueuedRequestView, ReplicaState, decode_tokens_left

INF = math.inf
NAN = math.nan



class PerfModel(Protocol):
    """What the simulator needs from :class:`rlserve.perf.ReplicaPerfModel`."""

    sm_clock_mhz: float
    idle_power_w: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float

    def set_sm_clock(self, mhz: float) -> None: ...  # noqa: D102
    def decode_coeffs(self, batch_size: int) -> tuple[float, float, float, float]: ...  # noqa: D102
    def step_cost(self, prefill: list[tuple[int, int]], num_decode: int,  # noqa: D102
                  decode_context_sum: int) -> tuple[float, float]: ...
    def kv_capacity_blocks(self, block_size: int, gpu_memory_utilization: float = 0.9) -> int: ...  # noqa: D102


class RequestTable:
    """Per-request columns shared by all replicas of a cluster (Python lists: the fastest scalar access).

    Live decode state of a request in a replica's decode group is stored relative to that replica's step
    counter ``g``: tokens in KV = ``g + off``, tokens generated = ``g + goff``.

    ``output`` is the true output length, which only the engine's execution reads; ``declared`` is the client's
    ``max_tokens``, the only output size that reaches a :class:`~rlserve.snapshot.ReplicaState`.
    """

    def __init__(self, arrival_s: list[float], prompt: list[int], output: list[int], prefix_id: list[int],
                 prefix_tokens: list[int], declared: list[int] | None = None) -> None:
        n = len(arrival_s)
        self.arrival = arrival_s
        self.prompt = prompt
        self.output = output  # truth: executed, never observed
        self.declared = list(output) if declared is None else declared
        self.prefix_id = prefix_id
        self.prefix_tokens = prefix_tokens
        self.replica = [-1] * n
        self.first_sched = [NAN] * n
        self.first_token = [NAN] * n
        self.finish = [NAN] * n
        self.preemptions = [0] * n
        self.energy = [0.0] * n
        self.rejected = [False] * n
        self.gen = [0] * n  # generated tokens (outside a decode group)
        self.ctx = [0] * n  # tokens with KV in cache (outside a decode group)
        self.need = [0] * n  # tokens still to prefill in the current incarnation
        self.off = [0] * n
        self.goff = [0] * n
        self.ebase = [0.0] * n
        self.shared = [0] * n  # prefix-cache blocks this request uses but does not own
        self.incarnation = [0] * n  # bumped at preemption; invalidates stale completion-heap entries
        self.inflight = [0] * n  # requests already at the replica (running or waiting) when this one arrived
        self.finished_order: list[int] = []  # request ids in the order replicas finished them

    def copy(self) -> RequestTable:
        """An independent copy for what-if runs (each column is copied; the columns hold immutable scalars)."""
        clone = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, list):
                setattr(clone, name, list(value))
        return clone


class Replica:
    """A vLLM-like engine. Driven by :class:`~rlserve.sim.cluster.ClusterSimulator`; not used directly."""

    def __init__(self, index: int, cfg: ReplicaConfig, perf: PerfModel, table: RequestTable, *,
                 exact_steps: bool = False, timeline: bool = False) -> None:
        self.index = index
        self.cfg = cfg
        self.perf = perf
        self.t = table
        self.exact_steps = exact_steps
        self.bs = cfg.block_size
        self.total_blocks = cfg.num_gpu_blocks or perf.kv_capacity_blocks(cfg.block_size, cfg.gpu_memory_utilization)
        self.prefill_priority = cfg.batching == "prefill_priority"
        self.watermark_blocks = (int(cfg.watermark * self.total_blocks)
                                 if self.prefill_priority or cfg.chunked_watermark else 0)
        self.padded_budget = cfg.prefill_budget == "padded"
        self.budget = cfg.token_budget
        self.max_seqs = cfg.max_num_seqs
        self.cap = cfg.concurrency_cap or cfg.max_num_seqs
        self.prefix_caching = cfg.enable_prefix_caching
        # queues
        self.waiting: deque[int] = deque()
        self.prefilling: dict[int, None] = {}  # admitted, prompt not fully computed (ordered)
        self.decoding: dict[int, None] = {}  # decode group (ordered by join)
        self.used = 0  # KV blocks held by requests and by in-use prefixes
        # decode group, relative to the step counter
        self.steps = 0
        self.B = 0
        self.S = 0  # sum over the decode group of (tokens in KV + 1): attended context of the next step
        self.cnt = [0] * self.bs  # cnt[r]: decode requests that need a new block on steps g with g % bs == r
        self.heap: list[tuple[int, int, int]] = []  # (finish step, request id, incarnation)
        self.eps = 0.0  # cumulative decode energy per decode-group member (per-request energy shares)
        # prefix cache: active prefix -> [users, blocks]; evictable prefixes (LRU order) -> blocks
        self.prefix_active: dict[int, list[int]] = {}
        self.prefix_lru: OrderedDict[int, int] = OrderedDict()
        self.cached_blocks = 0
        # the iteration (or decode run) in flight
        self.busy_until = INF
        self.cur_start = 0.0
        self.cur_k = 0  # decode steps in flight (0: prefill-only iteration)
        self.cur_chunks: list[tuple[int, int]] = []  # prefill chunks in flight: (request, tokens)
        self.cur_energy = 0.0
        self.cur_coeffs = (0.0, 0.0, 0.0, 0.0)
        self.idle_since = 0.0
        # counters
        self.pending_prefill = 0
        self.pending_decode = 0
        self.completed = 0
        self.generated = 0
        self.preemptions_total = 0
        self.prefix_hit_tokens = 0  # prompt tokens served from the prefix cache (not computed)
        self.energy_j = 0.0
        self.busy_s = 0.0
        self.kv_block_seconds = 0.0
        self.last_power_w = perf.idle_power_w
        self.recent_ttft = 0.0
        self.recent_e2e = 0.0
        self.first_tokens = 0
        self.assigned = 0
        self.rejected = 0
        # per-token inter-token latency, kept as runs: (first step s, increment per step s, steps, tokens per step)
        self.itl_runs: list[tuple[float, float, int, int]] = []
        self.itl_stall = 0.0  # prefill-only time since the decode group last stepped (prefill_priority)
        self.itl_cohorts: list[tuple[int, float]] = []  # (members, stall when they joined) since then
        # per-iteration record (a decode run of k iterations is one row with steps=k), when asked for
        self.timeline: list[tuple[int, float, float, int, int, int, int, int, int]] | None = [] if timeline else None

    def fork(self, table: RequestTable) -> Replica:
        """A copy of this replica that writes into ``table`` (a :meth:`RequestTable.copy` of its own), for what-if
        runs. The fork shares the configuration and the performance model, so it must not change the clock."""
        return copy.deepcopy(self, {id(self.t): table, id(self.perf): self.perf, id(self.cfg): self.cfg})

    # ------------------------------------------------------------------ driving
    def advance_to(self, t: float) -> None:
        """Complete every iteration that ends at or before ``t`` (and plan the ones that follow)."""
        while self.busy_until <= t:
            end = self.busy_until
            self._complete(end)
            self._plan(end)

    def enqueue(self, rid: int, now: float) -> None:
        """A request arrives at ``now`` (the caller has advanced this replica to ``now``)."""
        t = self.t
        t.replica[rid] = self.index
        t.inflight[rid] = self.B + len(self.prefilling) + len(self.waiting)
        self.assigned += 1
        prompt = t.prompt[rid]
        blocks = -(-(prompt + t.output[rid]) // self.bs)
        if prompt + t.declared[rid] > self.cfg.max_model_len or blocks > self.total_blocks - self.watermark_blocks or (
                self.prefill_priority and prompt > self.budget):
            t.rejected[rid] = True  # vLLM would refuse it; it never runs (counted, not silently dropped)
            self.rejected += 1
            return
        t.need[rid] = prompt
        self.waiting.append(rid)
        self.pending_prefill += prompt
        self.pending_decode += decode_tokens_left(t.declared[rid], 0)
        self._interrupt(now)

    def set_sm_clock(self, mhz: float, now: float) -> None:
        """New SM clock for iterations that start after ``now``."""
        self.perf.set_sm_clock(mhz)
        self._interrupt(now)

    def set_concurrency_cap(self, cap: int, now: float) -> None:
        """New admission cap, effective at the next scheduling decision."""
        if not 1 <= cap <= self.max_seqs:
            raise ConfigError(f"concurrency cap must be in [1, {self.max_seqs}], got {cap}")
        self.cap = cap
        self._interrupt(now)

    def _interrupt(self, now: float) -> None:
        """Make the scheduler decide again at the first iteration boundary after ``now``."""
        if self.busy_until == INF:
            self.close_idle(now)
            self._plan(now)
        elif self.cur_k > 1:
            a = self._steps_started_by(now)
            if a < self.cur_k:
                self._set_run(self.cur_start, a)

    # ------------------------------------------------------------------ decode-run arithmetic
    def close_idle(self, now: float) -> None:
        """Account idle energy up to ``now`` (the replica is idle)."""
        if self.busy_until == INF and now > self.idle_since:
            self.energy_j += self.perf.idle_power_w * (now - self.idle_since)
            self.idle_since = now

    def _run_time(self, k: int) -> float:
        t0, t1, _, _ = self.cur_coeffs
        return k * t0 + t1 * (k * self.S + self.B * k * (k - 1) / 2)

    def _run_energy(self, k: int) -> float:
        _, _, e0, e1 = self.cur_coeffs
        return k * e0 + e1 * (k * self.S + self.B * k * (k - 1) / 2)

    def _set_run(self, start: float, k: int) -> None:
        self.cur_k = k
        self.busy_until = start + self._run_time(k)
        self.cur_energy = self._run_energy(k)

    def _steps_within(self, dt: float) -> int:
        """Largest j <= cur_k with run_time(j) <= dt."""
        t0, t1, _, _ = self.cur_coeffs
        a = t1 * self.B / 2
        b = t0 + t1 * (self.S - self.B / 2)
        if dt <= 0:
            j = 0
        elif a > 0:
            j = int((-b + math.sqrt(b * b + 4 * a * dt)) / (2 * a))
        else:
            j = int(dt / b)
        j = min(j, self.cur_k)
        while j < self.cur_k and self._run_time(j + 1) <= dt:
            j += 1
        while j > 0 and self._run_time(j) > dt:
            j -= 1
        return j

    def _steps_started_by(self, now: float) -> int:
        """Decode steps of the current run that started at or before ``now`` (the one in progress included)."""
        return min(self.cur_k, self._steps_within(now - self.cur_start) + 1)

    def _crossings(self, k: int) -> int:
        """New KV blocks the decode group needs over its next ``k`` steps."""
        bs = self.bs
        q, r = divmod(k, bs)
        total = q * self.B
        if r:
            s = self.steps % bs
            cnt = self.cnt
            total += sum(cnt[s:s + r]) if s + r <= bs else sum(cnt[s:]) + sum(cnt[:s + r - bs])
        return total

    def _steps_until_full(self, free: int) -> int:
        """Largest k such that the next k decode steps fit in ``free`` blocks."""
        q = free // self.B
        left = free - q * self.B
        bs = self.bs
        s = self.steps % bs
        cnt = self.cnt
        for j in range(bs):
            left -= cnt[(s + j) % bs]
            if left < 0:
                return q * bs + j
        return q * bs + bs  # unreachable: a full cycle needs B > left blocks

    # ------------------------------------------------------------------ completing work
    def _complete(self, end: float) -> None:
        """Apply the effects of the iteration (or decode run) that ends at ``end``."""
        dur = end - self.cur_start
        energy = self.cur_energy
        self.busy_s += dur
        self.energy_j += energy
        if dur > 0:
            self.last_power_w = energy / dur
        used_before = self.used
        k = self.cur_k
        chunks = self.cur_chunks
        decode_batch = self.B if k else 0  # before completions leave and finished prefills join
        if k:
            B = self.B
            self._record_itl(k, dur)
            chunk_tokens = sum([n for _, n in chunks]) if chunks else 0
            dec_energy = energy * B / (B + chunk_tokens) if chunk_tokens else energy
            self.used += self._crossings(k)
            steps = self.steps = self.steps + k
            self.S += B * k
            self.eps += dec_energy / B
            self.generated += B * k
            self.pending_decode -= B * k
            heap = self.heap
            if heap[0][0] <= steps:
                incarnation = self.t.incarnation
                decoding = self.decoding
                while heap and heap[0][0] <= steps:
                    _, rid, inc = heapq.heappop(heap)
                    if inc == incarnation[rid] and rid in decoding:
                        self._leave_decode(rid)
                        self._finish(rid, end)
            if chunks:
                self._complete_chunks(end, chunks, energy - dec_energy)
        else:
            waiting = self.B
            if waiting:  # decoding requests wait through a prefill-only iteration: their next token is late
                if not self.itl_cohorts:
                    self.itl_cohorts.append((waiting, 0.0))
                self.itl_stall += dur
            self._complete_chunks(end, chunks, energy)
            if self.itl_cohorts and self.B > waiting:  # joined now: they wait only through later stalls
                self.itl_cohorts.append((self.B - waiting, self.itl_stall))
        self.kv_block_seconds += (used_before + self.used) * 0.5 * dur
        if self.timeline is not None:
            prefill_tokens = sum([n for _, n in chunks]) if chunks else 0
            self.timeline.append((self.index, self.cur_start, dur, max(k, 1), decode_batch + len(chunks),
                                  prefill_tokens, decode_batch * k, self.used, self.preemptions_total))
        self.cur_chunks = []
        self.cur_k = 0
        self.busy_until = INF

    def _record_itl(self, k: int, dur: float) -> None:
        """Inter-token gaps of the ``k`` decode steps that just ended (O(1): one run entry, plus the stalls).

        Step ``j`` of a decode run takes ``t0 + t1 (S + j B)``; a mixed iteration's decodes wait its whole
        duration. Members that waited through prefill-only iterations get the part of the stall after they
        joined added to their first gap (by cohort; a preemption between the stall and the step shrinks the
        newest cohorts first, which is approximate: its victim may have come from any cohort).
        """
        B = self.B
        if self.cur_chunks:
            d0, inc = dur, 0.0
        else:
            t0, t1, _, _ = self.cur_coeffs
            d0, inc = t0 + t1 * self.S, t1 * B
        runs = self.itl_runs
        if self.itl_cohorts:
            left = B
            for members, joined_at in self.itl_cohorts:
                n = min(members, left)
                if n:
                    runs.append((d0 + self.itl_stall - joined_at, 0.0, 1, n))
                left -= n
            if left:  # joined by the step itself (mixed iteration): no stall
                runs.append((d0, 0.0, 1, left))
            if k > 1:
                runs.append((d0 + inc, inc, k - 1, B))
            self.itl_stall = 0.0
            self.itl_cohorts = []
        else:
            runs.append((d0, inc, k, B))

    def _complete_chunks(self, end: float, chunks: list[tuple[int, int]], energy: float) -> None:
        """Prefill chunks done: a request whose prompt is complete samples a token and joins the decode group."""
        t = self.t
        tokens = sum([n for _, n in chunks])
        for rid, n in chunks:
            t.energy[rid] += energy * n / tokens
            t.ctx[rid] += n
            need = t.need[rid] = t.need[rid] - n
            self.pending_prefill -= n
            if need:
                continue
            del self.prefilling[rid]
            if self.prefix_caching and t.prefix_id[rid] >= 0:
                self._register_prefix(rid)
            gen = t.gen[rid] = t.gen[rid] + 1
            self.generated += 1
            self.pending_decode -= 1
            if t.first_token[rid] != t.first_token[rid]:  # NaN: first token of this request
                t.first_token[rid] = end
                self.first_tokens += 1
                ttft = end - t.arrival[rid]
                self.recent_ttft += (ttft - self.recent_ttft) * (1.0 if self.first_tokens == 1 else _EWMA_ALPHA)
            if gen >= t.output[rid]:
                self._release(rid, t.ctx[rid])
                self._finish(rid, end)
            else:
                self._join_decode(rid)

    def _finish(self, rid: int, end: float) -> None:
        t = self.t
        t.finish[rid] = end
        t.finished_order.append(rid)
        self.completed += 1
        self.pending_decode -= decode_tokens_left(t.declared[rid], t.output[rid])  # ended before max_tokens
        e2e = end - t.arrival[rid]
        self.recent_e2e = e2e if self.completed == 1 else self.recent_e2e + _EWMA_ALPHA * (e2e - self.recent_e2e)

    def _join_decode(self, rid: int) -> None:
        t = self.t
        g = self.steps
        ctx = t.ctx[rid]
        gen = t.gen[rid]
        t.off[rid] = ctx - g
        t.goff[rid] = gen - g
        t.ebase[rid] = self.eps
        self.decoding[rid] = None
        self.B += 1
        self.S += ctx + 1
        self.cnt[(g - ctx) % self.bs] += 1
        heapq.heappush(self.heap, (g + t.output[rid] - gen, rid, t.incarnation[rid]))

    def _leave_decode(self, rid: int) -> int:
        """Remove ``rid`` from the decode group, settle its state and blocks; returns its tokens in KV."""
        t = self.t
        g = self.steps
        ctx = g + t.off[rid]
        del self.decoding[rid]
        self.B -= 1
        self.S -= ctx + 1
        self.cnt[(-t.off[rid]) % self.bs] -= 1
        t.ctx[rid] = ctx
        t.gen[rid] = g + t.goff[rid]
        t.energy[rid] += self.eps - t.ebase[rid]
        self._release(rid, ctx)
        return ctx

    def _release(self, rid: int, ctx: int) -> None:
        """Free the KV blocks ``rid`` owns and drop its use of a shared prefix."""
        t = self.t
        self.used -= -(-ctx // self.bs) - t.shared[rid]
        if t.shared[rid]:
            self._drop_prefix(rid)

    def _drop_prefix(self, rid: int) -> None:
        """Give back ``rid``'s reference on its prefix; an unused prefix becomes evictable (LRU)."""
        t = self.t
        p = t.prefix_id[rid]
        entry = self.prefix_active[p]
        entry[0] -= 1
        if entry[0] == 0:
            del self.prefix_active[p]
            self.used -= entry[1]
            self.prefix_lru[p] = entry[1]
            self.cached_blocks += entry[1]
        t.shared[rid] = 0

    def _preempt(self, rid: int) -> None:
        """Recompute-preemption: free everything, back to the front of the waiting queue."""
        t = self.t
        if rid in self.decoding:
            self._leave_decode(rid)
        else:
            del self.prefilling[rid]
            self._release(rid, t.ctx[rid])
            self.pending_prefill -= t.need[rid]
        t.incarnation[rid] += 1
        t.preemptions[rid] += 1
        self.preemptions_total += 1
        recompute = t.prompt[rid] + t.gen[rid]  # prompt + generated tokens are prefilled again
        t.need[rid] = recompute
        t.ctx[rid] = 0
        self.pending_prefill += recompute
        self.waiting.appendleft(rid)

    def _victim(self, exclude: int = -1) -> int:
        """The most recently arrived running request (vLLM's FCFS preemption order)."""
        arrival = self.t.arrival
        best, best_t = -1, -INF
        for group in (self.decoding, self.prefilling):
            for rid in group:
                if rid != exclude and arrival[rid] >= best_t:
                    best, best_t = rid, arrival[rid]
        return best

    # ------------------------------------------------------------------ prefix cache
    def _prefix_hit_blocks(self, rid: int) -> int:
        """Blocks of ``rid``'s prompt already cached (takes a reference on the prefix)."""
        t = self.t
        p = t.prefix_id[rid]
        if p < 0 or t.ctx[rid]:
            return 0
        entry = self.prefix_active.get(p)
        hit = min(entry[1] if entry else self.prefix_lru.get(p, 0), (t.prompt[rid] - 1) // self.bs)
        if hit <= 0:
            return 0
        if entry is None:
            blocks = self.prefix_lru.pop(p)
            self.cached_blocks -= blocks
            self.used += blocks
            entry = self.prefix_active[p] = [0, blocks]
        entry[0] += 1
        t.shared[rid] = hit
        return hit

    def _register_prefix(self, rid: int) -> None:
        """After a prefill, the full blocks of the request's prefix become shareable.

        After a miss, the request's prefix blocks become the cached prefix. After a hit on a shorter cached prefix
        (a conversation's next turn: its prompt continues the previous one), the blocks it computed beyond the hit
        extend the cached prefix, so the turn after it hits them too; they change owner (request -> prefix), so the
        blocks in use do not change.
        """
        t = self.t
        p = t.prefix_id[rid]
        blocks = min(t.prefix_tokens[rid], t.prompt[rid]) // self.bs
        shared = t.shared[rid]
        if blocks <= shared:
            return
        entry = self.prefix_active.get(p)
        if shared:
            if entry is not None and entry[1] == shared:  # nobody extended it meanwhile
                entry[1] = blocks
                t.shared[rid] = blocks
        elif entry is None:
            self.cached_blocks -= self.prefix_lru.pop(p, 0)  # a stale cached copy is superseded
            self.prefix_active[p] = [1, blocks]
            t.shared[rid] = blocks

    def _make_room(self, blocks: int) -> None:
        """Evict cached (unused) prefixes so that ``blocks`` can be allocated from the free pool."""
        while self.cached_blocks and self.total_blocks - self.used - self.cached_blocks < blocks:
            _, b = self.prefix_lru.popitem(last=False)
            self.cached_blocks -= b

    # ------------------------------------------------------------------ scheduling
    def _plan(self, now: float) -> None:
        """Decide the next iteration (or decode run) starting at ``now``; idle if there is nothing to do."""
        if self.prefill_priority:
            chunks = self._plan_prefill_priority(now) if self.waiting else None
        else:
            chunks = self._plan_chunked(now) if self.waiting or self.prefilling else None
        if chunks:
            prefill = [(n, self.t.ctx[rid]) for rid, n in chunks]
            k = 0 if self.prefill_priority else (1 if self.B else 0)
            dt, energy = self.perf.step_cost(prefill, self.B if k else 0, self.S if k else 0)
            self.cur_start, self.cur_k, self.cur_chunks = now, k, chunks
            self.busy_until, self.cur_energy = now + dt, energy
        elif self.B:
            self._plan_decode_run(now)
        else:
            self.busy_until = INF
            self.idle_since = now

    def _plan_decode_run(self, now: float) -> None:
        free = self.total_blocks - self.used
        preempted = self.cnt[self.steps % self.bs] > free  # the next step needs more blocks than are free
        if preempted:
            while self._crossings(1) > self.total_blocks - self.used:
                self._preempt(self._victim())
                if not self.B:
                    self._plan(now)  # everything was preempted: re-admit from the waiting queue
                    return
            free = self.total_blocks - self.used
        B = self.B
        if self.exact_steps or preempted:
            # after a preemption the freed blocks may admit the victim at the very next boundary
            k = 1
        else:
            heap, t = self.heap, self.t
            while heap[0][2] != t.incarnation[heap[0][1]] or heap[0][1] not in self.decoding:
                heapq.heappop(heap)  # stale entry of a preempted incarnation
            k = heap[0][0] - self.steps
            # Cached prefixes are evicted only by the step that needs their blocks (as single steps would),
            # so a jump covers only steps that fit in blocks that are free and uncached.
            free -= self.cached_blocks
            if (free // B) * self.bs < k:  # blocks may run out before the next completion
                k = max(1, min(k, self._steps_until_full(free)))
        if self.cached_blocks:
            self._make_room(self._crossings(k))
        t0, t1, e0, e1 = self.cur_coeffs = self.perf.decode_coeffs(B)
        ctx = k * self.S + B * k * (k - 1) * 0.5
        self.cur_start = now
        self.cur_chunks = []
        self.cur_k = k
        self.busy_until = now + k * t0 + t1 * ctx
        self.cur_energy = k * e0 + e1 * ctx

    def _admit_first(self, rid: int, now: float) -> None:
        t = self.t
        self.waiting.popleft()
        self.prefilling[rid] = None
        if t.first_sched[rid] != t.first_sched[rid]:
            t.first_sched[rid] = now

    def _plan_prefill_priority(self, now: float) -> list[tuple[int, int]]:
        t = self.t
        chunks: list[tuple[int, int]] = []
        tokens = 0
        longest = 0
        limit = min(self.max_seqs, self.cap)
        while self.waiting and self.B + len(self.prefilling) < limit:
            rid = self.waiting[0]
            n = t.need[rid]
            if self.padded_budget:  # Vidur: every prompt of the batch padded to the longest
                if (len(chunks) + 1) * max(longest, n) > self.budget:
                    break
                longest = max(longest, n)
            elif tokens + n > self.budget:
                break
            hit = self._prefix_hit_blocks(rid) if self.prefix_caching else 0
            blocks = -(-n // self.bs) - t.shared[rid]
            if self.total_blocks - self.used - blocks < self.watermark_blocks:
                if hit:
                    self._drop_prefix(rid)  # give the prefix reference back; retry later
                break
            if hit:
                n -= hit * self.bs
                t.ctx[rid] = hit * self.bs
                t.need[rid] = n
                self.pending_prefill -= hit * self.bs
                self.prefix_hit_tokens += hit * self.bs
            self._make_room(blocks)
            self.used += blocks
            self._admit_first(rid, now)
            chunks.append((rid, n))
            tokens += n
        return chunks

    def _plan_chunked(self, now: float) -> list[tuple[int, int]]:
        t = self.t
        if self.B:
            while self._crossings(1) > self.total_blocks - self.used:
                self._preempt(self._victim())
        budget = self.budget - self.B
        reserved = self._crossings(1) if self.B else 0
        chunks: list[tuple[int, int]] = []
        for rid in list(self.prefilling):
            if budget <= 0:
                break
            if rid not in self.prefilling:  # preempted below while making room for an earlier one
                continue
            n = min(t.need[rid], budget)
            blocks = -(-(t.ctx[rid] + n) // self.bs) - -(-t.ctx[rid] // self.bs)
            while self.total_blocks - self.used - reserved < blocks:
                victim = self._victim(exclude=rid)
                if victim < 0:
                    break
                self._preempt(victim)
                reserved = self._crossings(1) if self.B else 0
            if self.total_blocks - self.used - reserved < blocks:
                break
            self._make_room(blocks + reserved)
            self.used += blocks
            chunks.append((rid, n))
            budget -= n
        limit = min(self.max_seqs, self.cap)
        while self.waiting and budget > 0 and self.B + len(self.prefilling) < limit:
            rid = self.waiting[0]
            hit = self._prefix_hit_blocks(rid) if self.prefix_caching else 0
            n = min(t.need[rid] - hit * self.bs, budget)
            ctx = hit * self.bs
            blocks = -(-(ctx + n) // self.bs) - t.shared[rid]
            if self.total_blocks - self.used - reserved - blocks < self.watermark_blocks:
                if hit:
                    self._drop_prefix(rid)
                break
            if hit:
                t.ctx[rid] = ctx
                t.need[rid] -= ctx
                self.pending_prefill -= ctx
                self.prefix_hit_tokens += ctx
            self._make_room(blocks + reserved)
            self.used += blocks
            self._admit_first(rid, now)
            chunks.append((rid, n))
            budget -= n
        return chunks

    # ------------------------------------------------------------------ observation
    def state(self, now: float, queue_k: int = 0) -> ReplicaState:
        """The replica as a policy sees it at ``now`` (after :meth:`advance_to`), a decode run in flight included."""
        used, generated, pending_decode = self.used, self.generated, self.pending_decode
        busy_s, energy = self.busy_s, self.energy_j
        if self.busy_until == INF:
            energy += self.perf.idle_power_w * (now - self.idle_since)
        else:
            frac_busy = now - self.cur_start
            busy_s += frac_busy
            if self.cur_k > 1 and not self.cur_chunks:  # progress inside a decode run
                j = self._steps_within(frac_busy)
                used += self._crossings(j)
                generated += self.B * j
                pending_decode -= self.B * j
                energy += self._run_energy(j)
        perf = self.perf
        return ReplicaState(
            num_waiting=len(self.waiting),
            num_running=self.B + len(self.prefilling),
            kv_blocks_used=used,
            kv_blocks_total=self.total_blocks,
            block_size=self.bs,
            max_num_seqs=self.max_seqs,
            concurrency_cap=self.cap,
            num_preemptions_total=self.preemptions_total,
            pending_prefill_tokens=self.pending_prefill,
            pending_decode_tokens=pending_decode,
            completed_total=self.completed,
            generated_tokens_total=generated,
            recent_ttft_s=self.recent_ttft,
            recent_e2e_s=self.recent_e2e,
            decode_tokens_per_s=perf.decode_tokens_per_s,
            prefill_tokens_per_s=perf.prefill_tokens_per_s,
            kv_capacity_tokens=self.total_blocks * self.bs,
            sm_clock_mhz=perf.sm_clock_mhz,
            power_w=self.last_power_w if self.busy_until != INF else perf.idle_power_w,
            energy_j=energy,
            busy_s=busy_s,
            queue=self._queue_view(now, queue_k) if queue_k else (),
        )

    def _queue_view(self, now: float, k: int) -> tuple[QueuedRequestView, ...]:
        t = self.t
        views = []
        for rid in sorted([*self.decoding, *self.prefilling, *self.waiting], key=t.arrival.__getitem__)[:k]:
            if rid in self.decoding:
                ctx, gen = self.steps + t.off[rid], self.steps + t.goff[rid]
            else:
                ctx, gen = t.ctx[rid], t.gen[rid]
            views.append(QueuedRequestView(
                age_s=now - t.arrival[rid], prompt_tokens=t.prompt[rid], processed_tokens=ctx,
                remaining_prefill_tokens=0 if rid in self.decoding else t.need[rid],
                max_tokens=t.declared[rid], generated_tokens=gen))
        return tuple(views)
