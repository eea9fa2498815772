"""Simulator fidelity against real vLLM: calibrate on a profiling set, then compare held-out request streams.

Two real vLLM CPU servers, the test fixtures' models (``tiny``: 2 layers; ``large``: 6 layers, with a small KV
cache so that one workload preempts), each pinned to its own core when the machine has two. For each server:

1. ``rlserve calibrate`` logic (lone prefills, decode batches, KV config from /metrics) -> a calibration file;
   no held-out request is part of it;
2. held-out workloads (other length mixes; 0.25 / 0.55 / 0.85 of the server's saturation throughput, measured on
   the calibration mix and scaled to each mix by the simulator's ratio; a bursty one; one with shared prefixes; one
   that preempts): the identical timed request stream is replayed
   against the server (token-id prompts, streamed, every chunk's token count recorded) and simulated with the
   actual send times; ``--repeats`` replays of each (same lengths and arrivals, fresh token ids so no repeat hits
   the prefix cache of the one before);
3. per workload: relative error (sim - real) / real of TTFT, per-token ITL and E2E at p50/p90/p99, mean over
   repeats with the spread (min..max), and the noise floor: |real repeat i - real repeat 0| / real repeat 0.

Last lines: ``sim_fidelity_median_ttft_p50_err=<fraction>`` and ``sim_fidelity_median_e2e_p50_err=<fraction>``,
medians over workloads of the |mean error| (targets 0.15 and 0.07; BLIS reports 0.176 and 0.067).

    RLSERVE_VLLM_VENV=... .venv/bin/python benchmarks/sim_fidelity.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rlserve.bench.calibrate import CALIBRATION_MIX, calibrate_server, fit_length, model_spec, refine_with_streams
from rlserve.bench.fidelity import (
    METRICS,
    PCTS,
    WorkloadSpec,
    fresh_tokens,
    make_stream,
    measure_capacity,
    real_side,
    relative_errors,
    replica_config,
    run_real,
    saturation_rate,
    sim_side,
    simulate_stream,
)
from rlserve.bench.profile import ProfileDesign
from rlserve.errors import BackendError
from rlserve.perf.config import PerfConfig
from rlserve.testing.vllm_server import VllmServer, make_model, require_vllm_venv

BATCHED_TOKENS = 2048
SERVERS = {
    # name: (preset, max_model_len, num_gpu_blocks_override, decode contexts profiled)
    "tiny": ("tiny", 2048, None, (32, 256, 1024)),
    "large": ("large", 1024, 96, (32, 256, 640)),
}
MIX = dict(prompt=(32, 512), output=(16, 128))
WORKLOADS = {
    "tiny": [
        WorkloadSpec("light", 80, load=0.25, **MIX),  # type: ignore[arg-type]
        WorkloadSpec("medium", 100, load=0.55, **MIX),  # type: ignore[arg-type]
        WorkloadSpec("near_saturation", 120, load=0.85, **MIX),  # type: ignore[arg-type]
        WorkloadSpec("long_prompt", 80, prompt=(700, 1500), output=(8, 32), load=0.5),
        WorkloadSpec("bursty", 100, load=0.55, burstiness=0.2, **MIX),  # type: ignore[arg-type]
        WorkloadSpec("prefix_sharing", 100, prompt=(16, 128), output=(16, 64), load=0.55, num_prefixes=4,
                     prefix_tokens=384),
    ],
    "large": [
        WorkloadSpec("large_medium", 60, prompt=(32, 256), output=(16, 96), load=0.55),
        WorkloadSpec("large_preempting", 24, prompt=(100, 200), output=(250, 400), load=0.9,
                     note="KV cache of 96 blocks x 32 tokens: concurrent long outputs preempt"),
    ],
}


def pin(server: VllmServer, cpu: int) -> None:
    """Pin every thread of the server's process group (API server + engine core) to one core."""
    pgid = server.pid
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            for task in (proc / "task").iterdir():
                os.sched_setaffinity(int(task.name), {cpu})
        except (ProcessLookupError, PermissionError, FileNotFoundError, OSError):
            continue


