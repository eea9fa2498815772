"""Background probes of every replica, on the proxy's own event loop: health and engine metrics.

- Health: ``GET /health`` every ``health_interval_s``; a failure or non-200 marks the replica down (its waiters
  are re-routed), the next success marks it up. Requests mark a replica down too, the moment a connection fails,
  so traffic moves away without waiting for the next probe.
- Engine metrics: ``GET /metrics`` every ``metrics_interval_s``, parsed by the telemetry layer's
  :func:`~rlserve.telemetry.vllm_metrics.parse_vllm_metrics`; only the latest good scrape is kept (a proxy runs
  for days: no trace grows). Lines other than the few the snapshot needs are dropped before parsing: vLLM's
  /metrics is mostly histogram buckets, and parsing them all would stall the request path for milliseconds.
  A failed scrape keeps the previous values (they are at worst one interval staler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import aiohttp

from rlserve.errors import BackendError
from rlserve.serve.bookkeeping import ReplicaBook
from rlserve.telemetry.vllm_metrics import KV_USAGE_NAMES, parse_vllm_metrics

log = logging.getLogger(__name__)

_WANTED_PREFIXES = (*KV_USAGE_NAMES, "vllm:num_requests_running", "vllm:num_requests_waiting",
                    "vllm:num_preemptions", "vllm:cache_config_info")


def relevant_metric_lines(text: str) -> str:
    """Keep the samples the snapshot uses (and their ``# TYPE`` lines); drop everything else."""
    keep = []
    for line in text.splitlines():
        if line.startswith(_WANTED_PREFIXES) or (line.startswith("# TYPE ") and line[7:].startswith(_WANTED_PREFIXES)):
            keep.append(line)
    return "\n".join(keep) + "\n"


class ReplicaProber:
    """Runs the health and metrics loops of all replicas until :meth:`stop`."""

    def __init__(self, session: aiohttp.ClientSession, books: Sequence[ReplicaBook], health_interval_s: float,
                 health_timeout_s: float, metrics_interval_s: float, set_health: Callable[[int, bool, str], None]
                 ) -> None:
        self._session = session
        self._books = books
        self._health_interval_s = health_interval_s
        self._timeout = aiohttp.ClientTimeout(total=health_timeout_s)
        self._metrics_interval_s = metrics_interval_s
        self._set_health = set_health
        self._tasks: list[asyncio.Task[None]] = []

    async def probe_all(self) -> None:
        """One health check and one scrape of every replica, concurrently (used once at start-up)."""
        await asyncio.gather(*(self._check(b) for b in self._books),
                             *(self._scrape(b) for b in self._books if self._metrics_interval_s > 0))

    def start(self) -> None:
        """Start the periodic loops."""
        for b in self._books:
            self._tasks.append(asyncio.create_task(self._every(self._health_interval_s, self._check, b)))
            if self._metrics_interval_s > 0:
                self._tasks.append(asyncio.create_task(self._every(self._metrics_interval_s, self._scrape, b)))

    async def stop(self) -> None:
        """Cancel the loops and wait for them."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    @staticmethod
    async def _every(interval_s: float, probe: Callable[[ReplicaBook], object], book: ReplicaBook) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += interval_s
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            await probe(book)  # type: ignore[misc]
            next_t = max(next_t, loop.time() - interval_s)  # after a slow probe, do not fire a burst to catch up

    async def _check(self, book: ReplicaBook) -> None:
        try:
            async with self._session.get(f"{book.spec.url}/health", timeout=self._timeout) as resp:
                await resp.read()
                ok, why = resp.status == 200, f"GET /health answered HTTP {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, why = False, f"GET /health failed: {type(exc).__name__} {exc}".strip()
        self._set_health(book.index, ok, why)

    async def _scrape(self, book: ReplicaBook) -> None:
        try:
            async with self._session.get(f"{book.spec.url}/metrics", timeout=self._timeout) as resp:
                if resp.status != 200:
                    return
                text = await resp.text()
            book.engine = parse_vllm_metrics(relevant_metric_lines(text))
        except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError, BackendError) as exc:
            log.debug("scrape of %s/metrics failed: %s", book.spec.url, exc)
