"""Helpers of the proxy unit tests: a scripted router, fast proxy configs and fake vLLM servers on 127.0.0.1.

The fake (``rlserve.testing.fake_openai_server``) stands in for vLLM because a real engine takes tens of seconds
to start; the integration tests in tests/integration/test_proxy_*.py repeat the key cases against real vLLM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from rlserve.serve import ProxyConfig, ReplicaSpec, RouterProxy
from rlserve.snapshot import ClusterSnapshot, ReplicaState
from rlserve.testing.fake_openai_server import FakeOpenAIServer, FakeServerConfig
from rlserve.workload.request import Request


class ScriptedRouter:
    """Chooses replicas from a fixed script (cycled) and records what it was shown."""

    name = "scripted"

    def __init__(self, script: Sequence[int]) -> None:
        self.script = list(script)
        self.requests: list[Request] = []
        self.states: list[tuple[ReplicaState, ...]] = []

    def reset(self, seed: int | None = None) -> None:
        self.requests.clear()
        self.states.clear()

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        self.requests.append(request)
        self.states.append(snapshot.replicas)
        return self.script[(len(self.requests) - 1) % len(self.script)]


def fast_config(urls: Sequence[str], **kw: Any) -> ProxyConfig:
    """A proxy config with probes fast enough for tests, listening on a free port."""
    replica_kw = kw.pop("replica_kw", {})
    base: dict[str, Any] = dict(port=0, health_interval_s=0.05, health_timeout_s=0.5, metrics_interval_s=0.05,
                                connect_timeout_s=1.0)
    base.update(kw)
    return ProxyConfig(replicas=tuple(ReplicaSpec(u, **replica_kw) for u in urls), **base)


@contextlib.asynccontextmanager
async def fakes(n: int, **cfg: Any) -> AsyncIterator[list[FakeOpenAIServer]]:
    """``n`` fake vLLM servers on free ports, each with its own config built from ``cfg``."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeOpenAIServer(FakeServerConfig(**cfg))) for _ in range(n)]


def proxy_at(urls: Sequence[str], router: Any = None, **kw: Any) -> RouterProxy:
    """A proxy (use as ``async with``) in front of ``urls`` (round robin unless a router is given)."""
    return RouterProxy(fast_config(urls, **kw), router)


def proxy_over(servers: Sequence[FakeOpenAIServer], router: Any = None, **kw: Any) -> RouterProxy:
    """A proxy (use as ``async with``) in front of fake ``servers``."""
    return proxy_at([s.base_url for s in servers], router, **kw)


def dead_url() -> str:
    """A 127.0.0.1 URL nothing listens on (a port just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def fake_process(*args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fake server in its own process (so a test can SIGKILL it mid-answer, as a crashed vLLM would die)."""
    url = dead_url()
    port = url.rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "rlserve.testing.fake_openai_server", "--port", port, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake server on {url} did not start (exit code {proc.poll()})")
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