def fmt(x: float) -> str:
    return f"{x:+6.1%}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib-budget-s", type=float, default=150.0)
    ap.add_argument("--servers", default="tiny,large")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--pin", action="store_true",
                    help="pin each server (its API server and engine process together) to its own core; the two "
                         "processes then time-slice that one core")
    ap.add_argument("--lone-points-only", action="store_true",
                    help="calibrate on lone prefills and decode batches only (no calibration streams)")
    args = ap.parse_args()
    venv = require_vllm_venv()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rlserve-fidelity-"))
    names = [n for n in args.servers.split(",") if n]
    cpus = sorted(os.sched_getaffinity(0))
    t_start = time.monotonic()
    report: dict[str, dict] = {"workloads": {}, "calibration": {}, "load_average": {}}
    for i, name in enumerate(names):
        preset, max_len, blocks, contexts = SERVERS[name]
        model = make_model(work / "models" / name, preset, venv=venv)
        server = VllmServer(model, max_num_seqs=16, max_model_len=max_len, num_gpu_blocks_override=blocks,
                            extra_args=["--max-num-batched-tokens", str(BATCHED_TOKENS)],
                            work_dir=work / f"server-{name}", venv=venv).start()
        try:
            server.wait_ready()
            where = "unpinned"
            if args.pin and len(cpus) > i:
                pin(server, cpus[i])
                where = f"pinned to cpu {cpus[i]}"
            print(f"[{time.monotonic() - t_start:5.0f}s] {name} ready in {server.startup_s:.0f}s ({where}); "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
            design = ProfileDesign(decode_contexts=contexts, decode_tokens=64, prefill_repeats=3, decode_repeats=3,
                                   max_model_len=max_len, budget_s=args.calib_budget_s,
                                   prefill_sizes=tuple(s for s in (16, 64, 128, 256, 512, 768, 1024, 1536)
                                                       if s < max_len))
            spec_model = model_spec(str(server.model_dir))
            cal = calibrate_server(server.url, spec_model, design=design, progress=lambda line: None)
            if cal.fit is None or not cal.profile.complete:
                print(f"{name}: calibration incomplete ({cal.profile.missing[:3]}); raise --calib-budget-s")
                return 1
            print(f"[{time.monotonic() - t_start:5.0f}s] {name} lone-point fit: median |err| "
                  f"{cal.fit.median_abs_err:.1%}", flush=True)
            replica = replica_config("unused", server.model_dir / "config.json",
                                     num_gpu_blocks=int(cal.profile.num_gpu_blocks or 0), block_size=32,
                                     max_num_seqs=16, max_num_batched_tokens=BATCHED_TOKENS, max_model_len=max_len)
            if not args.lone_points_only:
                cal = refine_with_streams(cal, dataclasses.replace(replica, perf=PerfConfig()), spec_model,
                                          max_model_len=max_len,
                                          progress=lambda line: print("   " + line, flush=True))
            path = cal.write(work / f"calib-{name}.json", source=f"benchmarks/sim_fidelity.py ({name})")
            print(f"[{time.monotonic() - t_start:5.0f}s] {name} calibrated in {cal.profile.elapsed_s:.0f}s "
                  f"({len(cal.profile.prefills)} prefills, {len(cal.profile.decodes)} decode batches, "
                  f"{len(cal.profile.rejected)} rejected); fit median |err| {cal.fit.median_abs_err:.1%}", flush=True)
            print("   " + cal.fit.table().replace("\n", "\n   "), flush=True)
            report["calibration"][name] = {"knobs": cal.fit.knobs, "median_abs_err": cal.fit.median_abs_err,
                                           "terms": cal.fit.terms}
            replica = dataclasses.replace(replica, perf=PerfConfig(calibration=str(path)))
            calib_mix = fit_length(CALIBRATION_MIX, max_len)
            for spec in WORKLOADS[name]:
                # the real server's saturation throughput: measured once on the calibration mix (a measurement
                # per workload drifted 2x with the host's load), scaled to this mix by the simulator's ratio
                sim_capacity = saturation_rate([replica], spec)
                if cal.capacity_rps is None:
                    capacity = measure_capacity(server.url, server.model_name, spec, seed=7)[0]
                else:
                    capacity = cal.capacity_rps * sim_capacity / saturation_rate([replica], calib_mix)
                rate = spec.load * capacity
                base = make_stream(spec, rate, seed=1)
                errs, reals, sims = [], [], []
                for r in range(args.repeats):
                    stream = fresh_tokens(base, seed=100 + r)
                    try:
                        start, traces = run_real(server.url, server.model_name, stream)
                    except BackendError as exc:  # reported, and the workload left out of the medians
                        print(f"     {name}/{spec.name} repeat {r}: {exc}", flush=True)
                        break
                    real, sent = real_side(start, traces)
                    result = simulate_stream([replica], stream, sent)
                    sim = sim_side(result)
                    errs.append(relative_errors(sim, real))
                    reals.append(real)
                    sims.append(result.summary().preemptions_total)
                if not errs:
                    continue
                noise = {k: [abs(relative_errors(reals[i], reals[0])[k]) for i in range(1, len(reals))]
                         for k in errs[0]}
                row = {k: {"mean": float(np.mean([e[k] for e in errs])), "min": float(min(e[k] for e in errs)),
                           "max": float(max(e[k] for e in errs)),
                           "noise": float(np.mean(noise[k])) if noise[k] else float("nan")} for k in errs[0]}
                report["workloads"][f"{name}/{spec.name}"] = {"rate": rate, "capacity_real": capacity,
                                                              "capacity_sim": sim_capacity,
                                                              "errors": row, "sim_preemptions": sims,
                                                              "real_p50": {m: reals[0].values[m]["p50"]
                                                                           for m in METRICS}}
                print(f"[{time.monotonic() - t_start:5.0f}s] {name}/{spec.name}: {spec.num_requests} requests at "
                      f"{rate:.2f} req/s ({spec.load:.0%} of the saturation {capacity:.2f} req/s; "
                      f"simulated saturation {sim_capacity:.2f}), {args.repeats} repeats, sim preemptions {sims}",
                      flush=True)
                for m in METRICS:
                    cells = "  ".join(f"{p} {fmt(row[f'{m}_{p}']['mean'])} [{fmt(row[f'{m}_{p}']['min'])}.."
                                      f"{fmt(row[f'{m}_{p}']['max'])}] noise {row[f'{m}_{p}']['noise']:.1%}"
                                      for p in PCTS)
                    print(f"     {m:<5} real p50 {1e3 * reals[0].values[m]['p50']:8.1f} ms | {cells}", flush=True)
            report["load_average"][name] = os.getloadavg()[0]
        finally:
            server.stop()
    rows = report["workloads"].values()
    summary = {}
    for m in METRICS:
        for p in PCTS:
            k = f"{m}_{p}"
            summary[k] = {"sim_err": float(np.nanmedian([abs(r["errors"][k]["mean"]) for r in rows])),
                          "noise": float(np.nanmedian([r["errors"][k]["noise"] for r in rows]))}
    report["median"] = summary
    print("median over workloads of |mean error| (and of the real-vs-real noise floor):")
    for k, v in summary.items():
        print(f"  {k:<9} sim {v['sim_err']:6.1%}   noise floor {v['noise']:6.1%}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"sim_fidelity_median_ttft_p50_err={summary['ttft_p50']['sim_err']:.4f}")
    print(f"sim_fidelity_median_e2e_p50_err={summary['e2e_p50']['sim_err']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
