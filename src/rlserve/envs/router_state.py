"""StateBuilder: a :class:`~rlserve.snapshot.ClusterSnapshot` plus the incoming request → the router's state vector.

The same builder runs in the simulator (training) and behind the real proxy (deployment): it reads only the
snapshot and the request, so a checkpoint trained in simulation deploys unchanged. It keeps a short history
(the seed's temporal features need one); :meth:`StateBuilder.reset` clears it at the start of every run.

Layout (``get_state_dimension``): for each replica, in replica order, ``base (11) | temporal (8, optional) |
capability (3, optional) | work (3, optional) | K queued requests × 7``; then ``global base (3) | global temporal
(7, optional) | request (2, optional)``. Every feature, its unit and its transform is listed in
``docs/ppo_router.md``; the trainer standardises the whole vector with a running normaliser (Welford, clipped at
±10) fitted during the statistics-stabilisation phase. Counts of tokens and seconds of work are heavy-tailed, so
they enter as ``log1p(x)`` before standardisation (a 10x longer queue is a fixed step, not an outlier).

Cumulative counters (preemptions, completions) are turned into per-interval deltas here: a since-start counter
grows without bound and says nothing about the present (defect 1's cousin on the state side).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from math import log1p
from operator import mul, sub

import numpy as np

from rlserve.policies.routers import LeastExpectedLatencyRouter
from rlserve.rl.config import StateConfig
from rlserve.snapshot import ClusterSnapshot, ReplicaState
from rlserve.workload.request import Request

REPLICA_BASE = 11
REPLICA_TEMPORAL = 8
REPLICA_CAPABILITY = 3
REPLICA_WORK = 5
REQUEST_FEATURES = 7
GLOBAL_BASE = 3
GLOBAL_TEMPORAL = 7
INCOMING_REQUEST = 2


def _log1p(x: float) -> float:
    return log1p(x) if x > 0 else 0.0


@functools.cache
def _centred_indices(n: int) -> tuple[tuple[float, ...], float]:
    """``i - (n - 1) / 2`` for ``i < n``, and the sum of their squares (the slope's denominator, fixed per n)."""
    mid = (n - 1) / 2
    return tuple(i - mid for i in range(n)), sum((i - mid) ** 2 for i in range(n))


def _slope_var(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope per sample and population variance of a short series (plain Python: n <= ~10).

    ``map`` over builtins runs the per-element loops in C; the operations and their order are those of the plain
    formulas (``(v - mean) ** 2``, left-to-right sums), so the results are the same to the bit.
    """
    n = len(values)
    mean = sum(values) / n
    dev = list(map(sub, values, repeat(mean, n)))
    var = sum(map(pow, dev, repeat(2, n))) / n
    if n < 2:
        return 0.0, var
    offsets, den = _centred_indices(n)
    return sum(map(mul, offsets, dev)) / den, var


class StateBuilder:
    """Builds fixed-length state vectors for a cluster of ``num_replicas`` replicas (see module docstring)."""

    def __init__(self, num_replicas: int, cfg: StateConfig | None = None) -> None:
        self.num_replicas = num_replicas
        self.cfg = cfg or StateConfig()
        self.reset()

    # ------------------------------------------------------------------ layout
    def replica_dimension(self) -> int:
        """Features per replica."""
        c = self.cfg
        return (REPLICA_BASE + (REPLICA_TEMPORAL if c.enable_enhanced_features else 0)
                + (REPLICA_CAPABILITY if c.include_capability else 0) + (REPLICA_WORK if c.include_work else 0)
                + REQUEST_FEATURES * c.max_queue_requests_per_replica)

    def get_state_dimension(self, num_replicas: int | None = None) -> int:
        """Length of the state vector for ``num_replicas`` (default: this builder's)."""
        n = self.num_replicas if num_replicas is None else num_replicas
        c = self.cfg
        return (n * self.replica_dimension() + GLOBAL_BASE + (GLOBAL_TEMPORAL if c.enable_enhanced_features else 0)
                + (INCOMING_REQUEST if c.include_request else 0))

    def feature_names(self) -> list[str]:
        """One name per state entry, in order (for docs, debugging and the checkpoint's metadata)."""
        c = self.cfg
        per = ["queue_length", "allocated_blocks", "total_blocks", "kv_utilization", "kv_available",
               "running", "preempted_recent", "allocation_map_size", "batch_capacity", "block_size", "num_stages"]
        if c.enable_enhanced_features:
            per += ["queue_delta", "allocation_delta", "load_ema", "queue_trend", "queue_variance", "load_peak",
                    "load_low", "time_since_peak_s"]
        if c.include_capability:
            per += ["rel_decode_speed", "rel_prefill_speed", "rel_kv_capacity"]
        if c.include_work:
            per += ["prefill_wait_s", "decode_backlog_s", "own_decode_s", "expected_latency_s", "latency_gap_s"]
        for k in range(c.max_queue_requests_per_replica):
            per += [f"q{k}_{f}" for f in ("age_s", "prompt_tokens", "processed_tokens", "remaining_prefill",
                                          "done_fraction", "output_tokens", "priority")]
        names = [f"r{i}.{f}" for i in range(self.num_replicas) for f in per]
        names += ["global_queue_length", "throughput_rps", "avg_latency_s"]
        if c.enable_enhanced_features:
            names += ["qps_current", "qps_ema", "qps_trend", "qps_variance", "load_balance_cv",
                      "global_queue_delta", "completion_rate"]
        if c.include_request:
            names += ["request_prompt_tokens", "request_output_tokens"]
        return names

    # ------------------------------------------------------------------ history
    def reset(self) -> None:
        """Forget the history (start of a run)."""
        n, w = self.num_replicas, self.cfg.state_history_window
        self._load_hist: list[deque[float]] = [deque(maxlen=w) for _ in range(n)]
        self._prev_outstanding = [0.0] * n
        self._prev_blocks = [0.0] * n
        self._load_ema = [0.0] * n
        self._peak_time = [0.0] * n
        self._preempt_hist: list[deque[int]] = [deque(maxlen=w) for _ in range(n)]
        self._arrivals: deque[float] = deque(maxlen=self.cfg.qps_window + 1)
        self._qps_hist: deque[float] = deque(maxlen=w)
        self._qps_ema = 0.0
        self._prev_waiting = 0.0
        self._completions: deque[tuple[float, int]] = deque(maxlen=w + 1)
        self._throughput_ema = 0.0
        self._started = False

    # ------------------------------------------------------------------ building
    # Speed: this runs once per routing decision, in front of every request the proxy forwards, so it is written
    # for CPython rather than for brevity: list comprehensions instead of generators, ``log1p(x) if x > 0 else 0.0``
    # inline instead of a call per feature, each attribute read once. numpy would not help at a few replicas (its
    # per-call overhead exceeds the work) and its SIMD log1p may differ from libm's in the last bit; a checkpoint
    # must see the observations it was trained on bit for bit (tests/policies/test_router_state_recorded.py).
    def build(self, snapshot: ClusterSnapshot, request: Request | None) -> np.ndarray:
        """The state vector at ``snapshot.time_s`` for routing ``request`` (``None`` = no request: zeros).

        Call once per routing decision, in time order: the temporal features difference consecutive calls.
        """
        c = self.cfg
        now = snapshot.time_s
        reps = snapshot.replicas
        if len(reps) != self.num_replicas:
            raise ValueError(f"snapshot has {len(reps)} replicas, the state builder was made for {self.num_replicas}")
        if request is not None:
            self._arrivals.append(request.arrival_s)
        out: list[float] = []
        outstanding = [float(r.outstanding) for r in reps]
        if c.include_capability:
            max_decode = max([r.decode_tokens_per_s for r in reps]) or 1.0
            max_prefill = max([r.prefill_tokens_per_s for r in reps]) or 1.0
            max_kv = max([r.kv_capacity_tokens for r in reps]) or 1
        if c.include_work:
            estimate = LeastExpectedLatencyRouter.estimate_s
            expected = [estimate(r, request) for r in reps] if request is not None else [0.0] * len(reps)
            best = min(expected)
        for i, r in enumerate(reps):
            self._replica_features(out, i, r, now)
            if c.include_capability:
                out += [r.decode_tokens_per_s / max_decode, r.prefill_tokens_per_s / max_prefill,
                        r.kv_capacity_tokens / max_kv]
            if c.include_work:
                self._work_features(out, r, request, expected[i], best)
            if c.max_queue_requests_per_replica:
                self._queue_features(out, r)
        self._global_features(out, reps, outstanding, now)
        if c.include_request:
            out += [_log1p(request.prompt_tokens), _log1p(request.output_tokens)] if request is not None else [0.0, 0.0]
        self._prev_outstanding = outstanding
        self._prev_blocks = [float(r.kv_blocks_used) for r in reps]
        self._started = True
        return np.asarray(out, np.float64)

    def _replica_features(self, out: list[float], i: int, r: ReplicaState, now: float) -> None:
        hist = self._preempt_hist[i]
        hist.append(r.num_preemptions_total)
        outstanding, used, total, usage = r.outstanding, r.kv_blocks_used, r.kv_blocks_total, r.kv_usage
        waiting, blocks_used, blocks_total, running, load_now, cap = [
            log1p(x) if x > 0 else 0.0
            for x in (r.num_waiting, used, total, r.num_running, outstanding, r.concurrency_cap)]
        out += [waiting, blocks_used, blocks_total, usage, 1.0 - usage, running, float(hist[-1] - hist[0]), load_now,
                cap, float(r.block_size), float(r.num_stages)]
        if not self.cfg.enable_enhanced_features:
            return
        load = float(outstanding)
        a = self.cfg.ema_alpha
        ema = self._load_ema[i] = load if not self._started else a * load + (1 - a) * self._load_ema[i]
        lh = self._load_hist[i]
        lh.append(load)
        peak, low = max(lh), min(lh)
        if load >= peak:
            self._peak_time[i] = now
        prev_out = self._prev_outstanding[i] if self._started else load
        prev_blocks = self._prev_blocks[i] if self._started else used
        trend, var = _slope_var(lh)
        log_ema, log_peak, log_low = [log1p(x) if x > 0 else 0.0 for x in (ema, peak, low)]
        out += [load - prev_out, (used - prev_blocks) / max(total, 1), log_ema, trend, var, log_peak, log_low,
                now - self._peak_time[i]]

    @staticmethod
    def _work_features(out: list[float], r: ReplicaState, request: Request | None, latency_s: float,
                       best_s: float) -> None:
        """Seconds of queued prefill (incl. this prompt), of queued decode per batch slot, of this request's
        decode alone, the least-expected-latency router's estimate, and that estimate's gap to the best replica."""
        prompt = request.prompt_tokens if request is not None else 0
        output = request.output_tokens if request is not None else 0
        decode_speed = r.decode_tokens_per_s
        out += [log1p(x) if x > 0 else 0.0 for x in (
            (r.pending_prefill_tokens + prompt) / r.prefill_tokens_per_s,
            r.pending_decode_tokens / (decode_speed * (r.outstanding + 1)),
            output / decode_speed,
            latency_s,
            latency_s - best_s,
        )]

    def _queue_features(self, out: list[float], r: ReplicaState) -> None:
        k = self.cfg.max_queue_requests_per_replica
        queue = r.queue[:k]
        for q in queue:
            age, prompt, processed, remaining, output = [
                log1p(x) if x > 0 else 0.0
                for x in (q.age_s, q.prompt_tokens, q.processed_tokens, q.remaining_prefill_tokens, q.output_tokens)]
            out += [age, prompt, processed, remaining, q.generated_tokens / max(q.output_tokens, 1), output,
                    float(q.priority)]
        out += [0.0] * (REQUEST_FEATURES * (k - len(queue)))

    def _global_features(self, out: list[float], reps: tuple[ReplicaState, ...], outstanding: list[float],
                         now: float) -> None:
        waiting = float(sum([r.num_waiting for r in reps]))
        completed = sum([r.completed_total for r in reps])
        self._completions.append((now, completed))
        t0, c0 = self._completions[0]
        rate = (completed - c0) / (now - t0) if now > t0 else 0.0
        a = self.cfg.ema_alpha
        self._throughput_ema = a * rate + (1 - a) * self._throughput_ema
        latencies = [r.recent_e2e_s for r in reps if r.recent_e2e_s > 0]
        mean_latency = sum(latencies) / len(latencies) if latencies else 0.0
        out += [_log1p(waiting), _log1p(self._throughput_ema), _log1p(mean_latency)]
        if not self.cfg.enable_enhanced_features:
            return
        arr = self._arrivals
        span = arr[-1] - arr[0] if len(arr) > 1 else 0.0
        qps = (len(arr) - 1) / span if span > 0 else 0.0
        self._qps_ema = qps if not self._qps_hist else a * qps + (1 - a) * self._qps_ema
        self._qps_hist.append(qps)
        qps_trend, qps_var = _slope_var(self._qps_hist)
        mean_load = sum(outstanding) / len(outstanding)
        cv = math.sqrt(sum([(x - mean_load) ** 2 for x in outstanding]) / len(outstanding)) / mean_load \
            if mean_load > 0 else 0.0
        delta_wait = waiting - self._prev_waiting if self._started else 0.0
        self._prev_waiting = waiting
        out += [_log1p(qps), _log1p(self._qps_ema), qps_trend, qps_var, cv, delta_wait, rate]
