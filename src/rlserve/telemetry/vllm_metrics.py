"""vLLM ``/metrics`` monitor: KV cache, queue and throughput counters in correct units.

vLLM reports ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` before v0.10) as a **fraction in
[0, 1]** despite the name, so used blocks are ``usage * num_gpu_blocks`` (the seed's ``total * usage / 100`` was
100x too small). Block count and size come from the static ``vllm:cache_config_info`` labels.

Rates (requests/s, tokens/s, prefix-cache hit rate) are differences of counters over a trailing ``rate_window_s``
window of samples rather than between two consecutive 0.5 s scrapes, which are too noisy to steer on; a counter
that went backwards (server restarted) yields NaN instead of a negative rate.

The default interval is 0.5 s: vLLM's gauges change per scheduler step but scraping is an HTTP request the server
must answer, and the controller acts on second-scale trends.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from rlserve.errors import BackendError
from rlserve.metrics import distribution
from rlserve.telemetry.monitor import Gap, Monitor, finite_or_none, gap_summary

DEFAULT_KV_INTERVAL_S = 0.5
KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_COUNTERS = {
    "vllm:num_preemptions_total": "num_preemptions_total",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits_total",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
    "vllm:request_success_total": "request_success_total",
}
_GAUGES = {"vllm:num_requests_running": "num_requests_running", "vllm:num_requests_waiting": "num_requests_waiting"}


class MetricsParseError(BackendError):
    """The server answered ``/metrics`` with something that is not vLLM Prometheus text."""

    gap_reason = "garbage"


@dataclass(frozen=True)
class VllmMetrics:
    """One parse of ``/metrics``: gauges, cumulative counters (NaN when the server does not export them) and
    the static cache config (``None`` when ``cache_config_info`` is absent)."""

    kv_cache_usage: float  # fraction in [0, 1]
    num_requests_running: float
    num_requests_waiting: float
    num_preemptions_total: float = math.nan
    prefix_cache_queries_total: float = math.nan
    prefix_cache_hits_total: float = math.nan
    prompt_tokens_total: float = math.nan
    generation_tokens_total: float = math.nan
    request_success_total: float = math.nan
    num_gpu_blocks: int | None = None
    block_size: int | None = None


@dataclass(frozen=True)
class VllmSample(VllmMetrics):
    """A timestamped scrape plus rates over the monitor's trailing window (NaN until two samples exist)."""

    t_s: float = 0.0
    request_throughput_per_s: float = math.nan
    prompt_tokens_per_s: float = math.nan
    generation_tokens_per_s: float = math.nan
    prefix_cache_hit_rate: float = math.nan  # hits / queries over the window

    @property
    def used_blocks(self) -> float | None:
        """KV blocks in use (``usage * num_gpu_blocks``); ``None`` without the cache config."""
        return None if self.num_gpu_blocks is None else self.kv_cache_usage * self.num_gpu_blocks

    @property
    def free_blocks(self) -> float | None:
        """KV blocks free; ``None`` without the cache config."""
        used = self.used_blocks
        return None if used is None or self.num_gpu_blocks is None else self.num_gpu_blocks - used

    @property
    def used_tokens(self) -> float | None:
        """Token slots held by used blocks (``used_blocks * block_size``)."""
        used = self.used_blocks
        return None if used is None or self.block_size is None else used * self.block_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for the recorder log)."""
        return asdict(self)


def _int_label(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:  # vLLM writes "None" before the engine has profiled memory
        return None


def parse_vllm_metrics(text: str) -> VllmMetrics:
    """Parse vLLM's Prometheus text, summing over label sets (engines, finish reasons, models).

    KV usage is averaged over engines (each has its own cache). Raises :class:`MetricsParseError` when the text
    is not Prometheus or lacks the KV-usage and queue gauges.
    """
    sums: dict[str, float] = {}
    usage: list[float] = []
    blocks: int | None = None
    block_size: int | None = None
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in KV_USAGE_NAMES:
                    usage.append(float(s.value))
                elif s.name in _GAUGES or s.name in _COUNTERS:
                    sums[s.name] = sums.get(s.name, 0.0) + float(s.value)
                elif s.name == "vllm:cache_config_info" and blocks is None:
                    blocks = _int_label(s.labels.get("num_gpu_blocks"))
                    block_size = _int_label(s.labels.get("block_size"))
    except ValueError as exc:
        raise MetricsParseError(f"/metrics is not Prometheus text ({exc})") from exc
    missing = [n for n in _GAUGES if n not in sums]
    if not usage or missing:
        raise MetricsParseError(f"/metrics lacks vLLM gauges {missing or list(KV_USAGE_NAMES)}; is this vLLM?")
    fields = {short: sums.get(name, math.nan) for name, short in {**_GAUGES, **_COUNTERS}.items()}
    return VllmMetrics(kv_cache_usage=float(np.mean(usage)), num_gpu_blocks=blocks, block_size=block_size,
                       **fields)


def _rate(new: float, old: float, dt_s: float) -> float:
    if not (dt_s > 0 and math.isfinite(new) and math.isfinite(old)) or new < old:
        return math.nan
    return (new - old) / dt_s


def with_rates(m: VllmMetrics, t_s: float, ref: VllmSample | None) -> VllmSample:
    """Attach counter rates relative to an older sample ``ref`` (NaN without one)."""
    base = asdict(m)
    if ref is None:
        return VllmSample(**base, t_s=t_s)
    dt = t_s - ref.t_s
    dq = m.prefix_cache_queries_total - ref.prefix_cache_queries_total
    dh = m.prefix_cache_hits_total - ref.prefix_cache_hits_total
    return VllmSample(
        **base, t_s=t_s,
        request_throughput_per_s=_rate(m.request_success_total, ref.request_success_total, dt),
        prompt_tokens_per_s=_rate(m.prompt_tokens_total, ref.prompt_tokens_total, dt),
        generation_tokens_per_s=_rate(m.generation_tokens_total, ref.generation_tokens_total, dt),
        prefix_cache_hit_rate=dh / dq if dq > 0 and dh >= 0 else math.nan,
    )


class VllmMetricsMonitor(Monitor[VllmSample]):
    """Scrapes ``{base_url}/metrics`` every ``interval_s``; down/slow/garbage answers become counted gaps."""

    name = "vllm"

    def __init__(self, base_url: str, interval_s: float = DEFAULT_KV_INTERVAL_S, timeout_s: float = 1.0,
                 rate_window_s: float = 5.0) -> None:
        super().__init__(interval_s)
        self.base_url = base_url.rstrip("/")
        self.rate_window_s = rate_window_s
        self.timeout_s = timeout_s
        self._client: httpx.Client | None = None  # opened on first use, closed by stop()
        self._times: list[float] = []  # t_s of the trace, for the trailing-window lookup

    def _sample(self, t_s: float) -> VllmSample:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)
        try:
            resp = self._client.get(f"{self.base_url}/metrics")
        except httpx.TimeoutException as exc:
            raise _gap("timeout", f"{self.base_url}/metrics timed out") from exc
        except httpx.HTTPError as exc:
            raise _gap("unreachable", f"{self.base_url}/metrics: {exc}") from exc
        if resp.status_code != 200:
            raise _gap("http_error", f"{self.base_url}/metrics answered HTTP {resp.status_code}")
        metrics = parse_vllm_metrics(resp.text)
        trace = self.trace()
        i = bisect_right(self._times, t_s - self.rate_window_s)
        ref = trace[max(0, i - 1)] if trace else None
        sample = with_rates(metrics, t_s, ref)
        self._times.append(t_s)
        return sample

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def static_info(self) -> dict[str, Any]:
        """Where the metrics come from."""
        return {"base_url": self.base_url, "rate_window_s": self.rate_window_s}


def _gap(reason: str, message: str) -> BackendError:
    exc = BackendError(message)
    exc.gap_reason = reason  # type: ignore[attr-defined]
    return exc


def kv_cache_stats(samples: Sequence[VllmSample], gaps: Sequence[Gap], interval_s: float, t0_s: float,
                   percentiles: Sequence[float] = (25.0, 75.0, 95.0)) -> dict[str, Any]:
    """The seed's ``kv_cache_monitoring_stats`` block, in correct units.

    Usage is reported in percent (``cache_usage`` 0-100, as the seed's JSON shows) computed from the [0, 1]
    fraction; blocks and tokens are counts. ``trace.t_s`` is seconds since ``t0_s`` (the run start), on the same
    clock as the GPU/CPU traces.
    """
    n = len(samples)
    usage_pct = np.array([s.kv_cache_usage * 100.0 for s in samples], dtype=np.float64)

    def col(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    used = col([s.used_blocks for s in samples])
    free = col([s.free_blocks for s in samples])
    used_tok = col([s.used_tokens for s in samples])
    running = np.array([s.num_requests_running for s in samples], dtype=np.float64)
    waiting = np.array([s.num_requests_waiting for s in samples], dtype=np.float64)
    last = samples[-1] if samples else None
    first = samples[0] if samples else None

    def mean(x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else None

    def delta(attr: str) -> float | None:
        if first is None or last is None:
            return None
        d = getattr(last, attr) - getattr(first, attr)
        return float(d) if math.isfinite(d) and d >= 0 else None

    dist = distribution(usage_pct, percentiles)
    cache_usage = {k: (v if math.isfinite(v) else None) for k, v in dist.items()}
    blocks = last.num_gpu_blocks if last else None
    bsize = last.block_size if last else None
    queries, hits = delta("prefix_cache_queries_total"), delta("prefix_cache_hits_total")
    return {
        "avg_stats": {
            "avg_cache_usage_perc": mean(usage_pct),
            "avg_used_blocks": mean(used),
            "avg_free_blocks": mean(free),
            "avg_used_tokens": mean(used_tok),
            "avg_requests_running": mean(running),
            "avg_requests_waiting": mean(waiting),
        },
        "detailed_stats": {
            "cache_usage": cache_usage,
            "static_config": {
                "total_gpu_blocks": blocks,
                "block_size": bsize,
                "tokens_per_block": bsize,
                "total_kv_cache_tokens": blocks * bsize if blocks is not None and bsize is not None else None,
                # Model geometry is not in /metrics; kept for the seed's schema, filled by callers that know it.
                "num_layers": None,
                "num_kv_heads": None,
                "head_size": None,
            },
            "num_preemptions": delta("num_preemptions_total"),
            "prefix_cache_queries": queries,
            "prefix_cache_hits": hits,
            "prefix_cache_hit_rate": hits / queries if hits is not None and queries else None,
            "max_requests_running": float(running.max()) if n else None,
            "max_requests_waiting": float(waiting.max()) if n else None,
        },
        "trace": {
            "t_s": [round(s.t_s - t0_s, 6) for s in samples],
            "cache_usage": usage_pct.tolist(),
            "used_blocks": finite_or_none(used),
            "free_blocks": finite_or_none(free),
            "used_tokens": finite_or_none(used_tok),
            "requests_running": running.tolist(),
            "requests_waiting": waiting.tolist(),
            "num_preemptions_total": finite_or_none(col([s.num_preemptions_total for s in samples])),
        },
        "monitoring_interval_seconds": interval_s,
        "samples_collected": n,
        "gaps": gap_summary(gaps),
    }

