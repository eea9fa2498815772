"""``rlserve bench`` (a drop-in for ``vllm bench serve``), ``rlserve bench sweep`` and ``rlserve bench validate``.

Flags are spelled as ``vllm bench serve`` spells them, including the ones that take several values
(``--goodput ttft:500 tpot:50``, ``--metadata k=v k2=v2``, ``--header K=V ...``): click has no options with a
variable number of values, and ``bench`` is a command group (for ``sweep`` and ``validate``), so unquoted extra
values would be read as a sub-command. :class:`VllmStyleGroup` rewrites ``--flag a b c`` into
``--flag a --flag b --flag c`` before parsing, for exactly those flags.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer._click import Context
from typer.core import TyperGroup

from rlserve.bench import result as result_file
from rlserve.bench.datasets import DATASETS, DatasetConfig, parse_range_ratio
from rlserve.bench.metrics import METRIC_NAMES, QUEUE_METRICS, BenchmarkMetrics, parse_goodput
from rlserve.bench.request import REQUEST_FUNCS, RequestOptions, RequestOutput
from rlserve.bench.runner import RampUp, RunnerConfig
from rlserve.bench.session import BenchSpec, MonitorSpec, PointResult, parse_metadata, run_point
from rlserve.cli.app import app, console, err_console
from rlserve.cli.telemetry_cmds import fmt, gpu_ids_option, gpu_monitor_for, split_values
from rlserve.errors import ConfigError
from rlserve.telemetry.gpu import DEFAULT_GPU_INTERVAL_S
from rlserve.telemetry.vllm_metrics import DEFAULT_KV_INTERVAL_S

MULTI_VALUE_FLAGS = ("--goodput", "--metadata", "--header")
"""Flags that ``vllm bench serve`` declares with ``nargs``: every following bare word is one more value."""

BACKENDS = {"openai": "/v1/completions", "vllm": "/v1/completions", "openai-chat": "/v1/chat/completions"}
"""``--backend`` values whose requests this client speaks, with the endpoint each implies."""


def expand_multi_value(args: Sequence[str], flags: Sequence[str] = MULTI_VALUE_FLAGS) -> list[str]:
    """``--goodput a b --x`` -> ``--goodput a --goodput b --x`` (``--flag=v`` forms are left alone)."""
    out: list[str] = []
    current: str | None = None
    for arg in args:
        if arg.startswith("-") and arg != "-":
            current = arg if arg in flags else None
            out.append(arg)
        elif current is not None and out[-1] != current:
            out += [current, arg]
        else:
            out.append(arg)
    return out


class VllmStyleGroup(TyperGroup):
    """The ``bench`` group: multi-value flags expanded before click parses anything."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        """Expand multi-value flags, then parse as usual."""
        if args and args[0] in self.commands:  # a sub-command parses its own arguments
            return super().parse_args(ctx, args)
        return super().parse_args(ctx, expand_multi_value(args))


bench_app = typer.Typer(cls=VllmStyleGroup, help="Benchmark an OpenAI-compatible server (vLLM) and record its "
                                                 "telemetry; flags as in `vllm bench serve`.")
app.add_typer(bench_app, name="bench")


class ProgressReporter:
    """Progress on stderr: a live bar on a terminal, else one line every ``every_s`` seconds (logs and CI see
    the run advance too)."""

    def __init__(self, label: str = "requests", every_s: float = 10.0, enabled: bool = True) -> None:
        self.label, self.every_s, self.enabled = label, every_s, enabled
        self.total = self.done = self.failed = 0
        self._bar: Progress | None = None
        self._task: Any = None
        self._t0 = self._last = 0.0

    def start(self, total: int) -> None:
        """Called when sending begins."""
        self.total, self._t0 = total, time.monotonic()
        self._last = self._t0
        if not self.enabled:
            return
        if err_console.is_terminal:
            self._bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=err_console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        else:
            err_console.print(f"{self.label}: sending {total}", highlight=False)

    def advance(self, out: RequestOutput) -> None:
        """Called after each request."""
        self.done += 1
        self.failed += not out.success
        if self._bar is not None:
            self._bar.advance(self._task)
            return
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.every_s or self.done == self.total):
            self._last = now
            err_console.print(f"{self.label}: {self.done}/{self.total} done, {self.failed} failed, "
                              f"{now - self._t0:.1f} s", highlight=False)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _endpoint(backend: str, endpoint: str | None) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not supported here; choose one of {', '.join(BACKENDS)}")
    return endpoint or BACKENDS[backend]


def _base_url(base_url: str | None, host: str, port: int) -> str:
    return (base_url or f"http://{host}:{port}").rstrip("/")


def _sampling(temperature: float | None, top_p: float | None, top_k: int | None, min_p: float | None,
              frequency_penalty: float | None, presence_penalty: float | None,
              repetition_penalty: float | None) -> dict[str, Any]:
    given = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
             "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty,
             "repetition_penalty": repetition_penalty}
    out = {k: v for k, v in given.items() if v is not None}
    out.setdefault("temperature", 0.0)  # greedy unless told otherwise: comparable runs
    return out


def _extra_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--extra-body is not JSON ({e.msg})") from None
    if not isinstance(body, dict):
        raise ConfigError("--extra-body must be a JSON object")
    return body


def build_spec(params: dict[str, Any]) -> BenchSpec:
    """A :class:`BenchSpec` from the ``bench`` options (the group's parsed parameters)."""
    p = params
    in_ratio, out_ratio = parse_range_ratio(p["random_range_ratio"])
    input_len = p["input_len"] if p["input_len"] is not None else p["random_input_len"]
    output_len = p["output_len"] if p["output_len"] is not None else p["random_output_len"]
    dcfg = DatasetConfig(
        name=p["dataset_name"], path=p["dataset_path"], num_prompts=p["num_prompts"], tokenizer=p["tokenizer"],
        shuffle=not p["disable_shuffle"], oversample=not p["no_oversample"], random_input_len=input_len,
        random_output_len=output_len, random_range_ratio_input=in_ratio, random_range_ratio_output=out_ratio,
        random_prefix_len=p["random_prefix_len"],
        prefix_repetition_prefix_len=p["prefix_repetition_prefix_len"],
        prefix_repetition_suffix_len=p["prefix_repetition_suffix_len"],
        prefix_repetition_num_prefixes=p["prefix_repetition_num_prefixes"],
        prefix_repetition_output_len=p["output_len"] or p["prefix_repetition_output_len"],
        sharegpt_output_len=p["sharegpt_output_len"] or p["output_len"],
        sonnet_input_len=p["sonnet_input_len"], sonnet_output_len=p["output_len"] or p["sonnet_output_len"],
        sonnet_prefix_len=p["sonnet_prefix_len"], custom_output_len=p["output_len"] or p["custom_output_len"],
        hf_output_len=p["hf_output_len"] or p["output_len"], hf_split=p["hf_split"],
        timed_trace_label_timestamp=p["timed_trace_label_timestamp"],
        timed_trace_label_input_length=p["timed_trace_label_input_length"],
        timed_trace_label_output_length=p["timed_trace_label_output_length"],
        timed_trace_label_hash_ids=p["timed_trace_label_hash_ids"],
        timed_trace_chunk_hash_size=p["timed_trace_chunk_hash_size"],
        timed_trace_sec_multiplier=p["timed_trace_sec_multiplier"],
    )
    ready = p["ready_check_timeout_sec"] if p["ready_check_timeout_sec"] is not None else p["ready_timeout_s"]
    rcfg = RunnerConfig(
        base_url=_base_url(p["base_url"], p["host"], p["port"]), endpoint=_endpoint(p["backend"], p["endpoint"]),
        model=p["served_model_name"] or p["model"], max_concurrency=p["max_concurrency"],
        num_warmups=p["num_warmups"], ready_timeout_s=ready,
        request=RequestOptions(ignore_eos=p["ignore_eos"], extra_body=_extra_body(p["extra_body"]),
                               sampling=_sampling(p["temperature"], p["top_p"], p["top_k"], p["min_p"],
                                                  p["frequency_penalty"], p["presence_penalty"],
                                                  p["repetition_penalty"])),
        api_key=p["api_key"] or None, headers=parse_metadata(p["header"] or [], "--header"),
        probe_request_rate=p["probe_request_rate"],
    )
    ramp = None
    if p["ramp_up_strategy"] is not None:
        if p["ramp_up_start_rps"] is None or p["ramp_up_end_rps"] is None:
            raise ConfigError("--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps")
        ramp = RampUp(p["ramp_up_strategy"], p["ramp_up_start_rps"], p["ramp_up_end_rps"])
    elif p["ramp_up_start_rps"] is not None or p["ramp_up_end_rps"] is not None:
        raise ConfigError("--ramp-up-start-rps/--ramp-up-end-rps need --ramp-up-strategy linear|exponential")
    try:
        percentiles = tuple(float(q) for q in split_values([p["metric_percentiles"]]))
    except ValueError:
        raise ConfigError(f"--metric-percentiles takes numbers, got {p['metric_percentiles']!r}") from None
    if not (p["request_rate"] > 0 and p["burstiness"] > 0):
        raise ConfigError("--request-rate and --burstiness must be > 0")
    gpu_ids = gpu_ids_option(p["gpu_ids"])
    return BenchSpec(
        dataset=dcfg, runner=rcfg, request_rate=p["request_rate"], burstiness=p["burstiness"], ramp_up=ramp,
        self_timed=p["self_timed"], seed=p["seed"],
        slo=parse_goodput(split_values(p["goodput"])) if p["goodput"] else None,
        percentile_metrics=tuple(split_values([p["percentile_metrics"]])), metric_percentiles=percentiles,
        monitors=MonitorSpec(gpu=partial(gpu_monitor_for, gpu_ids, p["gpu_monitor_interval"]),
                             gpu_interval_s=p["gpu_monitor_interval"], cpu=p["monitor_cpu"],
                             kv_trace=p["enable_kv_trace"], kv_interval_s=p["kv_monitor_interval"]),
        backend=p["backend"], label=p["label"], tokenizer_id=str(p["tokenizer"]) if p["tokenizer"] else None,
        user_metadata=parse_metadata(p["metadata"] or []), save_detailed=p["save_detailed"],
        argv=tuple(sys.argv[1:]),
        notes={k: p[k] for k in ("hf_name", "hf_subset") if p[k]},
    )


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    backend: str = typer.Option("openai", help=f"Request format: {', '.join(BACKENDS)}."),
    base_url: str | None = typer.Option(None, help="Server base URL (no /v1); default http://HOST:PORT."),
    host: str = typer.Option("127.0.0.1", help="Server host when --base-url is not given."),
    port: int = typer.Option(8000, help="Server port when --base-url is not given."),
    endpoint: str | None = typer.Option(None, help=f"One of {', '.join(REQUEST_FUNCS)} (default: the backend's)."),
    model: str | None = typer.Option(None, help="Model name (default: the first one /v1/models lists)."),
    served_model_name: str | None = typer.Option(None, help="Model name in the API, if not --model."),
    tokenizer: Path | None = typer.Option(None, help="Local tokenizer.json (or a directory with one): exact "
                                                     "token counts for text datasets."),
    label: str | None = typer.Option(None, help="Prefix of the result file name (default: the backend)."),
    api_key: str | None = typer.Option(None, envvar="OPENAI_API_KEY", show_envvar=True,
                                       help="Bearer token for the server (never written to results)."),
    header: list[str] | None = typer.Option(None, help="Extra request headers: KEY=VALUE ... (never written)."),
    dataset_name: str = typer.Option("random", help=f"One of {', '.join(DATASETS)}."),
    dataset_path: Path | None = typer.Option(None, help="The dataset's file (or local hf directory)."),
    num_prompts: int = typer.Option(1000, help="Requests to send."),
    disable_shuffle: bool = typer.Option(False, help="Keep the file's order."),
    no_oversample: bool = typer.Option(False, help="Send fewer requests when the file has fewer."),
    input_len: int | None = typer.Option(None, help="Input length for datasets that take one (random)."),
    output_len: int | None = typer.Option(None, help="Output length for every dataset (overrides its own)."),
    random_input_len: int = typer.Option(1024, help="Random dataset: prompt tokens."),
    random_output_len: int = typer.Option(128, help="Random dataset: output tokens."),
    random_range_ratio: str = typer.Option("0.0", help="Lengths uniform in len*(1-r)..len*(1+r); "
                                                       "or '{\"input\": r, \"output\": r}'."),
    random_prefix_len: int = typer.Option(0, help="Random dataset: fixed prefix tokens before each prompt."),
    prefix_repetition_prefix_len: int = typer.Option(256, help="prefix_repetition: shared prefix tokens."),
    prefix_repetition_suffix_len: int = typer.Option(256, help="prefix_repetition: own suffix tokens."),
    prefix_repetition_num_prefixes: int = typer.Option(10, help="prefix_repetition: number of prefixes."),
    prefix_repetition_output_len: int = typer.Option(128, help="prefix_repetition: output tokens."),
    sharegpt_output_len: int | None = typer.Option(None, help="Override ShareGPT output lengths."),
    sonnet_input_len: int = typer.Option(550, help="sonnet: prompt tokens."),
    sonnet_output_len: int = typer.Option(150, help="sonnet: output tokens."),
    sonnet_prefix_len: int = typer.Option(200, help="sonnet: shared prefix tokens."),
    custom_output_len: int = typer.Option(256, help="custom: output tokens (-1 = the file's output_tokens)."),
    hf_name: str | None = typer.Option(None, help="hf: dataset name (recorded; the data come from --dataset-path)."),
    hf_split: str | None = typer.Option(None, help="hf: split (files whose name contains it)."),
    hf_subset: str | None = typer.Option(None, help="hf: subset (recorded)."),
    hf_output_len: int | None = typer.Option(None, help="hf: output tokens (default: the answer's length)."),
    timed_trace_label_timestamp: str = typer.Option("timestamp", help="timed_trace: timestamp key."),
    timed_trace_label_input_length: str = typer.Option("input_length", help="timed_trace: input length key."),
    timed_trace_label_output_length: str = typer.Option("output_length", help="timed_trace: output length key."),
    timed_trace_label_hash_ids: str = typer.Option("hash_ids", help="timed_trace: block hash ids key."),
    timed_trace_chunk_hash_size: int = typer.Option(16, help="timed_trace: tokens per hash id."),
    timed_trace_sec_multiplier: float = typer.Option(1.0, help="timed_trace: timestamp unit in seconds."),
    self_timed: bool | None = typer.Option(None, "--self-timed/--no-self-timed",
                                           help="Send at the dataset's own times (default: timed_trace only)."),
    request_rate: float = typer.Option(math.inf, help="Requests/s (inf = all at once)."),
    burstiness: float = typer.Option(1.0, help="Gamma shape of gaps: 1 = Poisson, <1 burstier, >1 smoother."),
    ramp_up_strategy: str | None = typer.Option(None, help="linear | exponential rate ramp over the run."),
    ramp_up_start_rps: float | None = typer.Option(None, help="Ramp-up: first rate (req/s)."),
    ramp_up_end_rps: float | None = typer.Option(None, help="Ramp-up: last rate (req/s)."),
    max_concurrency: int | None = typer.Option(None, help="Cap on requests in flight."),
    num_warmups: int = typer.Option(0, help="Requests sent one by one before measuring (not recorded)."),
    probe_request_rate: float = typer.Option(0.0, help="Single-token probes per second beside the load "
                                                       "(outside --max-concurrency): how the load stalls others."),
    seed: int = typer.Option(0, help="Seed of the dataset sample and arrival schedule."),
    goodput: list[str] | None = typer.Option(None, help="SLOs in ms: ttft:500 tpot:50 e2el:10000."),
    percentile_metrics: str = typer.Option("ttft,tpot,itl", help=f"Metrics to report percentiles for "
                                                                  f"({','.join(METRIC_NAMES + QUEUE_METRICS)})."),
    metric_percentiles: str = typer.Option("99", help="Percentiles, e.g. '50,90,99'."),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos",
                                    help="Generate exactly max_tokens (vLLM's default is off; ours on)."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (default 0: greedy)."),
    top_p: float | None = typer.Option(None, help="Sampling top-p."),
    top_k: int | None = typer.Option(None, help="Sampling top-k."),
    min_p: float | None = typer.Option(None, help="Sampling min-p."),
    frequency_penalty: float | None = typer.Option(None, help="Sampling frequency penalty."),
    presence_penalty: float | None = typer.Option(None, help="Sampling presence penalty."),
    repetition_penalty: float | None = typer.Option(None, help="Sampling repetition penalty."),
    extra_body: str | None = typer.Option(None, help="JSON object merged into every request body."),
    ready_check_timeout_sec: float | None = typer.Option(None, help="vLLM's name for --ready-timeout-s."),
    ready_timeout_s: float = typer.Option(120.0, help="Wait this long for /health before giving up."),
    gpu_ids: list[str] | None = typer.Option(None, help="GPUs to monitor ('0,1'); required to exist if given."),
    gpu_monitor_interval: float = typer.Option(DEFAULT_GPU_INTERVAL_S, help="GPU sampling period (s)."),
    monitor_cpu: bool = typer.Option(False, help="Record CPU utilisation and RAPL power."),
    enable_kv_trace: bool = typer.Option(False, help="Record vLLM /metrics (KV cache, queues) over time."),
    kv_monitor_interval: float = typer.Option(DEFAULT_KV_INTERVAL_S, help="KV /metrics scrape period (s)."),
    metadata: list[str] | None = typer.Option(None, help="KEY=VALUE ... written into the result."),
    save_result: bool = typer.Option(False, help="Write the result JSON."),
    save_detailed: bool = typer.Option(False, help="Also write vLLM's per-request lists (ttfts, itls, texts...)."),
    append_result: bool = typer.Option(False, help="Append the result as a JSON line to the file."),
    result_dir: Path = typer.Option(Path("."), help="Directory for the result JSON."),
    result_filename: str | None = typer.Option(None, help="File name inside --result-dir (default: vLLM's)."),
    save_telemetry_log: bool = typer.Option(False, help="Also write the monitors' JSONL log next to the result."),
    disable_tqdm: bool = typer.Option(False, help="No progress output."),
) -> None:
    """Run a serving benchmark; `rlserve bench sweep` runs several load points, `rlserve bench validate FILE`
    checks a result. Exit status 1 when every request failed."""
    if ctx.invoked_subcommand is not None:
        return
    spec = build_spec(ctx.params)
    point = run_and_save(spec, save=save_result or append_result, append=append_result, result_dir=result_dir,
                         result_filename=result_filename, telemetry_log=save_telemetry_log,
                         progress=not disable_tqdm)
    if point.metrics.completed == 0:
        raise typer.Exit(1)


