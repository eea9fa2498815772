"""``rlserve bench``, ``rlserve bench validate``, ``rlserve monitor`` and ``rlserve state``.

Flag names follow ``vllm bench serve`` (and the seed's monitoring flags) so existing scripts translate directly.
GPU monitoring is on whenever NVML works; naming ``--gpu-ids`` makes it required (an error without NVML).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rlserve.bench import result as result_file
from rlserve.bench.datasets import DATASETS, DatasetConfig, sample_dataset
from rlserve.bench.metrics import METRIC_NAMES, BenchmarkMetrics, calculate_metrics, parse_goodput
from rlserve.bench.request import REQUEST_FUNCS
from rlserve.bench.runner import RunnerConfig, arrival_schedule, run_benchmark
from rlserve.cli.app import app, console, err_console
from rlserve.errors import BackendError, ConfigError
from rlserve.telemetry.cpu import CpuMonitor
from rlserve.telemetry.gpu import DEFAULT_GPU_INTERVAL_S, GpuMonitor, NullGpuMonitor, make_gpu_monitor
from rlserve.telemetry.recorder import Recorder
from rlserve.telemetry.state import StateVector, build_energy_state
from rlserve.telemetry.vllm_metrics import DEFAULT_KV_INTERVAL_S, VllmMetricsMonitor

bench_app = typer.Typer(help="Benchmark an OpenAI-compatible server (vLLM) and record its telemetry.")
app.add_typer(bench_app, name="bench")


def _split(values: list[str] | None) -> list[str]:
    """Flags that take several values accept ``a,b``, ``"a b"`` or the flag repeated."""
    return [v for raw in values or [] for v in re.split(r"[,\s]+", raw.strip()) if v]


def _gpu_ids(values: list[str] | None) -> list[int] | None:
    ids = _split(values)
    if not ids:
        return None
    try:
        return [int(v) for v in ids]
    except ValueError:
        raise ConfigError(f"--gpu-ids takes integers, got {ids}") from None


def _gpu_monitor(ids: list[int] | None, interval_s: float) -> GpuMonitor | NullGpuMonitor:
    mon = make_gpu_monitor(ids, interval_s, required=ids is not None)
    if isinstance(mon, NullGpuMonitor):
        err_console.print(f"[yellow]note:[/] {mon.reason}; continuing without GPU power/energy", highlight=False)
    return mon


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    base_url: str = typer.Option("http://127.0.0.1:8000", help="Server base URL (no /v1)."),
    endpoint: str = typer.Option("/v1/completions", help=f"One of {', '.join(REQUEST_FUNCS)}."),
    model: str | None = typer.Option(None, help="Model name (default: the first one /v1/models lists)."),
    dataset_name: str = typer.Option("random", help=f"One of {', '.join(DATASETS)}."),
    dataset_path: Path | None = typer.Option(None, help="ShareGPT JSON, Splitwise or Azure CSV."),
    num_prompts: int = typer.Option(1000, help="Requests to send."),
    random_input_len: int = typer.Option(1024, help="Prompt tokens (random, shared-prefix suffix)."),
    random_output_len: int = typer.Option(128, help="Output tokens (random, shared-prefix)."),
    random_range_ratio: float = typer.Option(0.0, help="Lengths uniform in len*(1-r)..len*(1+r)."),
    prefix_len: int = typer.Option(256, help="Shared-prefix dataset: tokens shared within a group."),
    num_prefixes: int = typer.Option(8, help="Shared-prefix dataset: number of groups."),
    sharegpt_output_len: int | None = typer.Option(None, help="Override ShareGPT output lengths."),
    trace_timing: bool = typer.Option(False, help="Trace datasets: send at the file's arrival times."),
    request_rate: float = typer.Option(math.inf, help="Requests/s (inf = all at once)."),
    burstiness: float = typer.Option(1.0, help="Gamma shape of gaps: 1 = Poisson, <1 burstier, >1 smoother."),
    max_concurrency: int | None = typer.Option(None, help="Cap on requests in flight."),
    num_warmups: int = typer.Option(0, help="Requests sent one by one before measuring (not recorded)."),
    seed: int = typer.Option(0, help="Seed of the dataset sample and arrival schedule."),
    goodput: list[str] | None = typer.Option(None, help="SLOs in ms: 'ttft:500 tpot:50 e2el:10000'."),
    percentile_metrics: str = typer.Option("ttft,tpot,itl", help=f"Metrics to report percentiles for "
                                                                  f"({','.join(METRIC_NAMES)})."),
    metric_percentiles: str = typer.Option("99", help="Percentiles, e.g. '50,90,99'."),
    ignore_eos: bool = typer.Option(True, help="Ask the server to generate exactly max_tokens."),
    ready_timeout_s: float = typer.Option(120.0, help="Wait this long for /health before giving up."),
    gpu_ids: list[str] | None = typer.Option(None, help="GPUs to monitor ('0,1'); required to exist if given."),
    gpu_monitor_interval: float = typer.Option(DEFAULT_GPU_INTERVAL_S, help="GPU sampling period (s)."),
    monitor_cpu: bool = typer.Option(False, help="Record CPU utilisation and RAPL power."),
    enable_kv_trace: bool = typer.Option(False, help="Record vLLM /metrics (KV cache, queues) over time."),
    kv_monitor_interval: float = typer.Option(DEFAULT_KV_INTERVAL_S, help="KV /metrics scrape period (s)."),
    save_result: bool = typer.Option(False, help="Write the result JSON."),
    result_dir: Path = typer.Option(Path("."), help="Directory for the result JSON."),
    result_filename_: str | None = typer.Option(None, "--result-filename", help="File name (default: generated)."),
    save_telemetry_log: bool = typer.Option(False, help="Also write the monitors' JSONL log next to the result."),
) -> None:
    """Run a serving benchmark (``rlserve bench --help``); ``rlserve bench validate FILE`` checks a result."""
    if ctx.invoked_subcommand is not None:
        return
    dcfg = DatasetConfig(name=dataset_name, path=dataset_path, num_prompts=num_prompts,
                         random_input_len=random_input_len, random_output_len=random_output_len,
                         random_range_ratio=random_range_ratio, prefix_len=prefix_len, num_prefixes=num_prefixes,
                         sharegpt_output_len=sharegpt_output_len)
    rcfg = RunnerConfig(base_url=base_url, endpoint=endpoint, model=model, max_concurrency=max_concurrency,
                        num_warmups=num_warmups, ready_timeout_s=ready_timeout_s, ignore_eos=ignore_eos)
    slo = parse_goodput(_split(goodput)) if goodput else None
    pmetrics = _split([percentile_metrics])
    try:
        percentiles = [float(q) for q in _split([metric_percentiles])]
    except ValueError:
        raise ConfigError(f"--metric-percentiles takes numbers, got {metric_percentiles!r}") from None
    if not (request_rate > 0 and burstiness > 0):
        raise ConfigError("--request-rate and --burstiness must be > 0")

    data_rng, arrival_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    dataset = sample_dataset(dcfg, data_rng)
    n = len(dataset.requests)
    if trace_timing:
        if dataset.arrival_s is None:
            raise ConfigError(f"--trace-timing needs a dataset with arrival times; {dataset_name} has none")
        schedule = dataset.arrival_s
    else:
        schedule = arrival_schedule(n, request_rate, burstiness, arrival_rng)

    recorder = Recorder(
        vllm=VllmMetricsMonitor(base_url, kv_monitor_interval) if enable_kv_trace else None,
        gpu=_gpu_monitor(_gpu_ids(gpu_ids), gpu_monitor_interval),
        cpu=CpuMonitor(gpu_monitor_interval) if monitor_cpu else None,  # the seed samples CPU with the GPU
    )
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("requests", total=n)
        run = asyncio.run(run_benchmark(rcfg, dataset.requests, schedule, recorder,
                                        on_done=lambda _out: progress.advance(task)))
    metrics = calculate_metrics(run, slo, pmetrics, percentiles)
    _print_metrics(metrics)
    if save_result:
        metadata: dict[str, Any] = {
            "base_url": base_url, "endpoint": endpoint, "dataset_name": dataset_name,
            "dataset_path": str(dataset_path) if dataset_path else None, "num_prompts": n,
            "request_rate": request_rate if math.isfinite(request_rate) else "inf", "burstiness": burstiness,
            "max_concurrency": max_concurrency, "seed": seed, "trace_timing": trace_timing,
            "goodput_slo_ms": {name: getattr(slo, f) * 1000 for name, f in
                               (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2el", "e2e_s"))
                               if getattr(slo, f) is not None} if slo else None,
            "percentile_metrics": pmetrics, "metric_percentiles": percentiles, "argv": sys.argv[1:],
        }
        result = result_file.build_result(run, metrics, recorder.result_sections(), metadata)
        name = result_filename_ or result_file.result_filename(result["metadata"])
        path = result_file.save_result(result, result_dir / name)
        console.print(f"result written to {path}", highlight=False)
        if save_telemetry_log:
            log = recorder.save_log(path.with_suffix(".telemetry.jsonl"), meta={"result": path.name})
            console.print(f"telemetry log written to {log}", highlight=False)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _print_metrics(m: BenchmarkMetrics) -> None:
    table = Table(title="Serving benchmark result", show_header=False)
    rows: list[tuple[str, str]] = [
        ("Successful requests", str(m.completed)), ("Failed requests", str(m.failed)),
        ("Duration (s)", _fmt(m.duration_s)), ("Input tokens", str(m.total_input_tokens)),
        ("Output tokens", str(m.total_output_tokens)), ("Request throughput (req/s)", _fmt(m.request_throughput_per_s)),
        ("Output token throughput (tok/s)", _fmt(m.output_throughput_tok_per_s)),
        ("Total token throughput (tok/s)", _fmt(m.total_token_throughput_tok_per_s)),
    ]
    if m.goodput_per_s is not None:
        rows.append(("Goodput (req/s)", _fmt(m.goodput_per_s)))
    for k in METRIC_NAMES:
        d = m.to_dict()
        rows += [(f"Mean {k.upper()} (ms)", _fmt(d[f"mean_{k}_ms"])), (f"Median {k.upper()} (ms)",
                                                                       _fmt(d[f"median_{k}_ms"])),
                 (f"P99 {k.upper()} (ms)", _fmt(d[f"p99_{k}_ms"]))]
    rows.append(("Mean client scheduling lag (ms)", _fmt(m.mean_scheduling_lag_ms, 3)))
    if m.energy_j is not None:
        rows += [("GPU energy (J)", _fmt(m.gpu_energy_j)), ("CPU energy (J)", _fmt(m.cpu_energy_j)),
                 ("Energy per output token (J)", _fmt(m.energy_per_output_token_j, 4))]
        if m.goodput_per_joule is not None:
            rows.append(("Goodput per joule (req/J)", _fmt(m.goodput_per_joule, 4)))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@bench_app.command("validate")
def validate(result: Path = typer.Argument(..., help="Result JSON written by rlserve bench --save-result.")) -> None:
    """Print sample counts and ratios of a result; exit 1 when traces are empty or data is missing."""
    report = result_file.validate_result(result_file.load_result(result))
    for line in report.lines:
        style = "bold red" if line.startswith("PROBLEM") else ""
        console.print(line, style=style, highlight=False)
    if report.problems:
        raise typer.Exit(1)
    console.print("result looks complete", style="green")


def _monitors(url: str, gpu_ids: list[str] | None, interval_s: float, cpu: bool) -> Recorder:
    if not url.startswith(("http://", "https://")) or url.split("//", 1)[1] in ("", "/"):
        raise ConfigError(f"--url must be a server's base URL such as http://127.0.0.1:8000, got {url!r}")
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ConfigError(f"the scrape interval must be a finite number > 0, got {interval_s}")
    return Recorder(vllm=VllmMetricsMonitor(url, interval_s),
                    gpu=_gpu_monitor(_gpu_ids(gpu_ids), DEFAULT_GPU_INTERVAL_S),
                    cpu=CpuMonitor() if cpu else None)


def _live_table(rec: Recorder) -> Table:
    t = Table(title=f"rlserve monitor  {rec.vllm.base_url if rec.vllm else ''}", show_header=False)
    v = rec.vllm.current() if rec.vllm else None
    if v is None:
        t.add_row("vLLM", "no sample yet")
    else:
        blocks = f" ({_fmt(v.used_blocks, 0)}/{v.num_gpu_blocks} blocks)" if v.num_gpu_blocks else ""
        t.add_row("KV cache usage", f"{v.kv_cache_usage * 100:.1f} %{blocks}")
        t.add_row("Running / waiting", f"{v.num_requests_running:g} / {v.num_requests_waiting:g}")
        t.add_row("Requests/s", _fmt(v.request_throughput_per_s))
        t.add_row("Generated tok/s", _fmt(v.generation_tokens_per_s, 1))
        t.add_row("Prompt tok/s", _fmt(v.prompt_tokens_per_s, 1))
        t.add_row("Prefix cache hit rate", _fmt(v.prefix_cache_hit_rate, 3))
        t.add_row("Preemptions (total)", _fmt(v.num_preemptions_total, 0))
    if rec.vllm:
        t.add_row("Scrape gaps", str(rec.vllm.gap_counts() or 0))
    g = rec.gpu.current() if rec.gpu else None
    if g is not None and isinstance(rec.gpu, GpuMonitor):
        for i, gid in enumerate(rec.gpu.gpu_ids):
            t.add_row(f"GPU {gid}", f"{g.power_w[i]:.0f} W, util {g.gpu_util_pct[i]:.0f} %, "
                                    f"SM {g.sm_clock_mhz[i]:.0f} MHz, {g.temperature_c[i]:.0f} C")
    elif isinstance(rec.gpu, NullGpuMonitor):
        t.add_row("GPU", "not measured")
    c = rec.cpu.current() if rec.cpu else None
    if c is not None:
        t.add_row("CPU", f"util {c.util_pct:.0f} %, power {_fmt(c.power_w, 1)} W")
    return t


@app.command()
def monitor(
    url: str = typer.Option(..., "--url", help="vLLM server base URL."),
    gpu_ids: list[str] | None = typer.Option(None, help="GPUs to show ('0,1'); default all when NVML works."),
    interval_s: float = typer.Option(1.0, help="Scrape/refresh period (s)."),
    monitor_cpu: bool = typer.Option(True, help="Show CPU utilisation/power."),
    duration_s: float | None = typer.Option(None, help="Stop after this long (default: until Ctrl-C)."),
) -> None:
    """Live terminal view of a server's KV cache, queues, throughput and power."""
    rec = _monitors(url, gpu_ids, interval_s, monitor_cpu)
    deadline = math.inf if duration_s is None else time.monotonic() + duration_s
    with rec, Live(_live_table(rec), console=console, refresh_per_second=4) as live:
        try:
            while time.monotonic() < deadline:
                time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
                live.update(_live_table(rec))
        except KeyboardInterrupt:
            pass


