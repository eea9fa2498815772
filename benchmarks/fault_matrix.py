"""Fault matrix: the bad-input corpus over every CLI verb, the proxy's fault scenarios, and lost requests under load.

Three parts, each counted by outcome (handled, clear error, traceback, hang, wrong result, data lost):

1. **CLI corpus** (``rlserve.testing.bad_inputs``): every case is run in-process as the console script runs it.
   ``clear error`` = exit 2 with one ``error:`` line before any work; a traceback, a hang (past the time limit), any
   other exit (``wrong result``) or an existing file changed / a partial output left behind (``data lost``) is bad.
2. **Proxy faults**: an ``rlserve serve`` proxy (in this process, on its own thread) in front of stand-in replicas
   (``rlserve.testing.fake_openai_server``; a real vLLM cannot be made to wedge or lie on demand) that wedge,
   close streams without ``[DONE]``, or serve garbage ``/metrics``, and clients that send crafted, huge or half-sent
   requests. ``handled`` = every request got a complete answer or an OpenAI-shaped error within its deadline and
   ``/health`` said what a request would meet.
3. **Lost requests under load**: an open-loop client sends streamed completions at ``--rate`` req/s through the
   proxy to two replicas; a third of the way in one replica is SIGKILLed (its own process), in a second run one is
   wedged (accepts, never answers). ``lost`` = a request that got neither a complete answer nor an OpenAI-shaped
   error (a hang past the client's patience, a reset connection, a truncated body). Failed-with-a-clear-error
   requests are counted separately (a stream cut mid-answer by a kill cannot be retried: the client holds half of it).

The last line is ``fault_matrix_bad_outcomes=<traceback + hang + wrong result + data lost + lost requests>``
(target 0).

    python benchmarks/fault_matrix.py                 # everything, 200 req/s for 6 s per load run
    python benchmarks/fault_matrix.py --quick         # 2 s load runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import httpx

from rlserve.policies import make_router
from rlserve.serve import ProxyConfig, ReplicaSpec, proxy_in_thread
from rlserve.testing.bad_inputs import CASES, classify, damage, materialise, run_cli, snapshot
from rlserve.testing.fake_openai_server import FakeServerConfig, serve_in_thread

OUTCOMES = ("handled", "clear error", "traceback", "hang", "wrong result", "data lost")
BODY = {"model": "fake-model", "prompt": "hello " * 20, "max_tokens": 8}


# ------------------------------------------------------------------------------------------------- CLI corpus
def cli_corpus(limit_s: float) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, argv, files in CASES:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            materialise(files, root)
            before = snapshot(root)
            outcome = run_cli([a.replace("{d}", d) for a in argv], timeout_s=limit_s)
            kind = classify(outcome)
            if kind == "clear error" and damage(before, root):
                kind = "data lost"
        counts[kind] += 1
        if kind != "clear error":
            print(f"  cli: {name}: {kind} ({type(outcome.exception).__name__ if outcome.exception else outcome.code})")
    return counts


# ------------------------------------------------------------------------------------------------ proxy faults
def _openai_error(status: int, text: str) -> bool:
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(err, dict) and err.get("code") == status and isinstance(err.get("message"), str)


@contextlib.contextmanager
def _cluster(n: int, router: str = "round_robin", **proxy_kw: object) -> Iterator[tuple[str, list, object]]:
    with contextlib.ExitStack() as stack:
        fakes = [stack.enter_context(serve_in_thread(FakeServerConfig())) for _ in range(n)]
        cfg = ProxyConfig(replicas=tuple(ReplicaSpec(f.base_url) for f in fakes), router=router, port=0,
                          health_interval_s=0.1, health_timeout_s=0.5, metrics_interval_s=0.1, **proxy_kw)
        proxy = stack.enter_context(proxy_in_thread(cfg))
        yield proxy.url, fakes, proxy


def _post(url: str, body: bytes | dict, timeout: float = 10.0) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    kw = {"json": body} if isinstance(body, dict) else {"content": body,
                                                          "headers": {"Content-Type": "application/json"}}
    r = httpx.post(url + "/v1/completions", timeout=timeout, **kw)  # type: ignore[arg-type]
    return r.status_code, r.text, time.perf_counter() - t0


def _scenario_wedge() -> bool:
    with _cluster(2, first_byte_timeout_s=0.5) as (url, fakes, proxy):
        fakes[0].config.completions_mode = "wedge"
        results = [_post(url, BODY) for _ in range(6)]
        health = httpx.get(url + "/health").json()
        return all(s == 200 and t < 2.0 for s, _, t in results) and health["replica_detail"][0]["stalled"]


def _scenario_no_done() -> bool:
    with _cluster(1) as (url, fakes, proxy):
        fakes[0].config.completions_mode = "no_done"
        r = httpx.post(url + "/v1/completions", json={**BODY, "stream": True}, timeout=10)
        events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
        return events[-1] == "[DONE]" and "upstream_truncated" in events[-2]


def _scenario_garbage_metrics() -> bool:
    with _cluster(2, router="least_kv") as (url, fakes, proxy):
        for f in fakes:
            f.config.metrics_mode = "garbage"
        time.sleep(0.5)
        ok = all(_post(url, BODY)[0] == 200 for _ in range(4))
        health = httpx.get(url + "/health")
        return ok and health.status_code == 200 and health.json()["status"] == "degraded"


def _scenario_router_failing() -> bool:
    class Broken:
        name = "broken"

        def reset(self, seed: int | None = None) -> None:
            pass

        def select(self, request: object, snapshot: object) -> int:
            raise ZeroDivisionError("policy bug")

    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(serve_in_thread(FakeServerConfig()))
        cfg = ProxyConfig(replicas=(ReplicaSpec(fake.base_url),), port=0)
        proxy = stack.enter_context(proxy_in_thread(cfg, Broken()))  # type: ignore[arg-type]
        s, text, _ = _post(proxy.url, BODY)
        return s == 500 and _openai_error(500, text) and httpx.get(proxy.url + "/health").status_code == 503


def _scenario_crafted_bodies() -> bool:
    bodies = [b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
              json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}).encode(),
              b"\xff\xfe", b"x" * (65 * 2**20)]
    with _cluster(1) as (url, fakes, proxy):
        results = [_post(url, b) for b in bodies]
        other = [httpx.get(url + "/v1/nope"), httpx.get(url + "/v1/completions")]
        return all(_openai_error(s, t) for s, t, _ in results) and \
            all(_openai_error(r.status_code, r.text) for r in other) and _post(url, BODY)[0] == 200


def _scenario_half_sent() -> bool:
    with _cluster(1, client_timeout_s=0.5) as (url, fakes, proxy):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-")
            s.settimeout(5)
            closed = s.recv(100) == b""
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            s.settimeout(5)
            answer = s.recv(4096)
        return closed and answer.startswith(b"HTTP/1.1 408")


def _scenario_no_credentials() -> bool:
    with serve_in_thread(FakeServerConfig()) as fake:
        host = fake.base_url.split("//", 1)[1]
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        cfg = ProxyConfig(replicas=(ReplicaSpec(f"http://user:s3cret@{host}"),
                                    ReplicaSpec(f"http://127.0.0.1:{dead_port}")), port=0, max_attempts=1)
        with proxy_in_thread(cfg, make_router("round_robin")) as proxy:
            metrics = httpx.get(proxy.url + "/metrics").text
            texts = [_post(proxy.url, BODY)[1] for _ in range(2)]
        return "s3cret" not in metrics and not any(str(dead_port) in t or "Connect" in t for t in texts)


PROXY_SCENARIOS: dict[str, Callable[[], bool]] = {
    "wedged replica (first-byte deadline)": _scenario_wedge,
    "stream without [DONE]": _scenario_no_done,
    "garbage /metrics with least_kv": _scenario_garbage_metrics,
    "router raising": _scenario_router_failing,
    "crafted, huge and unknown requests": _scenario_crafted_bodies,
    "half-sent head and body": _scenario_half_sent,
    "credentials and addresses": _scenario_no_credentials,
}


def proxy_faults() -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, scenario in PROXY_SCENARIOS.items():
        t0 = time.perf_counter()
        try:
            kind = "handled" if scenario() else "wrong result"
        except (httpx.TimeoutException, TimeoutError):
            kind = "hang"
        except Exception as exc:  # noqa: BLE001 (the outcome being classified)
            kind = "traceback"
            print(f"  proxy: {name}: {type(exc).__name__}: {exc}")
        counts[kind] += 1
        print(f"  proxy: {name}: {kind} ({time.perf_counter() - t0:.1f} s)")
    return counts


# ------------------------------------------------------------------------------------------------ load + faults
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy")


@contextlib.contextmanager
def _process(*argv: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fake replica (``fake``) or an ``rlserve serve`` proxy (``serve ...``) in its own process group."""
    port = _free_port()
    if argv[0] == "fake":
        cmd = [sys.executable, "-m", "rlserve.testing.fake_openai_server", "--port", str(port), *argv[1:]]
    else:
        cmd = [sys.executable, "-m", "rlserve.cli.main", *argv, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def _load(url: str, rate: float, duration_s: float, fault_at_s: float, fault: Callable[[], None],
                patience_s: float) -> Counter[str]:
    """Open-loop streamed completions; returns counts of complete / clear error / lost."""
    counts: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> None:
            try:
                async with asyncio.timeout(patience_s):
                    async with http.post(url + "/v1/completions", json={**BODY, "stream": True}) as r:
                        text = (await r.read()).decode()
            except (TimeoutError, aiohttp.ClientError):
                counts["lost"] += 1
                return
            if r.status != 200:
                counts["clear error" if _openai_error(r.status, text) else "lost"] += 1
                counts[f"http {r.status}"] += 1
                return
            events = [e[6:] for e in text.split("\n\n") if e.startswith("data: ")]
            if events and events[-1] == "[DONE]" and not any('"error"' in e for e in events):
                counts["complete"] += 1
            elif events and events[-1] == "[DONE]":
                counts["clear error"] += 1  # an error event: the stream was cut mid-answer and said so
                counts["cut mid-stream"] += 1
            else:
                counts["lost"] += 1

        tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = int(rate * duration_s)
        faulted = False
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            if not faulted and loop.time() - t0 >= fault_at_s:
                await loop.run_in_executor(None, fault)
                faulted = True
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return counts


def load_with_faults(rate: float, duration_s: float) -> dict[str, Counter[str]]:
    """Each component in its own process as deployed (client here, ``rlserve serve``, replicas), except the replica
    to be wedged, which lives in this process so that its completions can be switched to never answering while its
    /health still answers (what a hung engine looks like)."""
    out: dict[str, Counter[str]] = {}
    patience_s = 10.0
    fake = ("fake", "--inter-token-delay-s", "0.005")
    proxy_flags = ("--router", "round_robin", "--health-interval-s", "0.2", "--metrics-interval-s", "0.5",
                   "--first-byte-timeout-s", "1")
    with _process(*fake) as (victim, victim_proc), _process(*fake) as (survivor, _), \
            _process("serve", "--replica", victim, "--replica", survivor, *proxy_flags) as (proxy, _):
        out["kill"] = asyncio.run(_load(proxy, rate, duration_s, duration_s / 3, victim_proc.kill, patience_s))
    with serve_in_thread(FakeServerConfig(inter_token_delay_s=0.005)) as wedged, _process(*fake) as (survivor, _), \
            _process("serve", "--replica", wedged.base_url, "--replica", survivor, *proxy_flags) as (proxy, _):

        def wedge() -> None:
            wedged.config.completions_mode = "wedge"

        out["wedge"] = asyncio.run(_load(proxy, rate, duration_s, duration_s / 3, wedge, patience_s))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests per second of the load runs")
    p.add_argument("--duration-s", type=float, default=6.0, help="length of each load run")
    p.add_argument("--cli-limit-s", type=float, default=60.0, help="a CLI case running longer is a hang")
    p.add_argument("--quick", action="store_true", help="2 s load runs")
    a = p.parse_args()
    duration = 2.0 if a.quick else a.duration_s
    import logging

    logging.disable(logging.WARNING)  # the proxy logs every replica going down; the counts below say it all
    print(f"CLI corpus ({len(CASES)} cases):")
    cli = cli_corpus(a.cli_limit_s)
    print(f"proxy fault scenarios ({len(PROXY_SCENARIOS)}):")
    proxy = proxy_faults()
    print(f"load: {a.rate:g} req/s for {duration:g} s, replica 0 killed / wedged a third of the way in:")
    load = load_with_faults(a.rate, duration)
    total = cli + proxy
    print()
    print(f"{'part':<12}" + "".join(f"{o:>14}" for o in OUTCOMES))
    for label, c in (("cli corpus", cli), ("proxy", proxy), ("total", total)):
        print(f"{label:<12}" + "".join(f"{c.get(o, 0):>14}" for o in OUTCOMES))
    lost = 0
    for fault, c in load.items():
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()) if k.startswith(("http", "cut")))
        sent = c["complete"] + c["clear error"] + c["lost"]
        print(f"load_{fault}: sent={sent} complete={c['complete']} clear_error={c['clear error']} lost={c['lost']}"
              + (f" ({detail})" if detail else ""))
        print(f"proxy_lost_requests_{fault}={c['lost']}")
        lost += c["lost"]
    bad = sum(total.get(o, 0) for o in ("traceback", "hang", "wrong result", "data lost")) + lost
    print(f"fault_matrix_bad_outcomes={bad}")


if __name__ == "__main__":
    main()
