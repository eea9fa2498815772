"""Energy per token under load: what the run cost, where the joules went, and how sure we are.

Sources (each optional, each read from a cumulative counter, never from averaged power):

- GPU: NVML's total-energy counter (millijoules, integrated by the driver), read by the GPU monitor every
  ``--gpu-monitor-interval`` and at the window edges; GPUs without the counter fall back to integrated sampled
  power and the report says so.
- CPU: RAPL package + DRAM counters (microjoules) where the kernel lets us read them. RAPL measures the whole
  socket, so other work on the host is included: the report says so.

The run's window (first send to last completion) gives the totals: J per output token, J per total (input +
output) token and goodput per joule. Within the window, every interval between two consecutive counter samples
is classed from the client's own request timelines (send, first token, finish): **prefill-heavy** when at least
one request was waiting for its first token for at least half the interval, **decode-heavy** when requests were
streaming and the interval is not prefill-heavy, **idle** otherwise. A phase's joules are divided by the tokens
that phase produced (input tokens of prefills that completed in it; output tokens streamed in it), so each
phase's figure also carries the other phase's work done in its intervals: ``mixed_energy_j`` (joules of intervals
where both phases were present) bounds that misattribution.

Errors written into the report: the counters' resolution; their update period and the power refresh period,
both *measured* from the traces (how often the reading changed), not assumed; and a bound on the window-edge
error (one update period of average power at each edge).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlserve.bench.runner import BenchRun
from rlserve.telemetry.gpu import GpuMonitor
from rlserve.telemetry.recorder import Recorder

NVML_COUNTER_RESOLUTION_J = 1e-3  # nvmlDeviceGetTotalEnergyConsumption counts millijoules
RAPL_COUNTER_RESOLUTION_J = 1e-6  # energy_uj counts microjoules (the hardware unit is ~15-61 uJ)
PREFILL_HEAVY_SHARE = 0.5


def _change_period_s(t: np.ndarray, v: np.ndarray) -> float | None:
    """Median time between changes of a sampled reading (its refresh period as seen at our sampling rate)."""
    if t.size < 3:
        return None
    changed = t[1:][np.diff(v) != 0]
    if changed.size < 2:
        return None
    return float(np.median(np.diff(changed)))


def _counter_traces(recorder: Recorder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"gpu": (t, cumulative J summed over GPUs), "cpu": (t, cumulative J)}`` for the sources measured."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if isinstance(recorder.gpu, GpuMonitor):
        gtr = recorder.gpu.trace()
        if len(gtr) >= 2:
            out["gpu"] = (np.array([s.t_s for s in gtr]), np.array([sum(s.energy_j) for s in gtr]))
    if recorder.cpu is not None and recorder.cpu.power_source == "rapl":
        ctr = recorder.cpu.trace()
        e = np.array([s.energy_j for s in ctr], dtype=np.float64)
        if e.size >= 2 and np.isfinite(e).all():
            out["cpu"] = (np.array([s.t_s for s in ctr]), e)
    return out


def _source_info(recorder: Recorder, kind: str, t: np.ndarray, e: np.ndarray, energy_j: float,
                 duration_s: float) -> dict[str, Any]:
    if kind == "gpu":
        assert isinstance(recorder.gpu, GpuMonitor)
        tr = recorder.gpu.trace()
        power = np.array([sum(s.power_w) for s in tr])
        counter = recorder.gpu.energy_source == "nvml_energy_counter"
        info: dict[str, Any] = {
            "source": recorder.gpu.energy_source,
            "devices": [f"gpu{g}" for g in recorder.gpu.gpu_ids],
            "counter_resolution_j": NVML_COUNTER_RESOLUTION_J if counter else None,
            "power_refresh_period_s": _change_period_s(t, power),
            "sample_interval_s": recorder.gpu.interval_s,
        }
        if not counter:
            info["note"] = ("no NVML energy counter on this GPU: energy integrates sampled power, which misses "
                            "changes faster than the power refresh period")
    else:
        assert recorder.cpu is not None
        info = {"source": "rapl", "zones": recorder.cpu.static_info().get("rapl_zones"),
                "counter_resolution_j": RAPL_COUNTER_RESOLUTION_J, "sample_interval_s": recorder.cpu.interval_s,
                "scope": "whole CPU package(s) and DRAM: includes every process on the host"}
    period = _change_period_s(t, e)
    info["counter_update_period_s"] = period
    info["energy_j"] = energy_j
    avg_w = energy_j / duration_s if duration_s > 0 else math.nan
    info["window_edge_error_j"] = 2 * avg_w * period if period is not None and math.isfinite(avg_w) else None
    return info


def _covered(intervals: Sequence[tuple[float, float]], edges: np.ndarray) -> np.ndarray:
    """For each ``[edges[k], edges[k+1])``: the time covered by the union of ``intervals``."""
    if not intervals:
        return np.zeros(len(edges) - 1)
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = np.array([m[0] for m in merged])
    ends = np.array([m[1] for m in merged])
    # cumulative covered time as a piecewise-linear function of t, evaluated at the edges
    xs = np.column_stack([starts, ends]).ravel()
    ys = np.concatenate(([0.0], np.cumsum(ends - starts)))
    cum = np.column_stack([ys[:-1], ys[1:]]).ravel()
    c = np.interp(edges, xs, cum, left=0.0, right=float(ys[-1]))
    return np.diff(c)


def _tokens_in(times: np.ndarray, weights: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Tokens per interval; a token stamped on an edge belongs to the interval that ends there (it was made in it:
    the first token ends the prefill)."""
    idx = np.searchsorted(edges, times, side="left") - 1
    ok = (idx >= 0) & (idx < len(edges) - 1)
    return np.bincount(idx[ok], weights=weights[ok], minlength=len(edges) - 1)


