"""The benchmark result file: the seed's telemetry blocks plus metrics, per-request arrays and run metadata.

Top level (JSON object)::

    schema, schema_version, metadata{...}       what ran, where, with which flags and seed
    <BenchmarkMetrics fields>                    completed, mean_ttft_ms, ... (flat, as vllm bench writes them)
    gpu_power_stats{"0": {...}}                  seed schema; null without NVML
    cpu_power_stats{...}                         seed schema; cpu_power_source "rapl" | "unavailable"
    kv_cache_monitoring_stats{avg_stats, detailed_stats{cache_usage, static_config}, trace,
                              monitoring_interval_seconds, samples_collected, gaps}
    telemetry{gpu, vllm}                         sources, availability, gap counts
    requests{...}                                per-request arrays (one entry per request, dataset order)

:func:`validate_result` repeats the seed's checks (sample counts, GPU:KV ratio, empty traces) and adds ours
(failed requests, monitor gaps, energy source).
"""

from __future__ import annotations

import json
import math
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlserve import __version__
from rlserve.bench.metrics import BenchmarkMetrics
from rlserve.bench.runner import BenchRun
from rlserve.errors import InputError

SCHEMA = "rlserve-bench-result"
SCHEMA_VERSION = 1
SEED_KEYS = ("gpu_power_stats", "cpu_power_stats", "kv_cache_monitoring_stats")
# A scrape now and then delayed by a busy host is normal; losing more than this share of samples is not.
GAP_PROBLEM_FRACTION = 0.1


def _none_if_nan(x: float) -> float | None:
    return x if math.isfinite(x) else None


def request_arrays(run: BenchRun) -> dict[str, list[Any]]:
    """Per-request arrays; times in seconds from the run start (``None`` where the request never got there)."""
    t0 = run.start_s

    def rel(x: float) -> float | None:
        return round(x - t0, 6) if math.isfinite(x) else None

    outs = run.outputs
    return {
        "scheduled_s": [round(float(s) - t0, 6) for s in run.scheduled_s],
        "send_s": [rel(o.send_s) for o in outs],
        "first_token_s": [rel(o.first_token_s) for o in outs],
        "finish_s": [rel(o.finish_s) for o in outs],
        "ttft_s": [_none_if_nan(o.ttft_s) if o.success else None for o in outs],
        "e2el_s": [_none_if_nan(o.latency_s) if o.success else None for o in outs],
        "itl_s": [[round(x, 6) for x in o.itl_s] for o in outs],
        "prompt_tokens": [o.prompt_tokens for o in outs],
        "output_tokens": [o.output_tokens for o in outs],
        "success": [o.success for o in outs],
        "error": [o.error for o in outs],
    }


def build_result(run: BenchRun, metrics: BenchmarkMetrics, telemetry: dict[str, Any] | None,
                 metadata: dict[str, Any]) -> dict[str, Any]:
    """Assemble the result object (``telemetry`` is :meth:`Recorder.result_sections` or ``None``)."""
    sections = telemetry or {k: None for k in (*SEED_KEYS, "telemetry")}
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rlserve_version": __version__,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "model": run.model,
        **metadata,
    }
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "metadata": meta, **metrics.to_dict(),
            **sections, "requests": request_arrays(run)}


def result_filename(metadata: dict[str, Any]) -> str:
    """``<model>-<dataset>-<rate>qps-<timestamp>.json`` with path-unsafe characters replaced."""
    model = str(metadata.get("model", "model")).rstrip("/").split("/")[-1]
    name = f"{model}-{metadata.get('dataset_name', 'data')}-{metadata.get('request_rate', 'inf')}qps-" \
           f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def save_result(result: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file + rename); NaN is written as ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def _json_safe(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result file; :class:`InputError` when it is not JSON or not a benchmark result."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read a JSON result ({exc})") from exc
    if not isinstance(data, dict) or not any(k in data for k in SEED_KEYS):
        raise InputError(f"{path}: not a benchmark result (none of {', '.join(SEED_KEYS)} present)")
    return data


@dataclass
class ValidationReport:
    """Lines to print; ``problems`` are the ones that make the result suspect (non-zero exit)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        """Record an informational line."""
        self.lines.append(line)

    def problem(self, line: str) -> None:
        """Record a problem (also shown among the lines)."""
        self.lines.append(f"PROBLEM: {line}")
        self.problems.append(line)


def validate_result(data: dict[str, Any]) -> ValidationReport:
    """The seed's checks plus ours on a loaded result."""
    r = ValidationReport()
    completed, failed = data.get("completed"), data.get("failed")
    if completed is not None:
        r.ok(f"requests: {completed} completed, {failed} failed")
        if not completed:
            r.problem("no request completed")
        elif failed:
            r.problem(f"{failed} requests failed (see requests.error)")
    gpu = data.get("gpu_power_stats") or {}
    kv = data.get("kv_cache_monitoring_stats")
    gpu_samples = {gid: len(s.get("power_trace") or []) for gid, s in gpu.items()}
    gpu_info = (data.get("telemetry") or {}).get("gpu") or {}
    if gpu_samples:
        for gid, n in gpu_samples.items():
            src = gpu[gid].get("energy_source")
            r.ok(f"GPU {gid}: {n} samples, avg {gpu[gid].get('avg_power_w')} W, energy {gpu[gid].get('energy_j')} J "
                 f"({src}), power changed in {gpu[gid].get('power_changes')} samples")
            if n == 0:
                r.problem(f"GPU {gid} power trace is empty")
    elif gpu_info.get("available") is False:
        r.ok(f"GPU: not measured ({gpu_info.get('reason')})")
    else:
        r.ok("GPU: not monitored")
    cpu = data.get("cpu_power_stats")
    if cpu:
        r.ok(f"CPU: {cpu.get('samples')} samples, power source {cpu.get('cpu_power_source')}"
             + (f", avg {cpu.get('avg_power_w')} W" if cpu.get("cpu_power_source") == "rapl" else ""))
        if not cpu.get("samples"):
            r.problem("CPU trace is empty")
    if kv is not None:
        n_kv = int(kv.get("samples_collected") or 0)
        gaps = (kv.get("gaps") or {}).get("count", 0)
        avg = (kv.get("avg_stats") or {}).get("avg_cache_usage_perc")
        r.ok(f"KV cache: {n_kv} samples at {kv.get('monitoring_interval_seconds')} s, {gaps} gaps, "
             f"avg usage {avg if avg is None else round(avg, 2)} %")
        if n_kv == 0:
            r.problem("no KV cache samples collected; check the server's /metrics endpoint")
        if gaps > GAP_PROBLEM_FRACTION * (n_kv + gaps):
            r.problem(f"KV monitor missed {gaps} of {n_kv + gaps} samples: {(kv.get('gaps') or {}).get('by_reason')}")
        if gpu_samples and n_kv:
            kv_iv = kv.get("monitoring_interval_seconds") or math.nan
            gpu_iv = gpu_info.get("monitoring_interval_seconds") or math.nan
            expected = kv_iv / gpu_iv
            for gid, n in gpu_samples.items():
                r.ok(f"GPU {gid}:KV sample ratio {n / n_kv:.1f}:1 (expected ~{expected:.0f}:1)")
                if n / n_kv < 0.5 * expected:
                    r.problem(f"GPU {gid} has far fewer samples than expected: the GPU monitor fell behind")
    else:
        r.ok("KV cache: not monitored (run with --enable-kv-trace)")
    return r
