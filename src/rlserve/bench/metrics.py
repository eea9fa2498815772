"""Benchmark metrics: ``calculate_metrics(run, ...) -> BenchmarkMetrics`` with unit-suffixed fields.

Aggregates use :mod:`rlserve.metrics` (the definitions the simulator uses): a request's arrival is its send
time, TTFT = first token - send, TPOT = (finish - first token) / (output tokens - 1), E2EL = finish - send,
goodput = SLO-meeting requests per second where failed requests count as misses. Added here: ITL (gaps between
streamed chunks), client scheduling lag (actual send - intended send), and energy: GPU energy from the NVML
counter window over the run, CPU energy from RAPL when measured, per request, per output token, and goodput
per joule (SLO-meeting requests per joule of measured energy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rlserve.bench.runner import BenchRun
from rlserve.errors import ConfigError
from rlserve.metrics import RequestRecords, Slo, distribution, summarize

METRIC_NAMES = ("ttft", "tpot", "itl", "e2el")
QUEUE_METRICS = ("client_queue_time", "e2el_including_client_queue")
"""vLLM's optional ``--percentile-metrics``: time a request waited client-side (schedule lag plus the
``--max-concurrency`` queue) and E2EL including it; reported only when selected, as vLLM does."""


def parse_goodput(specs: Sequence[str]) -> Slo:
    """``["ttft:500", "tpot:50", "e2el:10000"]`` (milliseconds, as ``vllm bench serve --goodput``) -> Slo."""
    keys = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2e_s"}
    values: dict[str, float] = {}
    for spec in specs:
        name, sep, ms = spec.partition(":")
        if not sep or name not in keys:
            raise ConfigError(f"--goodput {spec!r}: expected NAME:MS with NAME one of ttft, tpot, e2el")
        try:
            values[keys[name]] = float(ms) / 1000.0
        except ValueError:
            raise ConfigError(f"--goodput {spec!r}: {ms!r} is not a number of milliseconds") from None
    return Slo(**values)


@dataclass(frozen=True)
class BenchmarkMetrics:
    """Aggregates of one benchmark run under ``vllm bench serve``'s result keys and units (``None`` where not
    measured), plus ours: SLO attainment, client scheduling lag, probe latencies and energy.

    ``duration`` runs from the first send to the last completion (the shared definition), so throughputs
    exclude the idle tail of a schedule that ends with failures. ``latency_ms`` holds the flat latency keys
    (``mean_ttft_ms``, ``median_ttft_ms``, ``std_ttft_ms``, ``p99_ttft_ms`` for every metric, and ``p<q>_<metric>_ms``
    for ``--percentile-metrics`` x ``--metric-percentiles``), written at the top level of the result as vLLM does.
    """

    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    slo_attainment: float | None
    latency_ms: dict[str, float]
    mean_scheduling_lag_ms: float
    p99_scheduling_lag_ms: float
    probe: dict[str, float | int] | None
    """vLLM's ``probe_*`` keys when ``--probe-request-rate`` was set."""
    gpu_energy_j: float | None
    cpu_energy_j: float | None
    energy_j: float | None
    energy_per_request_j: float | None
    energy_per_output_token_j: float | None
    energy_per_total_token_j: float | None
    goodput_per_joule: float | None
    """SLO-meeting requests per joule of measured energy."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready flat dict in vLLM's layout (NaN -> None)."""
        d = asdict(self)
        flat = {k: v for k, v in d.items() if k not in ("latency_ms", "probe")}
        flat.update(d["latency_ms"])
        flat.update(d["probe"] or {})
        return _finite(flat)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def peaks(run: BenchRun) -> tuple[float, int]:
    """vLLM's ``max_output_tokens_per_s`` and ``max_concurrent_requests``: the busiest one-second bucket (from the
    first send) for tokens streamed and for requests in flight, over successful requests."""
    ok = [o for o in run.outputs if o.success]
    if not ok:
        return 0.0, 0
    t0 = min(o.send_s for o in ok)
    buckets = int(math.ceil(max(o.finish_s for o in ok) - t0)) + 1
    tokens = np.zeros(buckets)
    active = np.zeros(buckets)
    for o in ok:
        times = o.first_token_s + np.concatenate(([0.0], np.cumsum(o.itl_s)))
        idx = (times - t0).astype(np.int64)
        np.add.at(tokens, idx[(idx >= 0) & (idx < buckets)], 1)
        active[int(o.send_s - t0): int(o.finish_s - t0) + 1] += 1
    return float(tokens.max()), int(active.max())


def probe_stats(run: BenchRun) -> dict[str, float | int] | None:
    """``probe_completed``, ``probe_failed``, median/p99/max probe E2EL (ms), as vLLM reports them."""
    if not run.probes:
        return None
    lat = np.array([o.latency_s for o in run.probes if o.success], dtype=np.float64)
    out: dict[str, float | int] = {"probe_completed": int(lat.size), "probe_failed": len(run.probes) - int(lat.size)}
    if lat.size:
        out.update(probe_median_e2el_ms=float(np.median(lat)) * 1e3,
                   probe_p99_e2el_ms=float(np.percentile(lat, 99)) * 1e3, probe_max_e2el_ms=float(lat.max()) * 1e3)
    return out