def phase_split(run: BenchRun, t: np.ndarray, e: np.ndarray) -> dict[str, Any]:
    """Energy of each sample interval inside the run window, classed prefill-heavy / decode-heavy / idle."""
    inside = (t >= run.start_s) & (t <= run.end_s)
    edges = np.concatenate(([run.start_s], t[inside], [run.end_s]))
    energy = np.diff(np.interp(edges, t, e))
    span = np.diff(edges)
    ok = [o for o in run.outputs if o.success]
    prefill = _covered([(o.send_s, o.first_token_s) for o in ok], edges)
    decode = _covered([(o.first_token_s, o.finish_s) for o in ok], edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        pre_share = np.where(span > 0, prefill / span, 0.0)
    is_pre = pre_share >= PREFILL_HEAVY_SHARE
    is_dec = ~is_pre & (decode > 0)
    is_idle = ~is_pre & ~is_dec
    first = np.array([o.first_token_s for o in ok])
    in_tok = _tokens_in(first, np.array([o.prompt_tokens for o in ok], dtype=np.float64), edges)
    tok_times = [o.first_token_s + np.concatenate(([0.0], np.cumsum(o.itl_s))) for o in ok]
    tok_w = [np.full(len(tt), o.output_tokens / len(tt)) for o, tt in zip(ok, tok_times, strict=True)]
    out_tok = _tokens_in(np.concatenate(tok_times) if tok_times else np.zeros(0),
                         np.concatenate(tok_w) if tok_w else np.zeros(0), edges)

    def per(num: float, den: float) -> float | None:
        return num / den if den > 0 else None

    pre_e, dec_e = float(energy[is_pre].sum()), float(energy[is_dec].sum())
    return {
        "rule": f"interval prefill-heavy when a request awaited its first token for >= {PREFILL_HEAVY_SHARE:g} of it",
        "intervals": int(len(span)),
        "prefill_heavy": {"time_s": float(span[is_pre].sum()), "energy_j": pre_e,
                          "input_tokens": int(in_tok[is_pre].sum()),
                          "j_per_input_token": per(pre_e, float(in_tok[is_pre].sum()))},
        "decode_heavy": {"time_s": float(span[is_dec].sum()), "energy_j": dec_e,
                         "output_tokens": int(round(out_tok[is_dec].sum())),
                         "j_per_output_token": per(dec_e, float(out_tok[is_dec].sum()))},
        "idle": {"time_s": float(span[is_idle].sum()), "energy_j": float(energy[is_idle].sum())},
        "mixed_energy_j": float(energy[(prefill > 0) & (decode > 0)].sum()),
    }


def energy_report(run: BenchRun, recorder: Recorder | None, output_tokens: int, total_tokens: int,
                  good_requests: float | None) -> dict[str, Any] | None:
    """The ``energy`` block of the result (``None`` when no energy source was measured)."""
    m = run.measurement
    if recorder is None or m is None or m.energy_j is None:
        return None
    traces = _counter_traces(recorder)
    sources: dict[str, Any] = {}
    for kind, window_j in (("gpu", m.gpu_energy_j), ("cpu", m.cpu_energy_j)):
        if window_j is not None and kind in traces:
            sources[kind] = _source_info(recorder, kind, *traces[kind], window_j, run.duration_s)
            sources[kind]["phases"] = phase_split(run, *traces[kind])
    total = m.energy_j

    def per(den: float) -> float | None:
        return total / den if den else None

    return {
        "method": "cumulative counters read at the window edges (first send, last completion); phases from "
                  "counter samples classed by the client's request timelines",
        "window_s": run.duration_s,
        "energy_j": total,
        "j_per_output_token": per(output_tokens),
        "j_per_total_token": per(total_tokens),
        "goodput_per_joule": good_requests / total if good_requests is not None and total else None,
        "sources": sources,
    }
