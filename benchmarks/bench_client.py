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

Prints ``bench_client_max_rps=<rate>`` last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

from rlserve.bench.datasets import SampleRequest
from rlserve.bench.runner import RunnerConfig, arrival_schedule, run_benchmark
from rlserve.telemetry.cpu import CpuMonitor
from rlserve.telemetry.monitor import Monitor
from rlserve.telemetry.vllm_metrics import VllmMetricsMonitor

TTFT_DELAY_S = 0.010
MAX_ADDED_TTFT_MS = 1.0


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
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "rlserve.testing.fake_openai_server", "--port", str(port),
                               "--ttft-delay-s", str(TTFT_DELAY_S), "--tokens-per-response", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                http("GET", f"{base_url}/fake/timings")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
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