def records_of(run: BenchRun) -> RequestRecords:
    """Per-request outcomes as the shared :class:`RequestRecords` (failed requests have NaN times)."""
    outs = run.outputs
    ok = np.array([o.success for o in outs], dtype=bool)
    n = len(outs)

    def times(attr: str) -> np.ndarray:
        t = np.array([getattr(o, attr) for o in outs], dtype=np.float64)
        return np.where(ok, t, np.nan)

    send = np.array([o.send_s for o in outs], dtype=np.float64)
    return RequestRecords(
        arrival_s=np.where(np.isfinite(send), send, run.scheduled_s),
        prompt_tokens=np.array([o.prompt_tokens for o in outs], dtype=np.int64),
        output_tokens=np.array([o.output_tokens if o.success else 0 for o in outs], dtype=np.int64),
        replica=np.zeros(n, np.int64),
        first_scheduled_s=np.full(n, np.nan),
        first_token_s=times("first_token_s"),
        finish_s=times("finish_s"),
        preemptions=np.zeros(n, np.int64),
        energy_j=np.full(n, np.nan),
    )


def calculate_metrics(run: BenchRun, slo: Slo | None = None,
                      percentile_metrics: Sequence[str] = ("ttft", "tpot", "itl"),
                      percentiles: Sequence[float] = (99.0,)) -> BenchmarkMetrics:
    """Aggregate a run. ``slo=None`` leaves goodput unmeasured (``None``)."""
    unknown = set(percentile_metrics) - set(METRIC_NAMES) - set(QUEUE_METRICS)
    if unknown:
        raise ConfigError(f"--percentile-metrics {sorted(unknown)} unknown; choose from "
                          f"{', '.join(METRIC_NAMES + QUEUE_METRICS)}")
    bad = [q for q in percentiles if not 0 <= q <= 100]
    if bad:
        raise ConfigError(f"--metric-percentiles must be in [0, 100], got {bad}")
    rec = records_of(run)
    m = run.measurement
    energy = m.energy_j if m is not None else None
    summary = summarize(rec, slo or Slo(), num_replicas=1, energy_j=energy)
    done = rec.finished
    itl = np.array([x for o in run.outputs if o.success for x in o.itl_s], dtype=np.float64)
    lag = np.array([o.send_s - s for o, s in zip(run.outputs, run.scheduled_s, strict=True)], dtype=np.float64)
    series = {"ttft": rec.ttft_s[done], "tpot": rec.tpot_s[done], "itl": itl, "e2el": rec.e2e_s[done]}
    queued = {"client_queue_time": lag[done], "e2el_including_client_queue": rec.e2e_s[done] + lag[done]}
    series.update({k: v for k, v in queued.items() if k in percentile_metrics})
    qs = tuple(percentiles)
    latency: dict[str, float] = {}
    for k, v in series.items():
        d = distribution(v, (*qs,) if k in QUEUE_METRICS else (99.0, *qs) if k in percentile_metrics else (99.0,),
                         scale=1000.0)
        latency.update({f"mean_{k}_ms": d["mean"], f"median_{k}_ms": d["median"], f"std_{k}_ms": d["std"]})
        latency.update({f"{name}_{k}_ms": d[name] for name in d if name.startswith("p")})
    lag_d = distribution(lag, (99.0,), scale=1000.0)
    n_done = summary.num_finished
    good = summary.slo_attainment * summary.num_requests if slo is not None else None
    max_tok_s, max_conc = peaks(run)
    return BenchmarkMetrics(
        completed=n_done,
        failed=summary.num_requests - n_done,
        duration=summary.duration_s,
        total_input_tokens=int(rec.prompt_tokens[done].sum()),
        total_output_tokens=int(rec.output_tokens[done].sum()),
        request_throughput=summary.request_throughput_per_s,
        request_goodput=summary.goodput_per_s if slo is not None else None,
        output_throughput=summary.output_token_throughput_per_s,
        total_token_throughput=summary.total_token_throughput_per_s,
        max_output_tokens_per_s=max_tok_s,
        max_concurrent_requests=max_conc,
        slo_attainment=summary.slo_attainment if slo is not None else None,
        latency_ms=latency,
        mean_scheduling_lag_ms=lag_d["mean"],
        p99_scheduling_lag_ms=lag_d["p99"],
        probe=probe_stats(run),
        gpu_energy_j=m.gpu_energy_j if m is not None else None,
        cpu_energy_j=m.cpu_energy_j if m is not None else None,
        energy_j=energy,
        energy_per_request_j=energy / n_done if energy is not None and n_done else None,
        energy_per_output_token_j=summary.energy_per_output_token_j,
        energy_per_total_token_j=summary.energy_per_token_j,
        goodput_per_joule=good / energy if good is not None and energy else None,
    )