def run_and_save(spec: BenchSpec, *, save: bool, append: bool, result_dir: Path, result_filename: str | None,
                 telemetry_log: bool, progress: bool, quiet: bool = False) -> PointResult:
    """Check the output path, run one point, print it, write it (also when every request failed: then an
    ``error:`` line says so, and the caller exits 1)."""
    path = result_file.check_output_path(result_dir, result_filename) if save else None
    reporter = ProgressReporter(enabled=progress)
    try:
        point = run_point(spec, on_done=reporter.advance, on_start=reporter.start)
    finally:
        reporter.close()
    if not quiet:
        _print_metrics(point.metrics)
    if save:
        target = path or result_dir / result_file.result_filename(point.result)
        written, why = result_file.save_result_safely(point.result, target, append)
        if why:
            err_console.print(f"[yellow]warning:[/] could not write {why}; saved the result to {written} instead",
                              highlight=False)
        console.print(f"result written to {written}", highlight=False)
        if telemetry_log:
            log = point.recorder.save_log(written.with_suffix(".telemetry.jsonl"), meta={"result": written.name})
            console.print(f"telemetry log written to {log}", highlight=False)
    if point.metrics.completed == 0:
        errors = sorted({o.error for o in point.run.outputs if o.error})
        err_console.print(f"[bold red]error:[/] every request failed ({len(point.run.outputs)}); first error: "
                          f"{errors[0] if errors else 'unknown'}", highlight=False)
    return point


