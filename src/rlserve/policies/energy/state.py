"""The energy controller's observation, built from consecutive snapshots the same way in both worlds.

The seed's 10 normalised dimensions (section 4.1), then optional extras. Rates and utilisation are differences
of two snapshots one control interval apart, so the simulator and the real loop (whose snapshots come from the
proxy's bookkeeping, vLLM ``/metrics`` and the NVML energy counter) produce the same numbers for the same
behaviour, and a checkpoint trained in simulation deploys unchanged.

======  ===========================  ===================================================================
index   feature                      source and normalisation
======  ===========================  ===================================================================
0       GPU power                    energy counter delta / dt (else ``power_w``), / 1000 W (seed)
1       GPU utilisation              busy-time delta / dt (else the monitor's utilisation), fraction
2       GPU memory utilisation       constant ``gpu_memory_util`` (vLLM pre-allocates it; NVML shows the same)
3       CPU power                    / 200 W (seed); 0 unless given: the simulator has no CPU, so a
                                     sim-trained policy must see 0 in the real world too
4       CPU utilisation              fraction; 0 unless given (same reason)
5       running requests             / 50, clipped to 1 (seed)
6       waiting requests             / 50, clipped to 1 (seed)
7       KV cache usage               fraction of blocks in use (vLLM reports a fraction, never / 100)
8       request throughput           completions / dt / ``request_rate_scale`` (seed: 20 req/s), clipped
9       token throughput             generated tokens / dt / ``token_rate_scale`` (seed: 2000 tok/s), clipped
------  ---------------------------  -------------------------------------------------------------------
extras  (``extras=True``)
10      TTFT slack                   1 - recent TTFT / SLO TTFT, clipped to [-1, 1] (0 without a TTFT SLO)
11      TPOT slack                   1 - inter-token time / SLO TPOT, clipped to [-1, 1]; inter-token time
                                     = dt * mean running / generated tokens
12      oldest wait                  age of the oldest request not yet prefilled (snapshot queue view) / SLO
                                     TTFT, clipped to [0, 2]; 0 when the view has none
13      current clock                (clock - lowest) / (highest - lowest) of the action space
14      current cap                  cap / largest cap of the action space, clipped to 1
15      arrival rate                 arrivals / dt / ``request_rate_scale``, clipped
------  ---------------------------  -------------------------------------------------------------------
opt.    ``block_size_feature``       block size / 64 (the seed's conditional-controller scheme)
------  ---------------------------  -------------------------------------------------------------------
history (``history=True``): smoothed and trend features, so a policy deciding every second need not
        read the load from one noisy interval (a Poisson second at 10 req/s varies by +-30%)
+0      arrival rate, short          exponential moving average (time constant 10 s) of arrivals / s /
                                     ``request_rate_scale``, clipped to 1
+1      arrival rate, long           the same with a 60 s time constant: the load level
+2      token throughput, short      10 s average of generated tokens / s / ``token_rate_scale``
+3      queue growth                 (waiting now - its 10 s average) / 50, clipped to [-1, 1]
+4      TTFT slack, short            10 s average of the TTFT slack feature
+5      TPOT slack, short            10 s average of the TPOT slack feature (0 without extras)
+6      prefill backlog              pending prefill tokens / (prefill tokens / s x SLO TTFT), [0, 2]:
                                     the part of the TTFT budget the queued prompts already use
+7      time since pressure          seconds since the oldest request waited > half the TTFT SLO, / 60 s,
                                     clipped to 1 (1 = calm for a minute)
------  ---------------------------  -------------------------------------------------------------------
opt.    ``block_size_feature``       block size / 64 (the seed's conditional-controller scheme)
opt.    ``kv_block_features``        used and free block fractions (the seed's scheme B, prefix caching off)
======  ===========================  ===================================================================

The history features come before the optional block features; they use only what a real server's snapshot
has (queued prompt lengths are known at admission; the remaining *output* lengths are not, so they are not used).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from rlserve.errors import ConfigError
from rlserve.metrics import Slo
from rlserve.policies.energy.action_space import ActionSpace
from rlserve.snapshot import ClusterSnapshot, ReplicaState

SEED_DIM = 10
EXTRA_DIM = 6
HISTORY_DIM = 8
SHORT_TAU_S = 10.0  # time constant of the short moving averages: a few request lifetimes
LONG_TAU_S = 60.0  # time constant of the load level: longer than a burst, shorter than a diurnal segment
CALM_HORIZON_S = 60.0  # time since pressure saturates here


@dataclass(frozen=True)
class EnergyStateConfig:
    """Which features the observation has and how they are scaled (stored in checkpoints)."""

    extras: bool = True
    block_size_feature: bool = False
    kv_block_features: bool = False
    history: bool = False  # smoothed load, queue trend, prefill backlog, time since pressure (see above)
    gpu_memory_util: float = 0.9  # vLLM's gpu_memory_utilization: the memory it claims at start-up
    request_rate_scale: float = 20.0  # req/s that maps to 1.0 (seed)
    token_rate_scale: float = 2000.0  # tok/s that maps to 1.0 (seed)

    def __post_init__(self) -> None:
        if not 0 <= self.gpu_memory_util <= 1:
            raise ConfigError(f"gpu_memory_util must be in [0, 1], got {self.gpu_memory_util}")
        if not (self.request_rate_scale > 0 and self.token_rate_scale > 0):
            raise ConfigError("request_rate_scale and token_rate_scale must be > 0")

    @property
    def dim(self) -> int:
        """Length of the observation vector."""
        return (SEED_DIM + EXTRA_DIM * self.extras + HISTORY_DIM * self.history + self.block_size_feature
                + 2 * self.kv_block_features)

    @property
    def history_offset(self) -> int:
        """Index of the first history feature."""
        return SEED_DIM + EXTRA_DIM * self.extras

    def to_dict(self) -> dict[str, float | bool]:
        """Plain dict for checkpoints and configs."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class IntervalStats:
    """What happened on one replica between two snapshots (``None`` = not measured in this world)."""

    dt_s: float
    completed: int
    generated_tokens: int
    arrivals: int
    energy_j: float | None
    power_w: float | None  # average over the interval when the energy counter exists, else instantaneous
    gpu_util: float | None
    inter_token_s: float  # dt * mean running / generated tokens; inf when requests ran but made no progress,
    # 0 when nothing ran


