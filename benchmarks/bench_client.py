"""How fast can the benchmark client drive a server before its own overhead distorts TTFT? And what do the
monitors cost?

Setup: the fake streaming server (``rlserve.testing.fake_openai_server``) runs in its own process with a fixed
10 ms TTFT, so the server's timing is known and its CPU is not the client's. For each target rate (Poisson
arrivals, ~``--seconds`` of load) the client runs exactly as ``rlserve bench`` does and we compare:

- added TTFT error = client-measured TTFT - the server's own TTFT for the same requests (``/fake/timings``:
  handler entry to first chunk written). Means subtract exactly; p99s are compared as distributions;
- scheduling lag = actual send - scheduled send (the schedule is the seeded arrival process);
- achieved send rate vs the schedule's own rate (a finite Poisson draw is not exactly the target).

The lowest rate is the baseline, measured in the same run: its added TTFT error is the floor of this machine
(loopback round trips, process wake-ups; on a host whose cores are busy with other work this alone is a few
ms). A rate is *sustained* when every request succeeds, the achieved send rate is within 5 % of the schedule's and
the mean added TTFT error exceeds the baseline's by less than 1 ms: the error the load itself adds.
``client_cpu_ms_per_request`` is the client process's CPU time per request, the machine-independent cost.

Monitor cost: process CPU time over a few seconds with each monitor running at its default interval (vLLM
/metrics 0.5 s against the fake server, CPU 50 ms; the GPU monitor's cost was measured on an H200, see
docs/telemetry.md) minus the same idle period without monitors.

Peer in the same run (``--peer-rates``, on by default when the test suite's CPU vLLM venv exists): the real
``vllm bench serve`` drives the same fake server (10 ms TTFT, then a token every ``PEER_ITL_S``) with the same
request count, rate and lengths as our client, one after the other at each rate, and both clients' TTFT and ITL are
printed side by side with the server's own TTFT for the same requests, so each client's overhead is shown against
the reference client's. Without the venv it prints one line saying so.

Prints ``bench_client_max_rps=<rate>`` last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path

import numpy as np

from rlserve.bench.datasets import SampleRequest
from rlserve.bench.runner import RunnerConfig, arrival_schedule, run_benchmark
from rlserve.telemetry.cpu import CpuMonitor
from rlserve.telemetry.monitor import Monitor
from rlserve.telemetry.vllm_metrics import VllmMetricsMonitor

TTFT_DELAY_S = 0.010
MAX_ADDED_TTFT_MS = 1.0
PEER_ITL_S = 0.002
PEER_INPUT_LEN, PEER_OUTPUT_LEN = 32, 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str) -> dict:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def measure_rate(base_url: str, rate: float, seconds: float, seed: int) -> dict:
    n = max(50, int(rate * seconds))
    schedule = arrival_schedule(n, rate, 1.0, np.random.default_rng(seed))
    requests = [SampleRequest((101, 102, 103, 104), 4, 4)] * n
    http("DELETE", f"{base_url}/fake/timings")
    cpu0 = time.process_time()
    run = asyncio.run(run_benchmark(RunnerConfig(base_url=base_url, model="fake-model"), requests, schedule))
    cpu_ms = (time.process_time() - cpu0) / n * 1e3
    server_ttft = np.array(http("GET", f"{base_url}/fake/timings")["server_ttft_s"])
    ok = [o for o in run.outputs if o.success]
    client_ttft = np.array([o.ttft_s for o in ok])
    sends = np.array([o.send_s for o in run.outputs])
    lag = sends - run.scheduled_s
    achieved = (n - 1) / (sends.max() - sends.min())
    scheduled = (n - 1) / (run.scheduled_s[-1] - run.scheduled_s[0])  # the seeded draw's own rate
    added_mean_ms = (client_ttft.mean() - server_ttft.mean()) * 1e3 if len(ok) else float("inf")
    return {
        "target_rps": rate, "scheduled_rps": round(scheduled, 1), "requests": n, "failed": n - len(ok),
        "achieved_send_rps": round(achieved, 1),
        "added_ttft_mean_ms": round(added_mean_ms, 3),
        "added_ttft_p50_ms": round((np.median(client_ttft) - np.median(server_ttft)) * 1e3, 3) if len(ok) else None,
        "added_ttft_p99_ms": round((np.percentile(client_ttft, 99) - np.percentile(server_ttft, 99)) * 1e3, 3)
        if len(ok) else None,
        "server_ttft_mean_ms": round(server_ttft.mean() * 1e3, 3) if server_ttft.size else None,
        "sched_lag_mean_ms": round(lag.mean() * 1e3, 3), "sched_lag_p99_ms": round(np.percentile(lag, 99) * 1e3, 3),
        "client_cpu_ms_per_request": round(cpu_ms, 3),
        "ok": bool(len(ok) == n and achieved >= 0.95 * scheduled),
    }


def start_server(port: int, inter_token_delay_s: float = 0.0) -> subprocess.Popen[bytes]:
    """The fake server in its own process; returns once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "rlserve.testing.fake_openai_server", "--port", str(port),
                               "--ttft-delay-s", str(TTFT_DELAY_S), "--inter-token-delay-s", str(inter_token_delay_s),
                               "--tokens-per-response", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            http("GET", f"http://127.0.0.1:{port}/fake/timings")
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)


