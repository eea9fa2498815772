"""Sim-to-real of routing: do routers rank the same on real vLLM servers as in the calibrated simulator?

Two real vLLM CPU servers of different speeds (the fixtures' ``tiny`` model, 2 layers, and ``large``, 6 layers,
served under one name), each calibrated with the ``rlserve calibrate`` logic (lone prefills and decode batches;
``--streams`` adds the calibration streams). The same timed request stream is sent through ``rlserve serve`` with
each router, and the calibrated two-replica cluster is simulated with the same router and the actual send times.
Per router: real and simulated TTFT/E2E (mean, p50, p90), the gain over round robin in both worlds, whether the
ranking by mean E2E agrees, and the gap between real and simulated gains.

Machine limits: this host has 2 cores shared with other work; both servers (two processes each), the proxy and the
load client share them, so the slower server is slow partly because of the others (the simulator's replicas are
independent), and absolute numbers drift with the host's load (each router runs once per repeat, interleaved).

    RLSERVE_VLLM_VENV=... .venv/bin/python benchmarks/sim_to_real_routing.py [--routers a,b] [--repeats 2]

Last line: ``sim_to_real_ranking_agreement=<fraction of router pairs ordered alike>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from rlserve.bench.calibrate import calibrate_server, model_spec, refine_with_streams
from rlserve.bench.fidelity import (
    WorkloadSpec,
    fresh_tokens,
    make_stream,
    real_side,
    replica_config,
    run_real,
    simulate_stream,
)
from rlserve.bench.profile import ProfileDesign
from rlserve.metrics import distribution
from rlserve.sim import build_perf_model
from rlserve.testing.vllm_server import VllmServer, free_port, make_model, require_vllm_venv

BATCHED_TOKENS = 2048
NAME = "m"
SPEC = WorkloadSpec("routing", 80, prompt=(32, 512), output=(16, 96), load=1.0)


def start_proxy(replicas_file: Path, router: str, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (work / f"proxy-{router}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "rlserve.cli.main", "serve", "--replicas-file", str(replicas_file),
                             "--router", router, "--port", str(port), "--metrics-interval-s", "0.5"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"proxy for {router} did not start; see {work / f'proxy-{router}.log'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routers", default="round_robin,least_outstanding,least_expected_latency")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rate", type=float, default=6.0, help="requests/s of the stream")
    ap.add_argument("--streams", action="store_true", help="also calibrate on request streams (slower)")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    routers = [r for r in args.routers.split(",") if r]
    venv = require_vllm_venv()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rlserve-routing-"))
    t0 = time.monotonic()
    servers = []
    for preset in ("tiny", "large"):
        model = make_model(work / "models" / preset, preset, venv=venv)
        servers.append(VllmServer(model, served_model_name=NAME, max_num_seqs=16, max_model_len=2048,
                                  extra_args=["--max-num-batched-tokens", str(BATCHED_TOKENS)],
                                  work_dir=work / f"server-{preset}", venv=venv).start())
    report: dict = {"routers": {}}
    try:
        twins, specs = [], []
        for server in servers:
            server.wait_ready()
            design = ProfileDesign(decode_contexts=(32, 256, 1024), decode_tokens=48, budget_s=150.0)
            spec_model = model_spec(str(server.model_dir))
            cal = calibrate_server(server.url, spec_model, design=design)
            if cal.fit is None or not cal.profile.complete:
                print(f"calibration of {server.model_dir.name} incomplete: {cal.profile.missing[:3]}")
                return 1
            twin = replica_config("unused", server.model_dir / "config.json",
                                  num_gpu_blocks=int(cal.profile.num_gpu_blocks or 0), block_size=32, max_num_seqs=16,
                                  max_num_batched_tokens=BATCHED_TOKENS, max_model_len=2048)
            if args.streams:
                cal = refine_with_streams(cal, twin, spec_model)
            path = cal.write(work / f"calib-{server.model_dir.name}.json", source="sim_to_real_routing")
            twin = replica_config(path, server.model_dir / "config.json",
                                  num_gpu_blocks=int(cal.profile.num_gpu_blocks or 0), block_size=32, max_num_seqs=16,
                                  max_num_batched_tokens=BATCHED_TOKENS, max_model_len=2048)
            perf = build_perf_model(twin)
            twins.append(twin)
            # what the proxy tells capability-aware routers: the calibrated model's capabilities (as the simulator)
            specs.append({"url": server.url, "max_num_seqs": 16, "decode_tokens_per_s": perf.decode_tokens_per_s,
                          "prefill_tokens_per_s": perf.prefill_tokens_per_s})
            print(f"[{time.monotonic() - t0:5.0f}s] {server.model_dir.name}: calibrated, fit median |err| "
                  f"{cal.fit.median_abs_err:.1%}; decode {perf.decode_tokens_per_s:.0f} tok/s", flush=True)
        replicas_file = work / "replicas.yaml"
        replicas_file.write_text(yaml.safe_dump({"replicas": specs}))
        base = make_stream(SPEC, args.rate, seed=3)
        results: dict[str, dict[str, list[dict]]] = {r: {"real": [], "sim": []} for r in routers}
        for rep in range(args.repeats):
            for router in routers:  # interleaved, so a slow period of the host hits every router alike
                stream = fresh_tokens(base, seed=200 + rep * 10 + routers.index(router))
                proc, url = start_proxy(replicas_file, router, work)
                try:
                    start, traces = run_real(url, NAME, stream)
                finally:
                    proc.terminate()
                    proc.wait(20)
                real, sent = real_side(start, traces)
                sim = simulate_stream(twins, stream, sent, router=router).records
                results[router]["real"].append({"ttft": real.values["ttft"], "e2e": real.values["e2e"]})
                results[router]["sim"].append({"ttft": distribution(sim.ttft_s), "e2e": distribution(sim.e2e_s),
                                               "split": np.bincount(sim.replica, minlength=2).tolist()})
                print(f"[{time.monotonic() - t0:5.0f}s] {router} repeat {rep}: real E2E mean "
                      f"{1e3 * real.values['e2e']['mean']:.0f} ms, sim {1e3 * np.mean(sim.e2e_s):.0f} ms", flush=True)
    finally:
        for server in servers:
            server.stop()

    def mean_of(router: str, world: str, metric: str, stat: str) -> float:
        return float(np.mean([r[metric][stat] for r in results[router][world]]))

    print(f"{'router':<24} {'world':<5} {'TTFT mean':>9} {'p50':>7} {'p90':>7} {'E2E mean':>9} {'p50':>7} {'p90':>7} "
          f"{'gain vs RR':>10}")
    gains: dict[str, dict[str, float]] = {}
    for router in routers:
        gains[router] = {}
        for world in ("real", "sim"):
            rr = mean_of("round_robin", world, "e2e", "mean") if "round_robin" in routers else float("nan")
            e2e = mean_of(router, world, "e2e", "mean")
            gains[router][world] = (rr - e2e) / rr
            print(f"{router:<24} {world:<5} " + " ".join(
                f"{1e3 * mean_of(router, world, m, s):>{9 if s == 'mean' else 7}.0f}"
                for m in ("ttft", "e2e") for s in ("mean", "p50", "p90")) + f" {gains[router][world]:>+10.1%}")
        report["routers"][router] = {"results": results[router], "gain_vs_round_robin": gains[router]}
    pairs = list(itertools.combinations(routers, 2))
    agree = [np.sign(mean_of(a, "real", "e2e", "mean") - mean_of(b, "real", "e2e", "mean"))
             == np.sign(mean_of(a, "sim", "e2e", "mean") - mean_of(b, "sim", "e2e", "mean")) for a, b in pairs]
    for router in routers:
        print(f"gain gap (sim - real) {router}: {gains[router]['sim'] - gains[router]['real']:+.1%}")
    report["ranking_agreement"] = float(np.mean(agree)) if agree else float("nan")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"sim_to_real_ranking_agreement={report['ranking_agreement']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