class IntervalTracker:
    """Remembers the previous snapshot of one replica and turns the next one into :class:`IntervalStats`."""

    def __init__(self) -> None:
        self._prev: tuple[float, int, ReplicaState] | None = None

    def reset(self) -> None:
        """Forget the previous snapshot (a new run starts)."""
        self._prev = None

    def update(self, snapshot: ClusterSnapshot, replica: int) -> IntervalStats:
        """Stats since the previous call (all zero rates on the first call of a run)."""
        cur = snapshot.replicas[replica]
        prev = self._prev
        self._prev = (snapshot.time_s, snapshot.arrivals_total, cur)
        if prev is None or snapshot.time_s <= prev[0]:
            return IntervalStats(0.0, 0, 0, 0, None, cur.power_w, None, 0.0)
        t0, arrivals0, p = prev
        dt = snapshot.time_s - t0
        energy = cur.energy_j - p.energy_j if cur.energy_j is not None and p.energy_j is not None else None
        busy = cur.busy_s - p.busy_s if cur.busy_s is not None and p.busy_s is not None else None
        generated = cur.generated_tokens_total - p.generated_tokens_total
        running = 0.5 * (cur.num_running + p.num_running)
        if running == 0:
            itl = 0.0
        else:
            itl = dt * running / generated if generated > 0 else math.inf
        return IntervalStats(
            dt_s=dt,
            completed=cur.completed_total - p.completed_total,
            generated_tokens=generated,
            arrivals=snapshot.arrivals_total - arrivals0,
            energy_j=energy,
            power_w=energy / dt if energy is not None else cur.power_w,
            gpu_util=min(1.0, busy / dt) if busy is not None else None,
            inter_token_s=itl,
        )


