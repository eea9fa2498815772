"""The benchmark runner: readiness check, warm-up, then requests sent on a precomputed schedule.

The arrival schedule (:func:`arrival_schedule`) is drawn once from a seed before anything is sent, using the same
arrival processes as the simulator (:mod:`rlserve.workload.arrivals`), so a simulated run and a real benchmark
see the same load for a seed. The runner only sleeps until each scheduled time and launches the request as a task;
``max_concurrency`` caps requests in flight (later ones wait client-side, as in ``vllm bench serve``), and each
request's intended time is kept next to its actual send time so client lag is visible in the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from rlserve.bench.datasets import SampleRequest
from rlserve.bench.redact import redact_url
from rlserve.bench.request import REQUEST_FUNCS, RequestOptions, RequestOutput
from rlserve.errors import BackendError, ConfigError
from rlserve.telemetry.monitor import Measurement
from rlserve.telemetry.recorder import Recorder
from rlserve.workload import arrivals

RAMP_UP_STRATEGIES = ("linear", "exponential")


@dataclass(frozen=True)
class RampUp:
    """``--ramp-up-strategy`` with ``--ramp-up-start-rps``/``--ramp-up-end-rps``: the rate of request ``i`` of
    ``n`` is ``start + (end - start) * i / (n - 1)`` (linear) or ``start * (end / start) ** (i / (n - 1))``
    (exponential), as ``vllm bench serve`` computes it."""

    strategy: str
    start_rps: float
    end_rps: float

    def __post_init__(self) -> None:
        if self.strategy not in RAMP_UP_STRATEGIES:
            raise ConfigError(f"--ramp-up-strategy must be one of {', '.join(RAMP_UP_STRATEGIES)}, "
                              f"got {self.strategy!r}")
        if not (0 <= self.start_rps <= self.end_rps) or not math.isfinite(self.end_rps):
            raise ConfigError("--ramp-up-start-rps and --ramp-up-end-rps must be finite with "
                              f"0 <= start <= end, got {self.start_rps:g} and {self.end_rps:g}")
        if self.strategy == "exponential" and self.start_rps == 0:
            raise ConfigError("--ramp-up-strategy exponential needs --ramp-up-start-rps > 0")

    def rates(self, n: int) -> np.ndarray:
        """The rate in force when each of ``n`` requests is drawn."""
        progress = np.arange(n, dtype=np.float64) / max(n - 1, 1)
        if self.strategy == "linear":
            return self.start_rps + (self.end_rps - self.start_rps) * progress
        return self.start_rps * (self.end_rps / self.start_rps) ** progress


def arrival_schedule(n: int, request_rate: float, burstiness: float, rng: np.random.Generator,
                     ramp_up: RampUp | None = None) -> np.ndarray:
    """Send times in seconds from the start: all at 0 for an infinite rate, Poisson for ``burstiness == 1``,
    gamma gaps otherwise (``vllm bench serve --burstiness`` semantics); with ``ramp_up`` each gap is drawn at the
    rate in force for its request (the first request leaves at 0; a rate of 0 at the start is skipped over as
    vLLM does, by sending at once)."""
    if not burstiness > 0:
        raise ConfigError(f"--burstiness must be > 0, got {burstiness:g}")
    if ramp_up is not None:
        rates = ramp_up.rates(n)[1:]
        with np.errstate(divide="ignore"):
            gaps = np.where(rates > 0, rng.gamma(burstiness, 1.0, n - 1) / (np.maximum(rates, 1e-300) * burstiness),
                            0.0)
        return np.concatenate(([0.0], np.cumsum(gaps)))
    if not request_rate > 0:
        raise ConfigError(f"--request-rate must be > 0, got {request_rate:g}")
    if math.isinf(request_rate) or n == 1:
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
    request: RequestOptions = RequestOptions()
    api_key: str | None = None
    """Sent as ``Authorization: Bearer`` (``--api-key``, else ``$OPENAI_API_KEY``, as vLLM's client does)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra headers on every request (``--header KEY=VALUE``)."""
    probe_request_rate: float = 0.0
    """Single-token probes per second sent beside the load, outside ``max_concurrency`` (0 = none)."""

    def __post_init__(self) -> None:
        if self.endpoint not in REQUEST_FUNCS:
            raise ConfigError(f"unsupported --endpoint {self.endpoint!r}; choose one of {sorted(REQUEST_FUNCS)}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.num_warmups < 0:
            raise ConfigError(f"--num-warmups must be >= 0, got {self.num_warmups}")
        if redact_url(self.base_url) != self.base_url and (
                self.api_key or any(k.lower() == "authorization" for k in self.headers)):
            raise ConfigError("credentials in --base-url and an API key (--api-key, $OPENAI_API_KEY or an "
                              "Authorization header) exclude each other: give one")
        if not (0 <= self.probe_request_rate < math.inf):
            raise ConfigError(f"--probe-request-rate must be a finite rate >= 0, got {self.probe_request_rate:g}")

    def session_headers(self) -> dict[str, str]:
        """Headers sent with every request: the bearer token first, ``--header`` values may override it."""
        auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {**auth, **self.headers}


@dataclass
class BenchRun:
    """Raw outcome of a run: per-request outputs in dataset order plus the run's clock and energy window."""

    model: str
    outputs: list[RequestOutput]
    scheduled_s: np.ndarray  # intended send times, monotonic seconds
    start_s: float
    end_s: float
    measurement: Measurement | None  # recorder window over the whole run (None without a recorder)
    probes: list[RequestOutput] = field(default_factory=list)  # --probe-request-rate outputs, send order

    @property
    def duration_s(self) -> float:
        """Wall time from the first scheduled send to the last completion."""
        return self.end_s - self.start_s


async def wait_ready(session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> None:
    """Poll ``/health`` until it answers 200; :class:`BackendError` after ``timeout_s``. Error messages name the
    server without credentials."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            async with session.get(f"{base_url}/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise BackendError(f"server at {redact_url(base_url)} not ready after {timeout_s:g} s ({last}); is it "
                               "running? raise --ready-timeout-s for slow starts")
        await asyncio.sleep(0.25)


async def resolve_model(session: aiohttp.ClientSession, base_url: str) -> str:
    """The first model id the server lists; a 401/403 says which flag carries the key."""
    where = f"{redact_url(base_url)}/v1/models"
    try:
        async with session.get(f"{base_url}/v1/models") as resp:
            if resp.status in (401, 403):
                raise BackendError(f"{where} answered HTTP {resp.status}: the server wants an API key; pass "
                                   "--api-key KEY or set OPENAI_API_KEY")
            data = await resp.json(content_type=None)
        return str(data["data"][0]["id"])
    except (TimeoutError, aiohttp.ClientError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise BackendError(f"could not list models at {where} ({type(exc).__name__}); pass --model") from exc


PROBE_REQUEST = SampleRequest((100,), 1, 1)
"""A one-token prompt asking for one token: its latency is the server's stall, not its work."""


async def _probe_loop(session: aiohttp.ClientSession, cfg: RunnerConfig, base: str, model: str,
                      stop: asyncio.Event, out: list[RequestOutput]) -> None:
    """Send a probe every ``1 / probe_request_rate`` seconds until ``stop`` (each probe in its own task, so a
    stalled server does not slow the probe clock down)."""
    func = REQUEST_FUNCS[cfg.endpoint]
    tasks: list[asyncio.Task[RequestOutput]] = []
    interval = 1.0 / cfg.probe_request_rate
    next_t = time.monotonic()
    while not stop.is_set():
        tasks.append(asyncio.create_task(func(session, base, model, PROBE_REQUEST, cfg.request)))
        next_t += interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_t - time.monotonic()))
    out.extend(await asyncio.gather(*tasks))


async def run_benchmark(cfg: RunnerConfig, requests: Sequence[SampleRequest], arrival_s: np.ndarray,
                        recorder: Recorder | None = None,
                        on_done: Callable[[RequestOutput], None] | None = None) -> BenchRun:
    """Check readiness, warm up, send ``requests`` at ``arrival_s`` (seconds from start) and collect outputs.

    The recorder, if given, is started before the warm-up (so traces include the idle lead-in) and measures
    one window, ``"benchmark"``, from the first send to the last completion. Probes (``probe_request_rate``)
    run from the first send until the last request finishes and are not part of the load's metrics.
    """
    if len(arrival_s) != len(requests):
        raise ConfigError(f"{len(requests)} requests but {len(arrival_s)} arrival times")
    func = REQUEST_FUNCS[cfg.endpoint]
    base = cfg.base_url.rstrip("/")
    # No connection limit here: --max-concurrency is enforced by the semaphore, and probes must bypass it.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=cfg.session_headers()) as session:
        await wait_ready(session, base, cfg.ready_timeout_s)
        model = cfg.model or await resolve_model(session, base)
        if recorder is not None:
            recorder.start()
        try:
            for req in list(requests)[: cfg.num_warmups]:
                warm = await func(session, base, model, req, cfg.request)
                if not warm.success:
                    raise BackendError(f"warm-up request failed ({warm.error}); check --endpoint and --model")
            sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None

            async def one(req: SampleRequest) -> RequestOutput:
                if sem is None:
                    out = await func(session, base, model, req, cfg.request)
                else:
                    async with sem:
                        out = await func(session, base, model, req, cfg.request)
                if on_done is not None:
                    on_done(out)
                return out

            if recorder is not None:
                recorder.begin_window("benchmark")
            start = time.monotonic()
            probes: list[RequestOutput] = []
            stop_probes = asyncio.Event()
            probe_task = (asyncio.create_task(_probe_loop(session, cfg, base, model, stop_probes, probes))
                          if cfg.probe_request_rate > 0 else None)
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
            if probe_task is not None:
                stop_probes.set()
                await probe_task
        finally:
            if recorder is not None:
                recorder.stop()
    return BenchRun(model, outputs, scheduled, start, end, measurement, probes)