def _print_metrics(m: BenchmarkMetrics) -> None:
    table = Table(title="Serving benchmark result", show_header=False)
    d = m.to_dict()
    rows: list[tuple[str, str]] = [
        ("Successful requests", str(m.completed)), ("Failed requests", str(m.failed)),
        ("Benchmark duration (s)", fmt(m.duration)), ("Total input tokens", str(m.total_input_tokens)),
        ("Total generated tokens", str(m.total_output_tokens)),
        ("Request throughput (req/s)", fmt(m.request_throughput)),
    ]
    if m.request_goodput is not None:
        rows.append(("Request goodput (req/s)", fmt(m.request_goodput)))
    rows += [("Output token throughput (tok/s)", fmt(m.output_throughput)),
             ("Peak output token throughput (tok/s)", fmt(m.max_output_tokens_per_s)),
             ("Peak concurrent requests", str(m.max_concurrent_requests)),
             ("Total token throughput (tok/s)", fmt(m.total_token_throughput))]
    for k in METRIC_NAMES:
        rows += [(f"{label} {k.upper()} (ms)", fmt(d[key])) for label, key in
                 [("Mean", f"mean_{k}_ms"), ("Median", f"median_{k}_ms")] +
                 [(f"P{name[1:].split('_')[0]}", name) for name in d if name.startswith("p")
                  and name.endswith(f"_{k}_ms") and not name.startswith("probe")]]
    rows.append(("Mean client scheduling lag (ms)", fmt(m.mean_scheduling_lag_ms, 3)))
    if m.probe is not None:
        rows += [(f"Probe {k[6:]}", fmt(float(v))) for k, v in m.probe.items()]
    if m.energy_j is not None:
        rows += [("GPU energy (J)", fmt(m.gpu_energy_j)), ("CPU energy (J)", fmt(m.cpu_energy_j)),
                 ("Energy per output token (J)", fmt(m.energy_per_output_token_j, 4)),
                 ("Energy per total token (J)", fmt(m.energy_per_total_token_j, 4))]
        if m.goodput_per_joule is not None:
            rows.append(("Goodput per joule (req/J)", fmt(m.goodput_per_joule, 4)))
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


