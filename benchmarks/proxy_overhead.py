"""Latency the router proxy adds, and how long its routing decisions take.

Setup (each in its own process, all on 127.0.0.1): two fake vLLM servers (``rlserve.testing.fake_openai_server``,
zero server time, so any latency is transport + proxy), one ``rlserve serve`` in front of them, and an open-loop
client (this process) sending streamed completions at a fixed rate on a precomputed schedule. At every rate the
client alternates phases *direct* (round robin over the two servers itself) and *proxy* (through ``rlserve serve``
with the round_robin router), ``--rounds`` times each, so drift on a shared machine hits both alike. Added latency
= proxy percentile - direct percentile of the end-to-end time of the whole streamed response, per rate.

Decision time is measured in this process: a :class:`RouterProxy` (not started) whose bookkeeping holds a loaded
cluster state (outstanding requests, engine metrics), calling :meth:`RouterProxy.decide` (snapshot build + router)
for every registered router, the PPO router included when it is registered.

Targets (issue 5): added p50 <= 0.5 ms, added p99 <= 2 ms, decision p99 <= 100 us.
The last line printed is ``proxy_added_p99_ms=<worst added p99 over the rates>`` of the proxy as ``rlserve serve``
runs it by default (uvloop when installed, else asyncio); the other loop's figure is printed just before it.

    python benchmarks/proxy_overhead.py                  # 200, 500, 1000 req/s, 4 s phases, 2 rounds
    python benchmarks/proxy_overhead.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from rlserve.policies import ROUTERS, make_router
from rlserve.serve import ProxyConfig, ReplicaSpec, RouterProxy
from rlserve.serve.runner import EVENT_LOOPS, loop_factory, single_threaded_torch
from rlserve.telemetry.vllm_metrics import VllmMetrics
from rlserve.workload.request import Request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


@contextlib.contextmanager
def processes(cmds: list[list[str]], urls: list[str]) -> Iterator[None]:
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for c in cmds]
    try:
        for url, proc in zip(urls, procs, strict=True):
            wait_ready(url, proc)
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


async def one_phase(session: aiohttp.ClientSession, urls: list[str], rate: float, duration_s: float,
                    body: bytes) -> dict[str, np.ndarray]:
    """Open-loop load: request i is sent at t0 + i / rate to urls[i % len(urls)]; returns per-request times."""
    n = int(rate * duration_s)
    e2e = np.full(n, np.nan)
    ttft = np.full(n, np.nan)
    lag = np.full(n, np.nan)
    headers = {"Content-Type": "application/json"}
    t0 = time.perf_counter() + 0.05  # perf_counter, not loop.time(): uvloop's clock ticks in milliseconds

    async def request(i: int) -> None:
        start = time.perf_counter()
        lag[i] = start - (t0 + i / rate)
        try:
            async with session.post(urls[i % len(urls)], data=body, headers=headers) as r:
                first = None
                async for _ in r.content.iter_any():
                    if first is None:
                        first = time.perf_counter()
                if r.status == 200 and first is not None:
                    end = time.perf_counter()
                    ttft[i], e2e[i] = first - start, end - start
        except aiohttp.ClientError:
            pass  # counted as a failure (NaN)

    tasks = []
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(request(i)))
    await asyncio.gather(*tasks)
    return {"e2e_s": e2e, "ttft_s": ttft, "lag_s": lag}


def pct(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if x.size else float("nan")


async def load_test(args: argparse.Namespace, paths: dict[str, list[str]]) -> list[dict[str, float]]:
    """Per rate: ``rounds`` x every mode in ``paths`` (``direct`` first), phases interleaved."""
    body = json.dumps({"model": "fake-model", "prompt": "hello " * 50, "max_tokens": args.tokens,
                       "stream": True}).encode()
    rows = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for urls in paths.values():  # warm up connections on every path
            await one_phase(session, urls, 200, 0.5, body)
        for rate in args.rates:
            runs: dict[str, list[dict[str, np.ndarray]]] = {mode: [] for mode in paths}
            for _ in range(args.rounds):
                for mode, urls in paths.items():
                    runs[mode].append(await one_phase(session, urls, rate, args.duration_s, body))
            merged = {m: {k: np.concatenate([r[k] for r in rs]) for k in rs[0]} for m, rs in runs.items()}
            row: dict[str, float] = {"rate": rate}
            for mode, d in merged.items():
                row[f"{mode}_p50_ms"] = pct(d["e2e_s"], 50) * 1e3
                row[f"{mode}_p99_ms"] = pct(d["e2e_s"], 99) * 1e3
                row[f"{mode}_failed"] = float(np.isnan(d["e2e_s"]).sum())
                row[f"{mode}_lag_p99_ms"] = pct(d["lag_s"], 99) * 1e3
                if mode != "direct":
                    row[f"{mode}_added_p50_ms"] = row[f"{mode}_p50_ms"] - row["direct_p50_ms"]
                    row[f"{mode}_added_p99_ms"] = row[f"{mode}_p99_ms"] - row["direct_p99_ms"]
            rows.append(row)
    return rows


def _loaded_proxy(router: object, num_replicas: int, rng: np.random.Generator) -> RouterProxy:
    """A RouterProxy (not started) whose bookkeeping holds a loaded cluster: outstanding requests, engine metrics."""
    specs = tuple(ReplicaSpec(f"http://127.0.0.1:{9000 + i}", max_num_seqs=64) for i in range(num_replicas))
    proxy = RouterProxy(ProxyConfig(replicas=specs), router)  # type: ignore[arg-type]
    for b in proxy.books:
        for rid in range(int(rng.integers(5, 40))):
            t = b.add(rid, 0.0, int(rng.integers(10, 2000)), int(rng.integers(10, 500)))
            if rid % 2:
                b.first_token(t, 0.1)
                b.tokens(t, 5)
            b.gate.in_flight += 1
        b.engine = VllmMetrics(kv_cache_usage=float(rng.uniform(0.1, 0.9)), num_requests_running=20,
                               num_requests_waiting=3, num_preemptions_total=1, num_gpu_blocks=8000, block_size=16)
    return proxy


class DecisionTimer:
    """Times :meth:`RouterProxy.decide` (snapshot build + router.select) for one router, in slices.

    Slices of all routers are interleaved (see ``main``), so a slow period of a shared host hits every router
    alike, and each router's result is the median over its slices of the per-slice p50 / p99 (the worst slice's
    p99 is reported too). Arrival times keep increasing across slices, as in a real run.
    """

    def __init__(self, router: object, num_replicas: int) -> None:
        self.rng = np.random.default_rng(0)
        self.proxy = _loaded_proxy(router, num_replicas, self.rng)
        self.decisions = 0
        self.slices: list[tuple[float, float]] = []  # (p50, p99) in microseconds

    def run(self, iterations: int) -> None:
        """One slice of ``iterations`` timed decisions."""
        times = np.empty(iterations)
        rng, decide = self.rng, self.proxy.decide
        for k in range(iterations):
            self.decisions += 1
            req = Request(id=self.decisions, arrival_s=1.0 + self.decisions * 1e-3,
                          prompt_tokens=int(rng.integers(10, 2000)), max_tokens=int(rng.integers(10, 500)))
            t0 = time.perf_counter()
            decide(req)
            times[k] = time.perf_counter() - t0
        self.slices.append((float(np.percentile(times, 50)) * 1e6, float(np.percentile(times, 99)) * 1e6))

    def summary(self) -> dict[str, float]:
        """Median p50 and p99 over the slices, and the worst slice's p99 (microseconds)."""
        p50s, p99s = zip(*self.slices, strict=True)
        return {"p50_us": float(np.median(p50s)), "p99_us": float(np.median(p99s)), "worst_p99_us": max(p99s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[200.0, 500.0, 1000.0])
    p.add_argument("--duration-s", type=float, default=4.0, help="length of one phase")
    p.add_argument("--rounds", type=int, default=2, help="direct/proxy phase pairs per rate")
    p.add_argument("--tokens", type=int, default=16, help="streamed tokens per response")
    p.add_argument("--decision-iterations", type=int, default=20_000, help="timed decisions per router")
    p.add_argument("--decision-slices", type=int, default=5, help="interleaved slices they are split into")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--ppo-checkpoint", default=None, help="PPO checkpoint to time (default: the shipped one)")
    p.add_argument("--client-loop", choices=EVENT_LOOPS, default="auto", help="event loop of the load client")
    p.add_argument("--quick", action="store_true", help="short smoke run (rates 50,100; 1 s phases; 1 round)")
    args = p.parse_args()
    if args.quick:
        args.rates, args.duration_s, args.rounds, args.decision_iterations = [50.0, 100.0], 1.0, 1, 2000

    print(f"# host: {os.cpu_count()} CPUs, python {sys.version.split()[0]}", flush=True)
    heuristics = sorted(name for name in ROUTERS if name != "ppo")
    timers = {(name, n): DecisionTimer(make_router(name, seed=0), n) for n in (2, 8) for name in heuristics}
    ppo_checkpoint = args.ppo_checkpoint or _shipped_ppo_checkpoint()
    if ppo_checkpoint is not None and Path(ppo_checkpoint).exists():
        ppo = make_router(f"ppo:{ppo_checkpoint}", seed=0)
        single_threaded_torch()  # as run_proxy does
        timers["ppo", int(ppo.num_replicas)] = DecisionTimer(ppo, int(ppo.num_replicas))  # type: ignore[attr-defined]
    # As run_proxy does once its router is built: decisions are timed in the proxy's conditions, and the load client
    # below is not stalled by full collections walking what was built (a PPO router's JIT compilation leaves ~90k
    # objects; a full collection of them takes ~120 ms: it stalled this client on the GPU host when frozen earlier).
    gc.collect()
    gc.freeze()
    for _ in range(args.decision_slices):  # interleaved: see DecisionTimer
        for timer in timers.values():
            timer.run(max(args.decision_iterations // args.decision_slices, 100))
    decisions = {f"{name}_{n}": timer.summary() for (name, n), timer in timers.items()}
    print(f"\nrouting decision time (snapshot build + router.select), microseconds: median over "
          f"{args.decision_slices} interleaved slices of the slice p50 / p99, and the worst slice's p99")
    print(f"{'router':<24}{'replicas':>9}{'p50':>9}{'p99':>9}{'worst p99':>11}")
    for (name, n) in timers:
        d = decisions[f"{name}_{n}"]
        print(f"{name:<24}{n:>9d}{d['p50_us']:>9.1f}{d['p99_us']:>9.1f}{d['worst_p99_us']:>11.1f}")
    if any(name == "ppo" for name, _ in timers):
        print(f"(ppo: {ppo_checkpoint})")
    else:
        print("ppo: no checkpoint (none shipped in this checkout; pass --ppo-checkpoint): not measured")

    fake_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    cmds = [[sys.executable, "-m", "rlserve.testing.fake_openai_server", "--port", u.rsplit(":", 1)[1]]
            for u in fake_urls]
    loops = ["asyncio"] + (["uvloop"] if loop_factory("auto") is not None else [])
    proxy_urls = {f"proxy_{loop}": f"http://127.0.0.1:{free_port()}" for loop in loops}
    for loop, url in zip(loops, proxy_urls.values(), strict=True):
        # the proxy as `rlserve serve --router round_robin` runs it, without importing every CLI verb
        code = (f"from rlserve.serve import ProxyConfig, ReplicaSpec, run_proxy; run_proxy(ProxyConfig(replicas="
                f"tuple(ReplicaSpec(u) for u in {fake_urls!r}), router='round_robin', port={url.rsplit(':', 1)[1]})"
                f", event_loop={loop!r})")
        cmds.append([sys.executable, "-c", code])
    paths = {"direct": [u + "/v1/completions" for u in fake_urls],
             **{mode: [url + "/v1/completions"] for mode, url in proxy_urls.items()}}
    with processes(cmds, [*fake_urls, *proxy_urls.values()]):
        with asyncio.Runner(loop_factory=loop_factory(args.client_loop)) as runner:
            rows = runner.run(load_test(args, paths))
        histograms = {mode: httpx.get(url + "/metrics").text for mode, url in proxy_urls.items()}

    print(f"\nend-to-end latency of a streamed {args.tokens}-token completion, ms ({args.rounds} x "
          f"{args.duration_s:g} s per mode and rate; two fake replicas; client loop {args.client_loop})")
    print(f"{'req/s':>7}  {'mode':<15}{'p50':>9}{'p99':>9}{'added p50':>11}{'added p99':>11}{'failed':>8}"
          f"{'client lag p99':>16}")
    for r in rows:
        for mode in paths:
            added = ("", "") if mode == "direct" else (f"{r[mode + '_added_p50_ms']:.3f}",
                                                      f"{r[mode + '_added_p99_ms']:.3f}")
            print(f"{r['rate']:>7.0f}  {mode:<15}{r[mode + '_p50_ms']:>9.3f}{r[mode + '_p99_ms']:>9.3f}"
                  f"{added[0]:>11}{added[1]:>11}{int(r[mode + '_failed']):>8d}{r[mode + '_lag_p99_ms']:>16.3f}")
    for mode, text in histograms.items():
        count = _sample(text, "rlserve_proxy_decision_seconds_count")
        total = _sample(text, "rlserve_proxy_decision_seconds_sum")
        print(f"{mode}: {count:.0f} decisions served, mean {total / max(count, 1) * 1e6:.1f} us")
    if args.json is not None:
        args.json.write_text(json.dumps({"load": rows, "decision_us": decisions}, indent=1))
    default = f"proxy_{loops[-1]}"  # what `rlserve serve` runs: uvloop when installed (--event-loop auto)
    for mode in proxy_urls:
        if mode != default:
            print(f"{mode}_added_p99_ms={max(r[mode + '_added_p99_ms'] for r in rows):.3f}")
    print(f"proxy_added_p99_ms={max(r[default + '_added_p99_ms'] for r in rows):.3f}")


def _shipped_ppo_checkpoint() -> Path | None:
    try:
        from rlserve.policies.ppo_router import DEFAULT_CHECKPOINT
    except ImportError:  # the PPO router needs torch
        return None
    return DEFAULT_CHECKPOINT


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")

if __name__ == "__main__":
    main()
