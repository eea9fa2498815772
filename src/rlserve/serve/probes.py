"""Background probes of every replica, on the proxy's own event loop: health and engine metrics.

- Health: ``GET /health`` every ``health_interval_s``; a failure or non-200 marks the replica down (its waiters
  are re-routed), the next success marks it up. Requests mark a replica down too, the moment a connection fails,
  so traffic moves away without waiting for the next probe.
- Engine metrics: ``GET /metrics`` every ``metrics_interval_s``, parsed by the telemetry layer's
  :func:`~rlserve.telemetry.vllm_metrics.parse_vllm_metrics`; only the latest good scrape is kept (a proxy runs
  for days: no trace grows). Lines other than the few the snapshot needs are dropped before parsing: vLLM's
  /metrics is mostly histogram buckets, and parsing them all would stall the request path for milliseconds.
  A failed scrape keeps the previous values (they are at worst one interval staler), for at most
  :data:`STALE_AFTER_FAILURES` scrapes in a row; then the replica's engine metrics are dropped, so routers see "KV
  size unknown" and degrade to what they can know instead of steering by numbers that stopped being true. A scrape
  whose values are not finite fractions/counts (NaN usage, negative queues) counts as failed.
- Stalled replicas: a replica that missed the proxy's first-byte deadline (its ``/health`` may still answer) is
  *held down*: its health probe becomes a one-token completion (model from its ``/v1/models``) that must answer
  within the same deadline; the replica is up again only once that succeeds (or a request it got succeeded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence

import aiohttp

from rlserve.errors import BackendError
from rlserve.serve.bookkeeping import ReplicaBook
from rlserve.telemetry.vllm_metrics import KV_USAGE_NAMES, VllmMetrics, parse_vllm_metrics

log = logging.getLogger(__name__)

STALE_AFTER_FAILURES = 3
"""Failed /metrics scrapes in a row after which a replica's engine metrics count as unknown."""

_WANTED_PREFIXES = (*KV_USAGE_NAMES, "vllm:num_requests_running", "vllm:num_requests_waiting",
                    "vllm:num_preemptions", "vllm:cache_config_info")


def relevant_metric_lines(text: str) -> str:
    """Keep the samples the snapshot uses (and their ``# TYPE`` lines); drop everything else."""
    keep = []
    for line in text.splitlines():
        if line.startswith(_WANTED_PREFIXES) or (line.startswith("# TYPE ") and line[7:].startswith(_WANTED_PREFIXES)):
            keep.append(line)
    return "\n".join(keep) + "\n"


def _plausible(m: VllmMetrics) -> bool:
    """Whether a parsed scrape can be believed (a server answering NaN or negative gauges is broken)."""
    return (0.0 <= m.kv_cache_usage <= 1.0 and 0.0 <= m.num_requests_running < math.inf
            and 0.0 <= m.num_requests_waiting < math.inf)


class ReplicaProber:
    """Runs the health and metrics loops of all replicas until :meth:`stop`."""

    def __init__(self, session: aiohttp.ClientSession, books: Sequence[ReplicaBook], health_interval_s: float,
                 health_timeout_s: float, metrics_interval_s: float, set_health: Callable[[int, bool, str], None],
                 first_byte_timeout_s: float = 60.0) -> None:
        self._session = session
        self._books = books
        self._health_interval_s = health_interval_s
        self._timeout = aiohttp.ClientTimeout(total=health_timeout_s)
        self._serve_timeout = aiohttp.ClientTimeout(total=first_byte_timeout_s + health_timeout_s,
                                                    sock_read=first_byte_timeout_s)
        self._metrics_interval_s = metrics_interval_s
        self._set_health = set_health
        self._tasks: list[asyncio.Task[None]] = []
        self.scrape_failures = [0] * len(books)  # failed scrapes in a row, per replica
        self.held_down: set[int] = set()  # replicas that missed the first-byte deadline and have not served since

    def hold_down(self, index: int) -> None:
        """Replica ``index`` missed the first-byte deadline: keep it down until it serves a completion."""
        self.held_down.add(index)

    def served(self, index: int) -> None:
        """Replica ``index`` answered a request in time: it is no longer held down."""
        self.held_down.discard(index)

    def metrics_state(self, index: int) -> str:
        """``off`` (not scraped), ``ok``, ``stale`` (last scrapes failed, old values kept) or ``unknown``."""
        if self._metrics_interval_s <= 0:
            return "off"
        if self._books[index].engine is None:
            return "unknown"
        return "stale" if self.scrape_failures[index] else "ok"

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
            try:
                await probe(book)  # type: ignore[misc]
            except Exception as exc:  # a probe bug must not silently end the loop (health would freeze)
                log.error("probe of replica %d failed: %s: %.200s", book.index, type(exc).__name__, exc)
            next_t = max(next_t, loop.time() - interval_s)  # after a slow probe, do not fire a burst to catch up

    async def _check(self, book: ReplicaBook) -> None:
        if book.index in self.held_down:
            await self._check_serves(book)
            return
        try:
            async with self._session.get(f"{book.spec.url}/health", timeout=self._timeout) as resp:
                await resp.read()
                ok, why = resp.status == 200, f"GET /health answered HTTP {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, why = False, f"GET /health failed: {type(exc).__name__}"
        if ok and book.index in self.held_down:  # held down while this probe was in flight: /health is not enough
            return
        self._set_health(book.index, ok, why)

    async def _check_serves(self, book: ReplicaBook) -> None:
        """A held-down replica is up again only when a one-token completion answers within the deadline."""
        try:
            async with self._session.get(f"{book.spec.url}/v1/models", timeout=self._timeout) as resp:
                models = (await resp.json()).get("data") or [{}]
                model = models[0].get("id")
            body = {"model": model, "prompt": "ping", "max_tokens": 1}
            async with self._session.post(f"{book.spec.url}/v1/completions", json=body,
                                          timeout=self._serve_timeout) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, AttributeError, IndexError, TypeError):
            ok = False
        if ok:
            self.held_down.discard(book.index)
            self._set_health(book.index, True, "")

    async def _scrape(self, book: ReplicaBook) -> None:
        try:
            async with self._session.get(f"{book.spec.url}/metrics", timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise BackendError(f"GET /metrics answered HTTP {resp.status}")
                text = await resp.text()
            engine = parse_vllm_metrics(relevant_metric_lines(text))
            if not _plausible(engine):
                raise BackendError(f"implausible values {engine}")
        except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError, BackendError) as exc:
            failures = self.scrape_failures[book.index] = self.scrape_failures[book.index] + 1
            log.debug("scrape of replica %d /metrics failed: %s", book.index, type(exc).__name__)
            if failures == STALE_AFTER_FAILURES and book.engine is not None:
                log.warning("replica %d: /metrics failed %d times in a row; its engine metrics (KV usage, queues) "
                            "are now unknown to the router", book.index, failures)
            if failures >= STALE_AFTER_FAILURES:
                book.engine = None
            return
        self.scrape_failures[book.index] = 0
        book.engine = engine
