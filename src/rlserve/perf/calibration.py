"""Fit a GpuCalibration to the JSON that ``scripts/calibrate/measure_gpu.py`` writes, and compare model and data.

The fit is sequential; each step uses only what the previous ones fixed:

1. awake power: mean power with the clocks up and no work (CUDA context idle, one-SM spin kernel);
2. memory efficiencies: device copy (elementwise), the M=1 GEMMs of the four Llama shapes weighted by their
   bytes (weight streaming), decode SDPA (KV reads);
3. attention compute efficiency: causal SDPA prefill FLOP rate divided by the peak at its measured clock;
4. sustained GEMM clock: mean SM clock of the compute-bound runs that hit the software power cap;
5. per-layer overhead: what memory-bound decode steps take beyond the roofline, per layer;
6. linear compute efficiency: the value that makes the modelled prefills match the measured ones;
7. memory dynamic power: the value that makes the modelled decode energy match the NVML energy counter.

The benchmark has no serving engine around it, so the model is evaluated without CPU overheads here.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlserve.errors import InputError
from rlserve.perf.gpus import GpuSpec
from rlserve.perf.models import get_model
from rlserve.perf.roofline import ReplicaPerfModel

DATA_DIR = Path(__file__).parent / "data"
SW_POWER_CAP = 0x4  # NVML clocks-event reason bit: software power cap
CALIBRATION_MODEL = "llama-2-7b"  # measure_gpu.py's random-weight transformer has this shape


def load_measurements(path: str | Path) -> dict[str, Any]:
    """Read a measure_gpu.py result file (InputError if it is missing or not one)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: cannot read GPU measurements ({exc}); give a measure_gpu.py output file") from None
    if not isinstance(data, dict) or "results" not in data:
        raise InputError(f"{p}: not a measure_gpu.py output (no 'results'); re-run the measurement script")
    return data


def model_without_cpu_overhead(gpu: GpuSpec, **calibration: Any) -> ReplicaPerfModel:
    """The calibration model (one GPU), with calibration fields overridden and no serving-engine overhead."""
    g = replace(gpu, calibration=replace(gpu.calibration, **calibration))
    return ReplicaPerfModel(g, get_model(CALIBRATION_MODEL), tp=1, iteration_overhead_s=0.0, per_seq_overhead_s=0.0)


def modelled_cost(perf: ReplicaPerfModel, result: dict[str, Any]) -> tuple[float, float]:
    """(seconds, joules) the model gives for one llama_decode / llama_prefill measurement."""
    p = result["params"]
    if result["name"] == "llama_decode":
        return perf.step_cost([], p["batch"], p["context_sum"])
    return perf.step_cost([(p["new_tokens"], 0)] * p["batch"], 0, 0)


def _golden_section(lo: float, hi: float, loss: Callable[[float], float], steps: int = 60) -> float:
    phi = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(steps):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if loss(c) < loss(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def _named(results: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in results if r["name"] == name]


def _capped(r: dict[str, Any]) -> bool:
    return bool((r.get("clock_event_reasons") or 0) & SW_POWER_CAP)


def fit_calibration(measurements: dict[str, Any], gpu: GpuSpec) -> dict[str, float]:
    """Calibration fields fitted to ``measurements`` (the order is in the module docstring)."""
    res = measurements["results"]
    peak_bw, fmax = gpu.mem_bandwidth_gbps, gpu.sm_clock_max_mhz
    out: dict[str, float] = {}
    out["awake_power_w"] = statistics.fmean(
        r["avg_power_w"] for r in res if r["name"] in ("idle_with_context", "awake_spin"))
    out["eff_mem_elementwise"] = _named(res, "copy")[0]["achieved_gbps"] / peak_bw
    m1 = [r for r in _named(res, "gemm_sweep") if r["params"]["m"] == 1]
    out["eff_mem_linear"] = (sum(r["bytes_per_iter"] for r in m1) / sum(r["time_per_iter_s"] for r in m1)
                             / 1e9 / peak_bw)
    out["eff_mem_attn"] = statistics.fmean(r["achieved_gbps"] for r in _named(res, "attn_decode")) / peak_bw
    out["eff_compute_attn"] = statistics.fmean(
        r["achieved_tflops"] / (gpu.peak_tflops * r["sm_clock_mhz"]["mean"] / fmax)
        for r in _named(res, "attn_prefill"))
    capped = [r for r in res if r["name"] in ("matmul", "llama_prefill") and _capped(r)]
    out["sustained_gemm_clock_mhz"] = gpu.snap_clock(statistics.fmean(r["sm_clock_mhz"]["mean"] for r in capped))

    decode = [r for r in _named(res, "llama_decode") if r["params"]["cuda_graph"]]
    memory_bound = [r for r in decode if r["params"]["batch"] <= 64]
    layers = get_model(CALIBRATION_MODEL).num_layers
    base = model_without_cpu_overhead(gpu, **out, layer_overhead_s=0.0)
    out["layer_overhead_s"] = statistics.fmean(
        (r["time_per_iter_s"] - modelled_cost(base, r)[0]) / layers for r in memory_bound)

    prefill = _named(res, "llama_prefill")

    def time_loss(eff: float) -> float:
        perf = model_without_cpu_overhead(gpu, **out, eff_compute_linear=eff)
        return sum(math.log(modelled_cost(perf, r)[0] / r["time_per_iter_s"]) ** 2 for r in prefill)

    out["eff_compute_linear"] = _golden_section(0.3, 1.0, time_loss)
    unthrottled = [r for r in decode if not _capped(r)]

    def energy_loss(p_mem: float) -> float:
        perf = model_without_cpu_overhead(gpu, **out, dyn_mem_power_w=p_mem)
        return sum(math.log(modelled_cost(perf, r)[1] / r["energy_per_iter_j"]) ** 2 for r in unthrottled)

    out["dyn_mem_power_w"] = _golden_section(0.0, gpu.max_power_w, energy_loss)
    return out


def comparison_table(measurements: dict[str, Any], gpu: GpuSpec, **calibration: Any) -> str:
    """Markdown table of measured vs modelled time and average power for every Llama point (CUDA graphs)."""
    perf = model_without_cpu_overhead(gpu, **calibration)
    rows = ["| work | batch | context or new tokens | measured ms | model ms | measured W | model W | SM MHz |",
            "|---|---|---|---|---|---|---|---|"]
    for r in measurements["results"]:
        if r["name"] not in ("llama_decode", "llama_prefill") or not r["params"].get("cuda_graph", True):
            continue
        t, e = modelled_cost(perf, r)
        p = r["params"]
        rows.append(f"| {r['name'].removeprefix('llama_')} | {p['batch']} | {p.get('context', p.get('new_tokens'))} "
                    f"| {r['time_per_iter_s'] * 1e3:.2f} | {t * 1e3:.2f} | {r['avg_power_w']:.0f} | {e / t:.0f} "
                    f"| {r['sm_clock_mhz']['mean']:.0f} |")
    return "\n".join(rows)
