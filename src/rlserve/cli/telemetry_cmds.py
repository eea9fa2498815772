"""``rlserve monitor`` and ``rlserve state`` (live telemetry), and the option helpers ``bench`` shares.

GPU monitoring is on whenever NVML works; naming ``--gpu-ids`` makes it required (an error without NVML).
"""

from __future__ import annotations

import json
import math
import re
import time

import typer
from rich.live import Live
from rich.table import Table

from rlserve.cli.app import app, console, err_console
from rlserve.errors import BackendError, ConfigError
from rlserve.telemetry.cpu import CpuMonitor
from rlserve.telemetry.gpu import DEFAULT_GPU_INTERVAL_S, GpuMonitor, NullGpuMonitor, make_gpu_monitor
from rlserve.telemetry.recorder import Recorder
from rlserve.telemetry.state import StateVector, build_energy_state
from rlserve.telemetry.vllm_metrics import VllmMetricsMonitor


def split_values(values: list[str] | None) -> list[str]:
    """Flags that take several values accept ``a,b``, ``"a b"`` or the flag repeated."""
    return [v for raw in values or [] for v in re.split(r"[,\s]+", raw.strip()) if v]


def gpu_ids_option(values: list[str] | None) -> list[int] | None:
    """``--gpu-ids`` as integers (``None`` when not given)."""
    ids = split_values(values)
    if not ids:
        return None
    try:
        return [int(v) for v in ids]
    except ValueError:
        raise ConfigError(f"--gpu-ids takes integers, got {ids}") from None


def gpu_monitor_for(ids: list[int] | None, interval_s: float) -> GpuMonitor | NullGpuMonitor:
    """A GPU monitor (required when ids were named), or a null one with a printed note when NVML is missing."""
    mon = make_gpu_monitor(ids, interval_s, required=ids is not None)
    if isinstance(mon, NullGpuMonitor):
        err_console.print(f"[yellow]note:[/] {mon.reason}; continuing without GPU power/energy", highlight=False)
    return mon


def fmt(v: float | None, digits: int = 2) -> str:
    """A number for a table cell; ``-`` when not measured."""
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _monitors(url: str, gpu_ids: list[str] | None, interval_s: float, cpu: bool) -> Recorder:
    if not url.startswith(("http://", "https://")) or url.split("//", 1)[1] in ("", "/"):
        raise ConfigError(f"--url must be a server's base URL such as http://127.0.0.1:8000, got {url!r}")
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ConfigError(f"the scrape interval must be a finite number > 0, got {interval_s}")
    return Recorder(vllm=VllmMetricsMonitor(url, interval_s),
                    gpu=gpu_monitor_for(gpu_ids_option(gpu_ids), DEFAULT_GPU_INTERVAL_S),
                    cpu=CpuMonitor() if cpu else None)


def _live_table(rec: Recorder) -> Table:
    t = Table(title=f"rlserve monitor  {rec.vllm.base_url if rec.vllm else ''}", show_header=False)
    v = rec.vllm.current() if rec.vllm else None
    if v is None:
        t.add_row("vLLM", "no sample yet")
    else:
        blocks = f" ({fmt(v.used_blocks, 0)}/{v.num_gpu_blocks} blocks)" if v.num_gpu_blocks else ""
        t.add_row("KV cache usage", f"{v.kv_cache_usage * 100:.1f} %{blocks}")
        t.add_row("Running / waiting", f"{v.num_requests_running:g} / {v.num_requests_waiting:g}")
        t.add_row("Requests/s", fmt(v.request_throughput_per_s))
        t.add_row("Generated tok/s", fmt(v.generation_tokens_per_s, 1))
        t.add_row("Prompt tok/s", fmt(v.prompt_tokens_per_s, 1))
        t.add_row("Prefix cache hit rate", fmt(v.prefix_cache_hit_rate, 3))
        t.add_row("Preemptions (total)", fmt(v.num_preemptions_total, 0))
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
        t.add_row("CPU", f"util {c.util_pct:.0f} %, power {fmt(c.power_w, 1)} W")
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
        table.add_row(str(i), name, fmt(float(raw[i])) if measured[i] else "not measured", f"{x[i]:.4f}")
    console.print(table)