def _stats_ms(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": round(float(x.mean()) * 1e3, 3), "p50": round(float(np.median(x)) * 1e3, 3),
            "p99": round(float(np.percentile(x, 99)) * 1e3, 3)}


def peer_row(client: str, rate: float, n: int, ttft: np.ndarray, itl: np.ndarray, failed: int,
             server_ttft: np.ndarray) -> dict:
    """One client's TTFT/ITL at one rate, with the server's own TTFT for the same requests."""
    t, i = _stats_ms(ttft), _stats_ms(itl)
    server = float(server_ttft.mean()) * 1e3 if server_ttft.size else float("nan")
    return {"rate": rate, "client": client, "requests": n, "failed": failed,
            **{f"ttft_{k}_ms": v for k, v in t.items()}, **{f"itl_{k}_ms": v for k, v in i.items()},
            "server_ttft_mean_ms": round(server, 3),
            "added_ttft_mean_ms": round(t["mean"] - server, 3) if t["mean"] is not None else None}


def ours_at(base_url: str, rate: float, n: int, seed: int) -> dict:
    """Our client at ``rate`` with the peer's request shape."""
    schedule = arrival_schedule(n, rate, 1.0, np.random.default_rng(seed))
    reqs = [SampleRequest(tuple(range(100, 100 + PEER_INPUT_LEN)), PEER_INPUT_LEN, PEER_OUTPUT_LEN)] * n
    http("DELETE", f"{base_url}/fake/timings")
    run = asyncio.run(run_benchmark(RunnerConfig(base_url=base_url, model="fake-model"), reqs, schedule))
    server = np.array(http("GET", f"{base_url}/fake/timings")["server_ttft_s"])
    ok = [o for o in run.outputs if o.success]
    return peer_row("rlserve bench", rate, n, np.array([o.ttft_s for o in ok]),
                    np.array([x for o in ok for x in o.itl_s]), n - len(ok), server)


def vllm_at(vllm: Path, tokenizer: Path, base_url: str, rate: float, n: int, seed: int, out_dir: Path) -> dict:
    """``vllm bench serve`` at ``rate`` against the same server: its own result JSON (--save-detailed)."""
    http("DELETE", f"{base_url}/fake/timings")
    name = f"vllm-{rate:g}.json"
    cmd = [str(vllm), "bench", "serve", "--base-url", base_url, "--model", "fake-model", "--tokenizer",
           str(tokenizer), "--dataset-name", "random", "--random-input-len", str(PEER_INPUT_LEN),
           "--random-output-len", str(PEER_OUTPUT_LEN), "--ignore-eos", "--num-prompts", str(n), "--request-rate",
           str(rate), "--seed", str(seed), "--save-result", "--save-detailed", "--result-dir", str(out_dir),
           "--result-filename", name, "--disable-tqdm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}): {proc.stderr[-2000:]}")
    server = np.array(http("GET", f"{base_url}/fake/timings")["server_ttft_s"])
    # vLLM sends one test prompt before the run: it is the first request the server timed
    server = server[1:] if server.size == n + 1 else server
    data = json.loads((out_dir / name).read_text())
    ok = [i for i, e in enumerate(data["errors"]) if not e]
    return peer_row("vllm bench serve", rate, n, np.array([data["ttfts"][i] for i in ok]),
                    np.array([x for i in ok for x in data["itls"][i]]), n - len(ok), server)


