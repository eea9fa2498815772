"""Check the GPU monitor on a real GPU: NVML energy counter vs integrated sampled power, under real load.

Runs read-only (never touches clocks or power limits). Phases, each a measurement window of the recorder:
idle -> bf16 matmuls -> a random-weight transformer generating tokens -> bursty matmuls (on/off every 200 ms)
-> idle. For every window it prints the energy from the NVML total-energy counter, the trapezoid of the 50 ms
power samples (``nvmlDeviceGetPowerUsage``) and of NVML's instantaneous power field, and how often the power
reading changed. A second monitor at 5 ms during the bursty phase estimates NVML's power refresh period, and the
cost of one GPU sample is timed.

Writes ``gpu_energy_log.jsonl`` (the recorder log; tests replay it) and ``gpu_energy_summary.json`` to
``--out``. Usage on a GPU machine: ``PYTHONPATH=src python3 benchmarks/gpu_energy_check.py --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from rlserve.telemetry import CpuMonitor, GpuMonitor, Recorder, nvml_probe


def matmul_load(torch, seconds: float, duty: float = 1.0, period_s: float = 0.4) -> int:
    """bf16 8192^3 matmuls for ``seconds``; with ``duty < 1`` the GPU idles part of every period."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        while time.monotonic() - start < duty * period_s:
            for _ in range(4):
                a @ b
            torch.cuda.synchronize()
            n += 4
        if duty < 1.0:
            time.sleep((1.0 - duty) * period_s)
    return n


def transformer_load(torch, seconds: float) -> int:
    """A random-weight decoder-only transformer (24 layers, d=2048) generating tokens greedily, batch 32."""
    torch.manual_seed(0)
    d, vocab, ctx = 2048, 32000, 256
    layer = torch.nn.TransformerEncoderLayer(d, 16, 4 * d, batch_first=True, norm_first=True)
    model = torch.nn.TransformerEncoder(layer, 24, enable_nested_tensor=False).cuda().to(torch.bfloat16).eval()
    emb = torch.nn.Embedding(vocab, d).cuda().to(torch.bfloat16)
    head = torch.nn.Linear(d, vocab, bias=False).cuda().to(torch.bfloat16)
    tokens = torch.randint(0, vocab, (32, 64), device="cuda")
    generated = 0
    end = time.monotonic() + seconds
    with torch.inference_mode():
        while time.monotonic() < end:
            x = tokens[:, -ctx:]
            mask = torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1], device="cuda",
                                                                        dtype=torch.bfloat16)
            h = model(emb(x), mask=mask, is_causal=True)
            nxt = head(h[:, -1]).argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
            torch.cuda.synchronize()
            generated += x.shape[0]
    return generated


def window_report(rec: Recorder, name: str, t0: float, t1: float, counter_j: float | None) -> dict:
    """Counter energy vs power integration over the samples inside [t0, t1] (monotonic seconds)."""
    assert rec.gpu is not None
    s = rec.gpu.trace(t0, t1)
    t = np.array([x.t_s for x in s])
    p = np.array([x.power_w[0] for x in s])
    pi = np.array([x.power_instant_w[0] for x in s])
    e = np.array([x.energy_j[0] for x in s])
    span_counter = float(e[-1] - e[0])
    integ = float(np.trapezoid(p, t))
    integ_inst = float(np.trapezoid(pi, t)) if np.isfinite(pi).all() else math.nan
    return {
        "window": name, "duration_s": t1 - t0, "samples": int(len(s)),
        "counter_energy_j": counter_j,
        "counter_energy_over_samples_j": span_counter,
        "power_integrated_j": integ,
        "power_integrated_rel_err": (integ - span_counter) / span_counter if span_counter else math.nan,
        "instant_power_integrated_j": integ_inst,
        "instant_power_integrated_rel_err": ((integ_inst - span_counter) / span_counter
                                             if span_counter and math.isfinite(integ_inst) else math.nan),
        "avg_power_w": float(p.mean()), "max_power_w": float(p.max()),
        "avg_power_from_counter_w": span_counter / float(t[-1] - t[0]),
        "power_changes": int(np.count_nonzero(np.diff(p))),
        "power_change_fraction": float(np.count_nonzero(np.diff(p)) / max(1, len(p) - 1)),
        "avg_gpu_util_pct": float(np.mean([x.gpu_util_pct[0] for x in s])),
        "avg_sm_clock_mhz": float(np.mean([x.sm_clock_mhz[0] for x in s])),
    }


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--phase-s", type=float, default=8.0, help="seconds per load phase")
    args = ap.parse_args()
    status = nvml_probe()
    if not status.available:
        sys.exit(f"gpu_energy_check: {status.reason}")
    import pynvml
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    gpu = GpuMonitor([0], interval_s=0.05)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    smi = (f"{gpu.device_names[0]}, driver {_text(pynvml.nvmlSystemGetDriverVersion())}, "
           f"max SM clock {pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)} MHz")
    print("device:", smi, flush=True)
    # Cost of one sample (all NVML reads of one GPU), before the thread starts.
    t = time.perf_counter()
    for _ in range(200):
        gpu._sample(time.monotonic())
    sample_cost_ms = (time.perf_counter() - t) / 200 * 1e3
    rec = Recorder(gpu=gpu, cpu=CpuMonitor(interval_s=0.05))
    reports, work = [], {}
    torch.zeros(1, device="cuda")  # CUDA context outside the windows
    with rec:
        for name, fn in [("idle_start", lambda: time.sleep(3.0)),
                         ("matmul", lambda: work.__setitem__("matmuls", matmul_load(torch, args.phase_s))),
                         ("transformer", lambda: work.__setitem__("tokens", transformer_load(torch, args.phase_s))),
                         ("bursty", None),
                         ("idle_end", lambda: time.sleep(3.0))]:
            t0 = time.monotonic()
            rec.begin_window(name)
            if name == "bursty":
                fast = GpuMonitor([0], interval_s=0.005)
                with fast:
                    work["bursty_matmuls"] = matmul_load(torch, args.phase_s, duty=0.5)
                fp = np.array([x.power_w[0] for x in fast.trace()])
                ft = np.array([x.t_s for x in fast.trace()])
                changes = int(np.count_nonzero(np.diff(fp)))
                fast_report = {"interval_s": 0.005, "samples": int(fp.size), "power_changes": changes,
                               "mean_refresh_period_ms": float((ft[-1] - ft[0]) / max(1, changes) * 1e3)}
            else:
                fn()
            m = rec.end_window(name)
            reports.append(window_report(rec, name, t0, time.monotonic(), m.gpu_energy_j))
            print(json.dumps(reports[-1]), flush=True)
    summary = {
        "device": smi, "nvml_power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
        "gpu_static": gpu.static_info(), "cpu_static": rec.cpu.static_info() if rec.cpu else None,
        "gpu_sample_cost_ms": sample_cost_ms, "fast_sampling": fast_report, "work": work, "windows": reports,
        "gpu_gaps": gpu.gap_counts(),
    }
    (args.out / "gpu_energy_summary.json").write_text(json.dumps(summary, indent=1))
    rec.save_log(args.out / "gpu_energy_log.jsonl", meta={"script": "benchmarks/gpu_energy_check.py",
                                                           "device": smi})
    print(json.dumps({k: v for k, v in summary.items() if k != "windows"}, indent=1))
    print("gpu_energy_check: done")


if __name__ == "__main__":
    main()