@app.command()
def state(
    url: str = typer.Option(..., "--url", help="vLLM server base URL."),
    gpu_ids: list[str] | None = typer.Option(None, help="GPUs to include ('0,1'); default all when NVML works."),
    window_s: float = typer.Option(2.0, help="Observe this long first (throughputs are rates over it)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the energy controller's 10-dim normalised state vector from live telemetry."""
    rec = _monitors(url, gpu_ids, min(0.5, window_s / 2), cpu=True)
    if rec.vllm is not None:
        rec.vllm.rate_window_s = window_s
    with rec:
        time.sleep(window_s)
        cur = rec.current()
    if cur.get("vllm") is None:  # a state vector of nothing but defaults would look like a measurement
        raise BackendError(f"no /metrics sample from {url} within {window_s:g} s; is the vLLM server up?")
    vec = build_energy_state(cur.get("gpu"), cur.get("cpu"), cur.get("vllm"))
    x, raw, measured = vec.normalized(), vec.values(), vec.measured
    names = StateVector.feature_names()
    if as_json:
        console.print_json(json.dumps({"features": list(names), "state": [float(v) for v in x],
                                       "raw": [float(v) if math.isfinite(v) else None for v in raw],
                                       "measured": [bool(m) for m in measured]}))
        return
    table = Table(title="Energy-controller state (10-dim, normalised)")
    for col in ("dim", "feature", "raw", "normalised"):
        table.add_column(col)
    for i, name in enumerate(names):
        table.add_row(str(i), name, _fmt(float(raw[i])) if measured[i] else "not measured", f"{x[i]:.4f}")
    console.print(table)
