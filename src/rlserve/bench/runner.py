"""The benchmark runner: readiness check, warm-up, then requests sent on a precomputed schedule.

The arrival schedule (:func:`arrival_schedule`) is drawn once from a seed before anything is sent, using the same
arrival processes as the simulator (:mod:`rlserve.workload.arrivals`), so a simulated run and a real benchmark
see the same load for a seed. The runner only sleeps until each scheduled time and launches the request as a task;
``max_concurrency`` caps requests in flight (later ones wait client-side, as in ``vllm bench serve``), and each
request's intended time is kept next to its actual send time so client lag is visible in the result.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from rlserve.bench.datasets import SampleRequest
from rlserve.bench.request import REQUEST_FUNCS, RequestOutput
from rlserve.errors import BackendError, ConfigError
from rlserve.telemetry.monitor import Measurement
from rlserve.telemetry.recorder import Recorder
from rlserve.workload import arrivals


def arrival_schedule(n: int, request_rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Send times in seconds from the start: all at 0 for an infinite rate, Poisson for ``burstiness == 1``,
    gamma gaps otherwise (``vllm bench serve --burstiness`` semantics)."""
    if math.isinf(request_rate):
        return np.zeros(n)
    if burstiness == 1.0:
        return arrivals.poisson(request_rate, n, rng)
    return arrivals.gamma(request_rate, burstiness, n, rng)


@dataclass(frozen=True)
class RunnerConfig:
    """How to talk to the server and pace the load (see ``rlserve bench --help``)."""

    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = "/v1/completions"
    model: str | None = None
    """``None``: the first model the server lists at ``/v1/models``."""
    max_concurrency: int | None = None
    num_warmups: int = 0
    ready_timeout_s: float = 120.0
    request_timeout_s: float = 3600.0
    ignore_eos: bool = True

    def __post_init__(self) -> None:
        if self.endpoint not in REQUEST_FUNCS:
            raise ConfigError(f"unsupported --endpoint {self.endpoint!r}; choose one of {sorted(REQUEST_FUNCS)}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")


@dataclass
class BenchRun:
    """Raw outcome of a run: per-request outputs in dataset order plus the run's clock and energy window."""

    model: str
    outputs: list[RequestOutput]
    scheduled_s: np.ndarray  # intended send times, monotonic seconds
    start_s: float
    end_s: float
    measurement: Measurement | None  # recorder window over the whole run (None without a recorder)

    @property
    def duration_s(self) -> float:
        """Wall time from the first scheduled send to the last completion."""
        return self.end_s - self.start_s


async def wait_ready(session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> None:
    """Poll ``/health`` until it answers 200; :class:`BackendError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            async with session.get(f"{base_url}/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise BackendError(f"server at {base_url} not ready after {timeout_s:g} s ({last}); is it running? "
                               "raise --ready-timeout-s for slow starts")
        await asyncio.sleep(0.25)


async def resolve_model(session: aiohttp.ClientSession, base_url: str) -> str:
    """The first model id the server lists."""
    try:
        async with session.get(f"{base_url}/v1/models") as resp:
            data = await resp.json(content_type=None)
        return str(data["data"][0]["id"])
    except (TimeoutError, aiohttp.ClientError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise BackendError(f"could not list models at {base_url}/v1/models ({exc}); pass --model") from exc


async def run_benchmark(cfg: RunnerConfig, requests: Sequence[SampleRequest], arrival_s: np.ndarray,
                        recorder: Recorder | None = None,
                        on_done: Callable[[RequestOutput], None] | None = None) -> BenchRun:
    """Check readiness, warm up, send ``requests`` at ``arrival_s`` (seconds from start) and collect outputs.

    The recorder, if given, is started before the warm-up (so traces include the idle lead-in) and measures
    one window, ``"benchmark"``, from the first send to the last completion.
    """
    if len(arrival_s) != len(requests):
        raise ConfigError(f"{len(requests)} requests but {len(arrival_s)} arrival times")
    func = REQUEST_FUNCS[cfg.endpoint]
    base = cfg.base_url.rstrip("/")
    connector = aiohttp.TCPConnector(limit=cfg.max_concurrency or 0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await wait_ready(session, base, cfg.ready_timeout_s)
        model = cfg.model or await resolve_model(session, base)
        if recorder is not None:
            recorder.start()
        try:
            for req in list(requests)[: cfg.num_warmups]:
                warm = await func(session, base, model, req, cfg.ignore_eos)
                if not warm.success:
                    raise BackendError(f"warm-up request failed ({warm.error}); check --endpoint and --model")
            sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None

            async def one(req: SampleRequest) -> RequestOutput:
                if sem is None:
                    out = await func(session, base, model, req, cfg.ignore_eos)
                else:
                    async with sem:
                        out = await func(session, base, model, req, cfg.ignore_eos)
                if on_done is not None:
                    on_done(out)
                return out

            if recorder is not None:
                recorder.begin_window("benchmark")
            start = time.monotonic()
            scheduled = start + np.asarray(arrival_s, dtype=np.float64)
            tasks = []
            for req, at in zip(requests, scheduled, strict=True):
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(req)))
            outputs = list(await asyncio.gather(*tasks))
            end = time.monotonic()
            measurement = recorder.end_window("benchmark") if recorder is not None else None
        finally:
            if recorder is not None:
                recorder.stop()
    return BenchRun(model, outputs, scheduled, start, end, measurement)