def peer_comparison(rates: list[float], seconds: float) -> list[dict]:
    """Both clients against one fake server with a known ITL; empty (and a printed line) without vLLM."""
    from rlserve.testing.vllm_server import find_vllm_venv, make_model

    venv = find_vllm_venv()
    if venv is None:
        print("vllm bench serve: no CPU vLLM venv (python scripts/setup_vllm_cpu.py): peer not measured", flush=True)
        return []
    port = free_port()
    server = start_server(port, PEER_ITL_S)
    base_url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = make_model(Path(tmp) / "tiny-llama", "tiny", venv=venv)  # vLLM's random dataset needs one
            for i, rate in enumerate(rates):
                n = max(20, int(rate * seconds))
                runs = [partial(ours_at, base_url, rate, n, i),
                        partial(vllm_at, venv / "bin" / "vllm", tokenizer, base_url, rate, n, i, Path(tmp))]
                for run in runs if i % 2 == 0 else runs[::-1]:  # alternate who goes first: drift hits both
                    row = run()
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    print(f"\nsame fake server (TTFT {TTFT_DELAY_S * 1e3:g} ms, ITL {PEER_ITL_S * 1e3:g} ms), "
          f"{PEER_INPUT_LEN} in / {PEER_OUTPUT_LEN} out tokens, Poisson arrivals; ms")
    cols = ("ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "server_ttft_mean_ms", "added_ttft_mean_ms", "itl_mean_ms",
            "itl_p50_ms", "itl_p99_ms")
    print(f"{'req/s':>6}  {'client':<18}" + "".join(f"{c.removesuffix('_ms'):>20}" for c in cols) + f"{'failed':>8}")
    for r in rows:
        print(f"{r['rate']:>6g}  {r['client']:<18}" + "".join(
            f"{r[c]:>20.3f}" if r[c] is not None else f"{'-':>20}" for c in cols) + f"{r['failed']:>8d}")
    return rows


def monitor_cpu_cost(monitor: Monitor | None, seconds: float) -> float:
    """Fraction of one core the process used over ``seconds`` with ``monitor`` running (None = idle)."""
    if monitor is not None:
        monitor.start()
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = time.process_time(), time.monotonic()
    if monitor is not None:
        monitor.stop()
    return (c1 - c0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="20,100,250,400,500,750,1000,1500,2000", help="target req/s, ascending")
    ap.add_argument("--seconds", type=float, default=3.0, help="load per rate")
    ap.add_argument("--monitor-seconds", type=float, default=5.0)
    ap.add_argument("--peer-rates", default="20,100,250",
                    help="rates at which vllm bench serve runs beside our client ('' = no peer)")
    ap.add_argument("--peer-seconds", type=float, default=4.0, help="load per rate and client in the peer part")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.peer_rates:
        peer_comparison([float(r) for r in args.peer_rates.split(",")], args.peer_seconds)

    port = free_port()
    server = start_server(port)
    base_url = f"http://127.0.0.1:{port}"
    try:
        results = []
        for i, rate in enumerate(rates):
            r = measure_rate(base_url, rate, args.seconds, seed=i)
            base = results[0]["added_ttft_mean_ms"] if results else r["added_ttft_mean_ms"]
            r["added_ttft_over_baseline_ms"] = round(r["added_ttft_mean_ms"] - base, 3)
            r["sustained"] = bool(r.pop("ok") and r["added_ttft_over_baseline_ms"] < MAX_ADDED_TTFT_MS)
            results.append(r)
            print(json.dumps(r), flush=True)
            if not r["sustained"] and i > 0 and not results[-2]["sustained"]:
                break  # two failing rates in a row: higher ones will fail too
        idle = monitor_cpu_cost(None, args.monitor_seconds)
        kv = monitor_cpu_cost(VllmMetricsMonitor(base_url), args.monitor_seconds) - idle
        cpu = monitor_cpu_cost(CpuMonitor(), args.monitor_seconds) - idle
        print(json.dumps({"monitor_cpu_core_fraction": {"vllm_metrics_0.5s": round(kv, 4),
                                                        "cpu_50ms": round(cpu, 4), "idle_baseline": round(idle, 4)}}))
    finally:
        server.terminate()
        server.wait(10)
    sustained = [r["target_rps"] for r in results if r["sustained"]]
    print(f"bench_client_max_rps={max(sustained) if sustained else 0:g}")


if __name__ == "__main__":
    main()