class EnergyStateBuilder:
    """Builds the observation of one replica each control interval (stateful: it differences snapshots)."""

    def __init__(self, config: EnergyStateConfig, slo: Slo, action_space: ActionSpace) -> None:
        self.config = config
        self.slo = slo
        self.action_space = action_space
        self._tracker = IntervalTracker()
        self.last_stats: IntervalStats | None = None
        self._history = _History()

    @property
    def dim(self) -> int:
        """Length of the vectors :meth:`build` returns."""
        return self.config.dim

    def reset(self) -> None:
        """Forget the previous snapshot (call at the start of every run/episode)."""
        self._tracker.reset()
        self.last_stats = None
        self._history = _History()

    def build(self, snapshot: ClusterSnapshot, replica: int, *, gpu_util: float | None = None,
              cpu_power_w: float | None = None, cpu_util: float | None = None) -> np.ndarray:
        """The observation at ``snapshot.time_s`` (float32).

        ``gpu_util`` is used only where the snapshot has no busy-time counter (real servers: the NVML
        utilisation); ``cpu_*`` only where a CPU monitor exists (they default to 0, as in the simulator).
        """
        cfg = self.config
        stats = self._tracker.update(snapshot, replica)
        self.last_stats = stats
        r = snapshot.replicas[replica]
        dt = stats.dt_s
        rate = (lambda n: n / dt) if dt > 0 else (lambda n: 0.0)
        util = stats.gpu_util if stats.gpu_util is not None else (gpu_util or 0.0)
        feats = [
            (stats.power_w or 0.0) / 1000.0,
            util,
            cfg.gpu_memory_util,
            (cpu_power_w or 0.0) / 200.0,
            cpu_util or 0.0,
            min(r.num_running / 50.0, 1.0),
            min(r.num_waiting / 50.0, 1.0),
            r.kv_usage,
            min(rate(stats.completed) / cfg.request_rate_scale, 1.0),
            min(rate(stats.generated_tokens) / cfg.token_rate_scale, 1.0),
        ]
        if cfg.extras:
            feats += self._extras(r, stats, rate(stats.arrivals))
        if cfg.history:
            feats += self._history_features(snapshot.time_s, r, stats, rate, feats)
        if cfg.block_size_feature:
            feats.append(r.block_size / 64.0)
        if cfg.kv_block_features:
            used = r.kv_usage
            feats += [used, 1.0 - used if r.kv_blocks_total else 0.0]
        return np.asarray(feats, dtype=np.float32)

    def _history_features(self, now_s: float, r: ReplicaState, stats: IntervalStats,
                          rate: Callable[[float], float], feats: list[float]) -> list[float]:
        cfg, h, slo = self.config, self._history, self.slo
        short = 1.0 - math.exp(-stats.dt_s / SHORT_TAU_S)
        long = 1.0 - math.exp(-stats.dt_s / LONG_TAU_S)
        ttft_slack, tpot_slack = (feats[10], feats[11]) if cfg.extras else (0.0, 0.0)
        if not h.started or stats.dt_s <= 0:  # first observation of a run: start at the present
            h.started = True
            h.arrivals_short = h.arrivals_long = rate(stats.arrivals)
            h.tokens_short, h.waiting_short = rate(stats.generated_tokens), float(r.num_waiting)
            h.ttft_slack_short, h.tpot_slack_short = ttft_slack, tpot_slack
            h.pressure_s = now_s
        else:
            h.arrivals_short += short * (rate(stats.arrivals) - h.arrivals_short)
            h.arrivals_long += long * (rate(stats.arrivals) - h.arrivals_long)
            h.tokens_short += short * (rate(stats.generated_tokens) - h.tokens_short)
            h.waiting_short += short * (r.num_waiting - h.waiting_short)
            h.ttft_slack_short += short * (ttft_slack - h.ttft_slack_short)
            h.tpot_slack_short += short * (tpot_slack - h.tpot_slack_short)
        ttft_budget_s = slo.ttft_s or 1.0
        oldest_age = next((q.age_s for q in r.queue if q.remaining_prefill_tokens > 0), 0.0)
        if oldest_age > 0.5 * ttft_budget_s:
            h.pressure_s = now_s
        backlog_s = r.pending_prefill_tokens / r.prefill_tokens_per_s if r.prefill_tokens_per_s > 0 else 0.0
        return [
            min(h.arrivals_short / cfg.request_rate_scale, 1.0),
            min(h.arrivals_long / cfg.request_rate_scale, 1.0),
            min(h.tokens_short / cfg.token_rate_scale, 1.0),
            float(np.clip((r.num_waiting - h.waiting_short) / 50.0, -1, 1)),
            h.ttft_slack_short,
            h.tpot_slack_short,
            float(np.clip(backlog_s / ttft_budget_s, 0, 2)),
            min((now_s - h.pressure_s) / CALM_HORIZON_S, 1.0),
        ]

    def _extras(self, r: ReplicaState, stats: IntervalStats, arrivals_per_s: float) -> list[float]:
        slo, space = self.slo, self.action_space
        ttft_slack = float(np.clip(1.0 - r.recent_ttft_s / slo.ttft_s, -1, 1)) if slo.ttft_s else 0.0
        if slo.tpot_s and stats.inter_token_s > 0:
            tpot_slack = float(np.clip(1.0 - stats.inter_token_s / slo.tpot_s, -1, 1))
        else:
            tpot_slack = 1.0 if slo.tpot_s else 0.0
        oldest_age = next((q.age_s for q in r.queue if q.remaining_prefill_tokens > 0), 0.0)
        oldest = float(np.clip(oldest_age / slo.ttft_s, 0, 2)) if slo.ttft_s else 0.0
        span = space.max_clock_mhz - space.min_clock_mhz
        clock = (r.sm_clock_mhz - space.min_clock_mhz) / span if span > 0 else 1.0
        return [
            ttft_slack,
            tpot_slack,
            oldest,
            float(np.clip(clock, 0, 1)),
            min(r.concurrency_cap / space.max_cap, 1.0),
            min(arrivals_per_s / self.config.request_rate_scale, 1.0),
        ]


@dataclass
class _History:
    """Moving averages behind the history features (set from the first observation of a run)."""

    started: bool = False
    arrivals_short: float = 0.0
    arrivals_long: float = 0.0
    tokens_short: float = 0.0
    waiting_short: float = 0.0
    ttft_slack_short: float = 0.0
    tpot_slack_short: float = 0.0
    pressure_s: float = 0.0  # last time the oldest request had waited more than half the TTFT SLO
