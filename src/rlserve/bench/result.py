"""The benchmark result file: the seed's telemetry blocks plus metrics, per-request arrays and run metadata.

Top level (JSON object), first what ``vllm bench serve`` writes, with its keys and units, so scripts that read
vLLM's results read ours::

    schema, schema_version
    date, endpoint_type, backend, label, model_id, tokenizer_id, num_prompts, <--metadata KEY=VALUE>,
    request_rate, burstiness, max_concurrency, [ramp_up_strategy, ramp_up_start_rps, ramp_up_end_rps]
    <BenchmarkMetrics fields>                    duration, completed, request_throughput, mean_ttft_ms, p99_itl_ms ...
    latencies, queue_times                       per request (s); with --save-detailed also vLLM's input_lens,
                                                 output_lens, ttfts, itls, start_times, generated_texts, errors
    metadata{...}                                ours: host, versions, dataset, seed, argv (credentials masked)
    energy{...}                                  ours: J per token by source and phase, method and error bounds
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
import os
import platform
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlserve import __version__
from rlserve.bench.metrics import BenchmarkMetrics
from rlserve.bench.runner import BenchRun
from rlserve.errors import ConfigError, InputError

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


VLLM_DETAILED_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "start_times", "generated_texts", "errors")
"""Per-request lists vLLM writes only with ``--save-detailed`` (``latencies`` and ``queue_times`` it always writes)."""


def vllm_request_lists(run: BenchRun, detailed: bool) -> dict[str, list[Any]]:
    """vLLM's per-request lists, in its units (seconds; ``start_times`` from the run start, not vLLM's
    process-local ``perf_counter`` origin); failed requests carry vLLM's zeros."""
    outs = run.outputs
    lists: dict[str, list[Any]] = {
        "latencies": [o.latency_s if o.success else 0.0 for o in outs],
        "queue_times": [o.send_s - float(s) for o, s in zip(outs, run.scheduled_s, strict=True)],
    }
    if detailed:
        lists.update({
            "input_lens": [o.prompt_tokens for o in outs],
            "output_lens": [o.output_tokens for o in outs],
            "ttfts": [o.ttft_s if o.success else 0.0 for o in outs],
            "itls": [list(o.itl_s) for o in outs],
            "start_times": [o.send_s - run.start_s for o in outs],
            "generated_texts": [o.generated_text for o in outs],
            "errors": [o.error for o in outs],
        })
    return lists


def build_result(run: BenchRun, metrics: BenchmarkMetrics, telemetry: dict[str, Any] | None,
                 header: dict[str, Any], metadata: dict[str, Any], *, user_metadata: dict[str, str] | None = None,
                 energy: dict[str, Any] | None = None, save_detailed: bool = False) -> dict[str, Any]:
    """Assemble the result object in vLLM's layout, then ours.

    ``header`` is vLLM's run description (``date``, ``backend``, ``model_id``, ``request_rate``...);
    ``user_metadata`` the ``--metadata KEY=VALUE`` pairs, written at the top level as vLLM does (the measured
    keys win a clash, as there); ``metadata`` our description of the run (host, versions, dataset, seed, argv);
    ``telemetry`` is :meth:`Recorder.result_sections` or ``None``; ``energy`` the :mod:`rlserve.bench.energy`
    report.
    """
    sections = telemetry or {k: None for k in (*SEED_KEYS, "telemetry")}
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rlserve_version": __version__,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "model": run.model,
        **metadata,
    }
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **header, **(user_metadata or {}),
            **metrics.to_dict(), **vllm_request_lists(run, save_detailed), "metadata": meta, "energy": energy,
            **sections, "requests": request_arrays(run)}


MAX_NAME_PART = 80
"""Longest model-id part of a generated file name: names must stay under the 255-byte limit of file systems."""


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)[:MAX_NAME_PART] or "x"


def result_filename(header: dict[str, Any]) -> str:
    """vLLM's default name, ``<label>-<rate>qps[-concurrency<N>]-<model>-<date>.json`` (ramp-up:
    ``<label>-ramp-up-<strategy>-<start>qps-<end>qps...``), with path-unsafe characters replaced and each part
    bounded so a long model name cannot make an unwritable file name."""
    label = _safe(str(header.get("label") or header.get("backend") or "rlserve"))
    model = _safe(str(header.get("model_id") or "model").rstrip("/").split("/")[-1])
    conc = f"-concurrency{header['max_concurrency']}" if header.get("max_concurrency") is not None else ""
    if header.get("ramp_up_strategy"):
        rate = (f"ramp-up-{_safe(str(header['ramp_up_strategy']))}-{header['ramp_up_start_rps']:g}qps-"
                f"{header['ramp_up_end_rps']:g}qps")
    else:
        r = header.get("request_rate", "inf")
        rate = f"{r:g}qps" if isinstance(r, float | int) else f"{_safe(str(r))}qps"
    date = _safe(str(header.get("date") or time.strftime("%Y%m%d-%H%M%S")))
    return f"{label}-{rate}{conc}-{model}-{date}.json"


def check_output_path(result_dir: Path, filename: str | None) -> Path | None:
    """Check, before anything is sent, that results can be written: the directory exists or can be made and is
    writable, and ``filename`` (when given) stays inside it and is not a directory. Returns the resolved path
    (``None`` when the name is generated after the run). :class:`ConfigError` otherwise."""
    if result_dir.exists() and not result_dir.is_dir():
        raise ConfigError(f"--result-dir {result_dir} is a file, not a directory")
    try:
        result_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=result_dir, prefix=".rlserve-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"--result-dir {result_dir}: cannot write there ({e.strerror})") from None
    if filename is None:
        return None
    root = result_dir.resolve()
    path = (root / filename).resolve()
    if root not in path.parents:
        raise ConfigError(f"--result-filename {filename!r} must name a file inside --result-dir {result_dir}")
    if path.is_dir():
        raise ConfigError(f"--result-filename {filename!r}: {path} is a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"--result-filename {filename!r}: directory {path.parent} does not exist")
    if len(path.name.encode()) > 255:
        raise ConfigError(f"--result-filename is {len(path.name.encode())} bytes long; file names stop at 255")
    return path


def save_result(result: dict[str, Any], path: str | Path, append: bool = False) -> Path:
    """Write atomically (temp file + rename); NaN is written as ``null``. ``append``: add the result as one more
    JSON line to what the file holds (vLLM's ``--append-result``), still through a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if append:
        old = path.read_text() if path.is_file() else ""
        text = old + ("\n" if old and not old.endswith("\n") else "") + json.dumps(_json_safe(result),
                                                                                   allow_nan=False) + "\n"
    else:
        text = json.dumps(_json_safe(result), indent=1, allow_nan=False)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # leave no partial file behind
        raise
    return path


def save_result_safely(result: dict[str, Any], path: Path, append: bool = False) -> tuple[Path, str | None]:
    """:func:`save_result`, and when that fails after a finished run (disk full, the directory removed meanwhile),
    a fallback file in the system's temp directory, so the numbers are never lost. Returns the path written and
    the reason the first choice failed (``None`` when it did not)."""
    try:
        return save_result(result, path, append), None
    except OSError as e:
        fallback = Path(tempfile.gettempdir()) / f"rlserve-bench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        return save_result(result, fallback), f"{path}: {e.strerror or e}"


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
    """Read a result file (the last result of an ``--append-result`` file of JSON lines); :class:`InputError`
    when it is not JSON or not a benchmark result."""
    path = Path(path)
    try:
        text = path.read_text()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            if len(lines) < 2:
                raise
            data = json.loads(lines[-1])
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
