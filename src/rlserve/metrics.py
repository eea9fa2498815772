"""Request records and their aggregates, shared by the simulator and the benchmark client.

Both worlds produce the same :class:`RequestRecords` (one row per request, NaN where a time is unknown, e.g.
a request that failed or never finished) and summarise it with the same functions, so a simulated run and a
real benchmark are compared on identical definitions:

- TTFT = first token - arrival; E2E = finish - arrival; queueing = first scheduled - arrival;
- TPOT = (finish - first token) / (output tokens - 1), undefined (NaN) for single-token outputs;
- a request meets the SLO when every configured threshold holds; goodput = SLO-meeting requests per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

from rlserve.errors import ConfigError
from rlserve.outputs import write_atomic
from rlserve.validation import parse_config

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class Slo:
    """Latency service-level objectives in seconds; ``None`` = not constrained."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and not v > 0:
                raise ConfigError(f"SLO {f.name} must be > 0 seconds, got {v!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "slo") -> Slo:
        """Build from ``{"ttft_s": .., "tpot_s": .., "e2e_s": ..}`` (missing keys = unconstrained), validated
        (:func:`rlserve.validation.parse_config`)."""
        return parse_config(cls, dict(d) if isinstance(d, Mapping) else d, source)

    def met(self, ttft_s: np.ndarray, tpot_s: np.ndarray, e2e_s: np.ndarray) -> np.ndarray:
        """Boolean mask of requests meeting every threshold (a NaN TPOT, i.e. one output token, passes TPOT)."""
        ok = np.isfinite(ttft_s) & np.isfinite(e2e_s)
        with np.errstate(invalid="ignore"):
            if self.ttft_s is not None:
                ok &= ttft_s <= self.ttft_s
            if self.tpot_s is not None:
                ok &= ~(tpot_s > self.tpot_s)
            if self.e2e_s is not None:
                ok &= e2e_s <= self.e2e_s
        return ok


@dataclass
class RequestRecords:
    """Per-request outcomes as columns (float64 seconds, NaN = unknown; ints as int64)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    replica: np.ndarray  # -1 = never dispatched
    first_scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    preemptions: np.ndarray
    energy_j: np.ndarray  # the request's share of busy GPU energy (NaN where not measured)

    @property
    def finished(self) -> np.ndarray:
        """Mask of requests that completed."""
        return np.isfinite(self.finish_s)

    @property
    def ttft_s(self) -> np.ndarray:
        """Time to first token."""
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        """End-to-end latency."""
        return self.finish_s - self.arrival_s

    @property
    def queueing_s(self) -> np.ndarray:
        """Wait before the request was first scheduled."""
        return self.first_scheduled_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Mean time per output token after the first (NaN for one-token outputs)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            steps = (self.output_tokens - 1).astype(np.float64)
            return np.where(steps > 0, (self.finish_s - self.first_token_s) / np.maximum(steps, 1), np.nan)

    def columns(self) -> dict[str, np.ndarray]:
        """Stored and derived columns, in a fixed order (the Parquet/CSV schema)."""
        cols = {f.name: getattr(self, f.name) for f in fields(self)}
        cols.update(ttft_s=self.ttft_s, tpot_s=self.tpot_s, e2e_s=self.e2e_s, queueing_s=self.queueing_s)
        return cols

    def to_parquet(self, path: str | Path) -> None:
        """Write one row per request (request id = row index), atomically (a reader never sees half a file)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"request_id": np.arange(len(self.arrival_s))} | self.columns())
        write_atomic(path, lambda f: pq.write_table(table, f))


