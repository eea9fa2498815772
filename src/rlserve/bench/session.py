"""One benchmark point, from its specification to its result: what ``rlserve bench`` runs once and
``rlserve bench sweep`` runs per load point, so both share one implementation below the CLI.

:class:`BenchSpec` is everything a run needs (dataset, load, server, SLOs, monitors, labels); :func:`run_point`
samples the dataset and schedule from the seed, runs the load with the monitors, and returns the metrics and the
result object (vLLM's keys first, then ours). Nothing is written here: the caller checks and writes paths.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlserve.bench import result as result_file
from rlserve.bench.datasets import DatasetConfig, sample_dataset
from rlserve.bench.energy import energy_report
from rlserve.bench.metrics import BenchmarkMetrics, calculate_metrics
from rlserve.bench.redact import redact_argv, redact_url
from rlserve.bench.request import RequestOutput
from rlserve.bench.runner import BenchRun, RampUp, RunnerConfig, arrival_schedule, run_benchmark
from rlserve.errors import ConfigError
from rlserve.metrics import Slo
from rlserve.telemetry.cpu import CpuMonitor
from rlserve.telemetry.gpu import DEFAULT_GPU_INTERVAL_S, GpuMonitor, NullGpuMonitor
from rlserve.telemetry.recorder import Recorder
from rlserve.telemetry.vllm_metrics import DEFAULT_KV_INTERVAL_S, VllmMetricsMonitor

SELF_TIMED_DATASETS = ("timed_trace",)
"""Datasets replayed at their own times unless ``--no-self-timed`` (vLLM's default for ``timed_trace``)."""


@dataclass(frozen=True)
class MonitorSpec:
    """Which monitors run beside the load (``--gpu-ids``, ``--monitor-cpu``, ``--enable-kv-trace``)."""

    gpu: Callable[[], GpuMonitor | NullGpuMonitor] | None = None
    gpu_interval_s: float = DEFAULT_GPU_INTERVAL_S
    cpu: bool = False
    kv_trace: bool = False
    kv_interval_s: float = DEFAULT_KV_INTERVAL_S

    def recorder(self, base_url: str) -> Recorder:
        """A fresh recorder (monitors keep their samples, so every point gets its own)."""
        return Recorder(vllm=VllmMetricsMonitor(base_url, self.kv_interval_s) if self.kv_trace else None,
                        gpu=self.gpu() if self.gpu is not None else None,
                        cpu=CpuMonitor(self.gpu_interval_s) if self.cpu else None)  # the seed samples CPU with GPU


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark point (see ``rlserve bench --help`` for each field's flag)."""

    dataset: DatasetConfig
    runner: RunnerConfig
    request_rate: float = math.inf
    burstiness: float = 1.0
    ramp_up: RampUp | None = None
    self_timed: bool | None = None
    """Send at the dataset's own times; ``None``: yes for :data:`SELF_TIMED_DATASETS`."""
    seed: int = 0
    slo: Slo | None = None
    percentile_metrics: tuple[str, ...] = ("ttft", "tpot", "itl")
    metric_percentiles: tuple[float, ...] = (99.0,)
    monitors: MonitorSpec = MonitorSpec()
    backend: str = "openai"
    label: str | None = None
    tokenizer_id: str | None = None
    user_metadata: dict[str, str] = field(default_factory=dict)
    save_detailed: bool = False
    argv: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)
    """Flags recorded in ``metadata`` without changing the run (``--hf-name``, ``--hf-subset``)."""

    @property
    def timed(self) -> bool:
        """Whether requests go out at the dataset's recorded times."""
        return self.self_timed if self.self_timed is not None else self.dataset.name in SELF_TIMED_DATASETS


@dataclass
class PointResult:
    """A finished point: the raw run, its aggregates and the result object to write."""

    run: BenchRun
    metrics: BenchmarkMetrics
    result: dict[str, Any]
    recorder: Recorder


def schedule_for(spec: BenchSpec, n: int, dataset_times: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """The send times: the dataset's own (self-timed) or drawn from rate, burstiness and ramp-up."""
    if spec.timed:
        if dataset_times is None:
            raise ConfigError(f"--self-timed needs a dataset with arrival times; {spec.dataset.name} has none")
        return dataset_times
    return arrival_schedule(n, spec.request_rate, spec.burstiness, rng, spec.ramp_up)


def header(spec: BenchSpec, model: str) -> dict[str, Any]:
    """vLLM's run description keys, in its order."""
    rate = spec.request_rate
    h: dict[str, Any] = {
        "date": time.strftime("%Y%m%d-%H%M%S"), "endpoint_type": spec.backend, "backend": spec.backend,
        "label": spec.label, "model_id": model, "tokenizer_id": spec.tokenizer_id or model,
        "num_prompts": spec.dataset.num_prompts,
    }
    traffic: dict[str, Any] = {"request_rate": rate if math.isfinite(rate) else "inf", "burstiness": spec.burstiness,
                               "max_concurrency": spec.runner.max_concurrency}
    if spec.ramp_up is not None:
        traffic.update(ramp_up_strategy=spec.ramp_up.strategy, ramp_up_start_rps=spec.ramp_up.start_rps,
                       ramp_up_end_rps=spec.ramp_up.end_rps)
    return {"header": h, "traffic": traffic}


def run_point(spec: BenchSpec, on_done: Callable[[RequestOutput], None] | None = None,
              on_start: Callable[[int], None] | None = None) -> PointResult:
    """Sample, run and aggregate one point. ``on_start(n)`` is called with the number of requests before sending,
    ``on_done`` after each request (progress)."""
    data_rng, arrival_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(2))
    dataset = sample_dataset(spec.dataset, data_rng)
    n = len(dataset.requests)
    schedule = schedule_for(spec, n, dataset.arrival_s, arrival_rng)
    recorder = spec.monitors.recorder(spec.runner.base_url)
    if on_start is not None:
        on_start(n)
    run = asyncio.run(run_benchmark(spec.runner, dataset.requests, schedule, recorder, on_done=on_done))
    metrics = calculate_metrics(run, spec.slo, spec.percentile_metrics, spec.metric_percentiles)
    good = (metrics.slo_attainment * n) if metrics.slo_attainment is not None else None
    energy = energy_report(run, recorder, metrics.total_output_tokens,
                           metrics.total_input_tokens + metrics.total_output_tokens, good)
    parts = header(spec, run.model)
    ours = {
        "base_url": redact_url(spec.runner.base_url), "endpoint": spec.runner.endpoint,
        "dataset_name": spec.dataset.name,
        "dataset_path": str(spec.dataset.path) if spec.dataset.path else None, "num_requests_sent": n,
        "seed": spec.seed, "self_timed": spec.timed,
        "goodput_slo_ms": {name: getattr(spec.slo, f) * 1000 for name, f in
                           (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2el", "e2e_s"))
                           if getattr(spec.slo, f) is not None} if spec.slo else None,
        "percentile_metrics": list(spec.percentile_metrics), "metric_percentiles": list(spec.metric_percentiles),
        "probe_request_rate": spec.runner.probe_request_rate, "num_warmups": spec.runner.num_warmups,
        "argv": redact_argv(spec.argv), **spec.notes,
    }
    result = result_file.build_result(
        run, metrics, recorder.result_sections(), {**parts["header"], **parts["traffic"]}, ours,
        user_metadata=spec.user_metadata, energy=energy, save_detailed=spec.save_detailed)
    return PointResult(run, metrics, result, recorder)


def parse_metadata(items: list[str], flag: str = "--metadata") -> dict[str, str]:
    """``["k=v", ...]`` -> dict (vLLM's ``--metadata`` / ``--header`` format)."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out