def _bench_params(ctx: typer.Context, args: list[str]) -> dict[str, Any]:
    """Parse ``args`` as ``rlserve bench`` options (for ``sweep``), with the bench group's own parser."""
    group = ctx.parent.command if ctx.parent is not None else None
    assert isinstance(group, VllmStyleGroup)
    with group.make_context("bench", list(args), parent=ctx.parent.parent if ctx.parent else None) as sub:
        if sub.args:
            raise ConfigError(f"unexpected arguments for sweep: {' '.join(sub.args)}")
        return dict(sub.params)


@bench_app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
    ctx: typer.Context,
    request_rates: str | None = typer.Option(None, help="Comma-separated req/s, one point each ('inf' allowed)."),
    max_concurrencies: str | None = typer.Option(None, help="Comma-separated concurrency caps, one point each."),
    sweep_dir: Path = typer.Option(Path("sweep"), help="Directory for one result per point, summary and plots."),
    plot: bool = typer.Option(True, help="Write latency/goodput/J-per-token and Pareto plots (PNG)."),
    num_gpus: int = typer.Option(1, help="GPUs behind the server (for tokens/s per GPU in the Pareto plot)."),
) -> None:
    """Run `rlserve bench` at several loads (every other `bench` flag is passed through; give it after these):
    one result JSON per point, a summary CSV, and plots of latency percentiles, goodput and J/token against load
    plus a Pareto plot of tokens/s per user against tokens/s per GPU."""
    from rlserve.bench.sweep import SweepPoint, summarize_points, write_summary
    from rlserve.report.bench_plots import plot_pareto, plot_sweep

    if (request_rates is None) == (max_concurrencies is None):
        raise ConfigError("give exactly one of --request-rates and --max-concurrencies")
    if num_gpus < 1:
        raise ConfigError(f"--num-gpus must be >= 1, got {num_gpus}")
    base = build_spec(_bench_params(ctx, expand_multi_value(ctx.args)))
    try:
        values = [float(v) for v in split_values([request_rates or max_concurrencies or ""])]
    except ValueError:
        raise ConfigError("--request-rates / --max-concurrencies take comma-separated numbers") from None
    if not values or any(not v > 0 for v in values):
        raise ConfigError("sweep values must be > 0")
    by_rate = request_rates is not None
    specs = [replace(base, request_rate=v) if by_rate
             else replace(base, runner=replace(base.runner, max_concurrency=int(v))) for v in values]
    result_file.check_output_path(sweep_dir, "summary.csv")
    points: list[SweepPoint] = []
    for v, spec in zip(values, specs, strict=True):
        name = f"rate-{v:g}.json" if by_rate else f"concurrency-{int(v)}.json"
        err_console.print(f"sweep point {'rate' if by_rate else 'concurrency'} {v:g}", highlight=False)
        point = run_and_save(spec, save=True, append=False, result_dir=sweep_dir, result_filename=name,
                             telemetry_log=False, progress=True, quiet=True)
        points.append(SweepPoint(v, sweep_dir / name, point.result))
    rows = summarize_points(points, num_gpus=num_gpus)
    summary = write_summary(rows, sweep_dir / "summary.csv")
    console.print(f"summary written to {summary}", highlight=False)
    if plot:
        x_label = "request rate (req/s)" if by_rate else "max concurrency"
        for p in (plot_sweep(rows, x_label, sweep_dir / "sweep.png"), plot_pareto(rows, sweep_dir / "pareto.png")):
            console.print(f"plot written to {p}", highlight=False)
    if all(p.result["completed"] == 0 for p in points):
        raise typer.Exit(1)