def distribution(values: Iterable[float] | np.ndarray, percentiles: Iterable[float] = DEFAULT_PERCENTILES,
                 scale: float = 1.0) -> dict[str, float]:
    """Mean, std, min, max and percentiles of the finite values (all NaN when there are none).

    Keys: ``mean``, ``std``, ``min``, ``max``, ``median`` and ``p<q>`` (``p99``, ``p99.9``).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)] * scale
    qs = list(percentiles)
    keys = ["mean", "std", "min", "max", "median"] + [f"p{q:g}" for q in qs]
    if v.size == 0:
        return dict.fromkeys(keys, float("nan"))
    pct = np.percentile(v, [50.0, *qs])
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
           "median": float(pct[0])}
    out.update({f"p{q:g}": float(p) for q, p in zip(qs, pct[1:], strict=True)})
    return out


def weighted_distribution(values: np.ndarray, weights: np.ndarray,
                          percentiles: Iterable[float] = DEFAULT_PERCENTILES) -> dict[str, float]:
    """:func:`distribution` of ``values`` where value ``i`` occurs ``weights[i]`` times (the inverted-CDF
    percentile: the smallest value with at least q% of the weight at or below it)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(v) & (w > 0)
    v, w = v[keep], w[keep]
    qs = list(percentiles)
    keys = ["mean", "std", "min", "max", "median"] + [f"p{q:g}" for q in qs]
    if v.size == 0:
        return dict.fromkeys(keys, float("nan"))
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    total = cum[-1]

    def pct(q: float) -> float:
        return float(v[min(int(np.searchsorted(cum, q / 100.0 * total - 1e-9 * total)), v.size - 1)])

    mean = float(np.dot(v, w) / total)
    out = {"mean": mean, "std": float(np.sqrt(np.dot(w, (v - mean) ** 2) / total)), "min": float(v[0]),
           "max": float(v[-1]), "median": pct(50.0)}
    out.update({f"p{q:g}": pct(q) for q in qs})
    return out


def mean_ci95(samples: Iterable[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval (0 for one sample)."""
    x = np.asarray(list(samples), dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), 0.0
    half = _scipy_stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(half)


@dataclass(frozen=True)
class Summary:
    """Aggregates of one run. Latencies in seconds; ``None`` where a quantity was not measured."""

    num_requests: int
    num_finished: int
    duration_s: float  # first arrival to last finish
    request_throughput_per_s: float
    output_token_throughput_per_s: float
    total_token_throughput_per_s: float
    ttft_s: dict[str, float]
    tpot_s: dict[str, float]
    e2e_s: dict[str, float]
    queueing_s: dict[str, float]
    slo_attainment: float  # fraction of ALL requests (unfinished count as misses)
    goodput_per_s: float
    preemptions_total: int
    requests_per_replica: list[int]
    energy_j: float | None = None
    energy_per_output_token_j: float | None = None
    energy_per_token_j: float | None = None  # per prompt + output token
    extra: dict[str, Any] | None = None  # world-specific aggregates (KV usage, utilisation, monitors...)
    itl_s: dict[str, float] | None = None  # per-token inter-token latency (gaps between consecutive tokens)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


def summarize(records: RequestRecords, slo: Slo, *, num_replicas: int, energy_j: float | None = None,
              percentiles: Iterable[float] = DEFAULT_PERCENTILES, extra: dict[str, Any] | None = None,
              itl: tuple[np.ndarray, np.ndarray] | None = None) -> Summary:
    """Aggregate per-request records into a :class:`Summary` (energy per token uses the given total energy).

    ``itl`` = (gaps in seconds, how many tokens had each gap): every inter-token gap of the run, so that
    iteration time hidden behind prefill stalls shows in the ITL tail (TPOT, a per-request mean, hides it).
    """
    qs = tuple(percentiles)
    done = records.finished
    n_done = int(done.sum())
    if n_done:
        start = float(np.nanmin(records.arrival_s))
        duration = float(np.nanmax(records.finish_s[done])) - start
    else:
        duration = 0.0
    out_tok = int(records.output_tokens[done].sum())
    all_tok = out_tok + int(records.prompt_tokens[done].sum())
    met = slo.met(records.ttft_s, records.tpot_s, records.e2e_s) & done
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
    replicas = records.replica[records.replica >= 0]
    return Summary(
        num_requests=len(records.arrival_s),
        num_finished=n_done,
        duration_s=duration,
        request_throughput_per_s=per_s(n_done),
        output_token_throughput_per_s=per_s(out_tok),
        total_token_throughput_per_s=per_s(all_tok),
        ttft_s=distribution(records.ttft_s[done], qs),
        tpot_s=distribution(records.tpot_s[done], qs),
        e2e_s=distribution(records.e2e_s[done], qs),
        queueing_s=distribution(records.queueing_s[done], qs),
        slo_attainment=float(met.sum() / len(met)) if len(met) else float("nan"),
        goodput_per_s=per_s(int(met.sum())),
        preemptions_total=int(records.preemptions.sum()),
        requests_per_replica=np.bincount(replicas.astype(np.int64), minlength=num_replicas).tolist(),
        energy_j=energy_j,
        energy_per_output_token_j=(energy_j / out_tok) if energy_j is not None and out_tok else None,
        energy_per_token_j=(energy_j / all_tok) if energy_j is not None and all_tok else None,
        extra=extra,
        itl_s=weighted_distribution(itl[0], itl[1], qs) if itl is not None else None,
    )
