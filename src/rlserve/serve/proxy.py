"""The router proxy: an OpenAI-compatible HTTP front end that routes each request with an rlserve policy.

Request path (``POST /v1/completions`` and ``/v1/chat/completions``)::

    read body -> sizes (request_shape) -> snapshot (bookkeeping) -> router.select -> admission gate
      -> POST upstream -> first byte? --no--> replica marked down, next replica (up to max_attempts)
                                    --yes-> status + body passed through unchanged (streamed chunk by chunk)

The router is the same object the simulator drives (``rlserve.policies.make_router``) and sees the same
:class:`~rlserve.snapshot.ClusterSnapshot` type; the snapshot's replica states are built lazily, only if the
router reads them. If the router picks a replica that is down, or an attempt fails before any byte reached the
client, the request goes to the healthy replica with the fewest outstanding requests that it has not tried yet.
Once bytes have been streamed to the client a failure cannot be retried (the client already holds part of one
answer); the stream then ends with an OpenAI-style error event and ``data: [DONE]``, so the client sees a clear
error rather than a hang or a silently truncated answer. A non-streamed response is read completely before it is
sent, so any failure of it is retried.

In-process API (for an energy controller living in the same process; thread-safe)::

    proxy.set_concurrency_cap(replica, cap)   # None = uncapped
    proxy.snapshot()                          # ClusterSnapshot with eagerly built replica states

HTTP admin API: ``GET /admin/replicas``; ``PUT /admin/replicas/{i}/concurrency_cap`` with ``{"cap": int|null}``.

Hostile or broken peers: every answer the proxy itself gives is an OpenAI-shaped error (unknown path 404, wrong
method 405, body over 64 MiB 413, body not sent within ``client_timeout_s`` 408, a body no OpenAI server accepts
400, an unexpected failure 500 with one log line), counted in ``rlserve_proxy_errors_total``. A replica that sends
no first byte within ``first_byte_timeout_s`` is held down (see :mod:`rlserve.serve.probes`) and the request is
retried elsewhere; a stream that ends without ``data: [DONE]`` reaches the client as an error event, never as a
normal end. Clients never see replica URLs or connection errors (logs do, with credentials removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from rlserve.errors import ConfigError, InputError
from rlserve.policies.base import Router, check_fits, make_router
from rlserve.prefix_index import DEFAULT_BLOCK_SIZE, PrefixIndex, text_block_hashes
from rlserve.serve.admission import ReplicaDown
from rlserve.serve.bookkeeping import ReplicaBook, Tracked
from rlserve.serve.config import ProxyConfig
from rlserve.serve.probes import ReplicaProber
from rlserve.serve.proxy_error import ProxyError
from rlserve.serve.proxy_metrics import ProxyMetrics
from rlserve.serve.request_shape import rendered_prompt, request_sizes
from rlserve.snapshot import ClusterSnapshot, ReplicaState
from rlserve.workload.request import Request

log = logging.getLogger(__name__)

# Response headers that describe one hop's connection, not the payload: never copied from upstream.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server",
                          "proxy-authenticate", "trailer", "upgrade"})
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
_MAX_BODY_BYTES = 64 * 2**20
_SSE_DONE = b"data: [DONE]\n\n"  # the last event of an OpenAI-style stream
_T = TypeVar("_T")


class _AttemptFailed(Exception):
    """An attempt failed before any byte reached the client: the request may go to another replica.

    The message is what a client may read (replica index and a generic reason); details go to the log."""


_HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large"}


class _FirstByteWatch:
    """``async with``: the first-byte deadline of one attempt, which tells a wedged replica from a slow one.

    At the deadline, a replica that answered something (another request's first byte or completion) within the
    last ``first_byte_timeout_s`` is making progress -- overloaded, not wedged -- so the attempt keeps waiting and
    the watch looks again one deadline after that answer; abandoning it would only move its load onto the other
    replicas and turn overload into errors. A replica that answered nothing for a whole deadline is wedged: the
    wait is cancelled (``TimeoutError``, :attr:`expired` set). Costs one timer per attempt.
    """

    __slots__ = ("_proxy", "_index", "_by", "_timeout", "_handle", "expired")

    def __init__(self, proxy: RouterProxy, book: ReplicaBook, by_monotonic_s: float) -> None:
        self._proxy = proxy
        self._index = book.index
        self._by = by_monotonic_s
        self._timeout = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None
        self.expired = False

    async def __aenter__(self) -> _FirstByteWatch:
        await self._timeout.__aenter__()
        self._handle = asyncio.get_running_loop().call_later(max(0.0, self._by - time.monotonic()), self._check)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        await self._timeout.__aexit__(*exc)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._proxy.config.first_byte_timeout_s
        since = time.monotonic() - self._proxy._progress_s[self._index]
        if since < deadline:  # slow, not wedged: look again one deadline after its last answer
            self._handle = loop.call_later(deadline - since, self._check)
        else:
            self.expired = True
            self._timeout.reschedule(loop.time())  # cancels the wait now; leaves the block as TimeoutError


def _json_error(status: int, type_: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "code": status}}, status=status)


class RouterProxy:
    """The proxy server. ``await start()`` / ``await stop()`` or ``async with``; ``url`` once started."""

    def __init__(self, config: ProxyConfig, router: Router | None = None) -> None:
        self.config = config
        self.router = router if router is not None else make_router(config.router, seed=config.seed,
                                                                    **config.router_kwargs)
        check_fits(self.router, len(config.replicas))  # refuse now, not with HTTP 500 on every request
        self.books = [ReplicaBook(i, spec, config.max_queue_per_replica) for i, spec in enumerate(config.replicas)]
        # A router that reads per-request queue features says how many it needs (PPORouter.queue_k).
        self.queue_k = max(config.queue_k, int(getattr(self.router, "queue_k", 0) or 0))
        # where each replica probably has prompt prefixes cached (ReplicaState.prefix_hit_tokens)
        self.prefix_index = PrefixIndex(
            len(self.books), block_size=config.replicas[0].block_size or DEFAULT_BLOCK_SIZE,
            capacity_blocks=config.prefix_index_blocks, ttl_s=config.prefix_index_ttl_s,
        ) if config.prefix_index_blocks else None
        self.metrics = ProxyMetrics(self.books)
        self.port = config.port
        self.arrivals_total = 0
        self._t0 = time.monotonic()
        self._auth = None if config.api_key is None else f"Bearer {config.api_key}".encode()
        if config.upstream_api_key is not None:
            self._upstream_auth: str | None = f"Bearer {config.upstream_api_key}"
        else:
            self._upstream_auth = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._prober: ReplicaProber | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._observe_decision = self.metrics.decision_s.observe
        self._urls: dict[tuple[int, str], URL] = {}  # (replica, path) -> parsed upstream URL
        self._router_error: str | None = None  # why the last routing decision failed (None: it succeeded)
        # monotonic time of each replica's last answer (a first byte or a completion); the start counts as one, so a
        # replica gets one first-byte deadline to answer its first request before it can be judged wedged
        self._progress_s = [time.monotonic()] * len(self.books)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` the proxy listens on."""
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Probe the replicas once, start the probes and bind the listening socket."""
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0),
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout_s,
                                          sock_read=cfg.upstream_idle_timeout_s),
            auto_decompress=False,
        )
        self._prober = ReplicaProber(self._session, self.books, cfg.health_interval_s, cfg.health_timeout_s,
                                     cfg.metrics_interval_s, self.set_health, cfg.first_byte_timeout_s)
        await self._prober.probe_all()
        self._prober.start()
        app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[self._openai_errors])
        app.router.add_post("/v1/completions", self._handle_generate)
        app.router.add_post("/v1/chat/completions", self._handle_generate)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/admin/replicas", self._handle_admin_replicas)
        app.router.add_put("/admin/replicas/{index}/concurrency_cap", self._handle_admin_cap)
        # handler_cancellation: a client that hangs up cancels its handler, which closes the upstream connection
        # (vLLM then aborts the generation) and releases the admission slot.
        # keepalive_timeout also closes a connection whose request head never completes (aiohttp arms it at
        # connection start), so half-sent headers cannot hold a connection open for aiohttp's default hour.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                                     keepalive_timeout=cfg.client_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port, backlog=4096, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); pick another --port "
                              "or stop what uses it") from None
        self.port = self._runner.addresses[0][1]  # the bound port (differs from cfg.port when that is 0)
        log.info("rlserve proxy on %s routing with %s over %d replicas", self.url, self.router.name, len(self.books))

    async def stop(self) -> None:
        """Stop accepting, cancel in-flight requests, stop the probes, close upstream connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._prober is not None:
            await self._prober.stop()
            self._prober = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RouterProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- in-process API -----------------------------------------------------------------------------------------

    def now_s(self) -> float:
        """Seconds since the proxy was created (the snapshot clock)."""
        return time.monotonic() - self._t0

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the proxy's event loop (where the bookkeeping lives) and return its result."""
        loop = self._loop
        if loop is None or not loop.is_running() or threading.get_ident() == self._loop_thread:
            return fn()

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def snapshot(self) -> ClusterSnapshot:
        """The cluster as the router would see it now, replica states built eagerly (safe from any thread)."""

        def build() -> ClusterSnapshot:
            now = self.now_s()
            k = self.queue_k
            return ClusterSnapshot(now, len(self.books), tuple(b.state(now, k) for b in self.books),
                                   self.arrivals_total)

        return self._on_loop(build)

    def set_concurrency_cap(self, replica: int, cap: int | None) -> None:
        """Cap the requests in flight to ``replica`` (``None`` = uncapped); applies now, from any thread.

        Raises:
            ConfigError: unknown replica or a cap that is not an integer >= 1.
        """
        if isinstance(replica, bool) or not isinstance(replica, int) or not 0 <= replica < len(self.books):
            raise ConfigError(f"replica must be an index in [0, {len(self.books) - 1}], got {replica!r}")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"concurrency cap must be an integer >= 1 or None (uncapped), got {cap!r}")
        gate = self.books[replica].gate
        self._on_loop(lambda: gate.set_cap(cap))

    def set_health(self, replica: int, healthy: bool, reason: str = "") -> None:
        """Mark a replica up or down (probes and failed requests call this); down re-routes its waiters."""
        book = self.books[replica]
        if healthy == book.healthy:
            return
        book.healthy = healthy
        if healthy:
            log.warning("replica %d (%s) is up again", replica, book.spec.public_url)
        else:
            log.warning("replica %d (%s) is down: %s", replica, book.spec.public_url, reason)
            book.gate.fail_waiters()

    # --- routing ------------------------------------------------------------------------------------------------

    def decide(self, request: Request, block_hashes: Sequence[int] = ()) -> int:
        """The replica the router picks for ``request`` now; the time taken goes to the decision histogram.

        The snapshot's replica states are built only if the router reads them; ``block_hashes`` (the prompt's,
        :func:`~rlserve.prefix_index.text_block_hashes`) give each state's ``prefix_hit_tokens``.

        Raises:
            ProxyError: 500 when the router raises or answers something that is not a replica index.
        """
        t0 = time.perf_counter()
        now = request.arrival_s
        books, k, index = self.books, self.queue_k, self.prefix_index

        def states() -> tuple[ReplicaState, ...]:
            if index is None or not block_hashes:
                return tuple(b.state(now, k) for b in books)
            hits = index.matched_tokens(block_hashes, now)
            return tuple(b.state(now, k, hit) for b, hit in zip(books, hits, strict=True))

        snapshot = ClusterSnapshot(now, len(books), states, self.arrivals_total)
        try:
            choice = self.router.select(request, snapshot)
        except Exception as exc:  # a policy bug must not take the proxy down
            if self._router_error is None:  # one traceback per failing streak, not one per request
                log.exception("router %s failed", self.router.name)
            self._router_error = f"router {self.router.name} raised {type(exc).__name__}"
            raise ProxyError(500, "router_failed", f"{self._router_error}: {exc}") from exc
        self._observe_decision(time.perf_counter() - t0)
        if isinstance(choice, int | np.integer) and not isinstance(choice, bool) and 0 <= choice < len(books):
            if self._router_error is not None:
                self._router_error = None
            return int(choice)
        self._router_error = f"router {self.router.name} chose replica {choice!r}"
        raise ProxyError(500, "router_failed", f"{self._router_error}, not an index in [0, {len(books) - 1}]")

    def _fallback(self, tried: set[int]) -> int | None:
        """The untried replica to use instead: healthy ones first, then by fewest outstanding requests."""
        best: tuple[bool, int, int] | None = None
        for b in self.books:
            if b.index in tried:
                continue
            key = (not b.healthy, len(b.outstanding), b.index)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]

    # --- request path -------------------------------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> None:
        if self._auth is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self._auth):
                raise ProxyError(401, "unauthorized", "missing or wrong API key; send 'Authorization: Bearer KEY'")

    def _error_response(self, exc: ProxyError) -> web.Response:
        self.metrics.count_error(exc.type)
        headers = None if exc.retry_after_s is None else {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return web.json_response(exc.body(), status=exc.status, headers=headers)

    @web.middleware
    async def _openai_errors(self, request: web.Request,
                             handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """aiohttp's own answers (unknown path, wrong method, body too large) as OpenAI-shaped, counted errors."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = _HTTP_ERROR_TYPES.get(exc.status, "invalid_request")
            self.metrics.count_error(kind)
            message = exc.reason if exc.status != 413 else f"request body larger than {_MAX_BODY_BYTES} bytes"
            return _json_error(exc.status, kind, f"{message}: {request.method} {request.path[:200]}"
                               if exc.status in (404, 405) else message)

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check_auth(request)
            try:
                async with asyncio.timeout(self.config.client_timeout_s):
                    raw = await request.read()
            except TimeoutError:
                raise ProxyError(408, "request_timeout", f"the request body was not received within "
                                 f"{self.config.client_timeout_s:g} s") from None
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = None
            except RecursionError:
                raise ProxyError(400, "invalid_request", "the request body is nested too deeply") from None
            if not isinstance(body, dict):
                raise ProxyError(400, "invalid_request", "the request body must be a JSON object")
            return await self._route(request, raw, body)
        except ProxyError as exc:
            return self._error_response(exc)
        except web.HTTPException:
            raise  # aiohttp's own (413 while reading the body): shaped by the middleware
        except Exception as exc:  # a bug must still give the client an OpenAI-shaped answer and one log line
            log.error("request %s %s failed inside the proxy: %s: %.200s", request.method, request.path[:200],
                      type(exc).__name__, exc)
            return self._error_response(ProxyError(500, "internal_error", "the proxy failed to handle this "
                                                   "request; see its log"))

    async def _route(self, request: web.Request, raw: bytes, body: dict[str, Any]) -> web.StreamResponse:
        cfg = self.config
        try:
            prompt_tokens, max_tokens, output_exact = request_sizes(body, cfg.chars_per_token,
                                                                    cfg.default_max_tokens)
        except InputError as exc:
            raise ProxyError(400, "invalid_request", str(exc)) from None
        rid = self.arrivals_total
        arrival_s = self.now_s()
        req = Request(id=rid, arrival_s=arrival_s, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        index = self.prefix_index
        hashes = [] if index is None else text_block_hashes(rendered_prompt(body), index.block_size,
                                                            cfg.chars_per_token)
        replica = self.decide(req, hashes)
        self.arrivals_total += 1
        if not self.books[replica].healthy:
            alternative = self._fallback({replica})
            if alternative is not None and self.books[alternative].healthy:
                replica = alternative
        stream = body.get("stream") is True
        deadline = time.monotonic() + cfg.queue_timeout_s
        tried: set[int] = set()
        last_error = ""
        while True:
            book = self.books[replica]
            tracked = book.add(rid, arrival_s, prompt_tokens, max_tokens, output_exact)
            if index is not None:
                index.record(replica, hashes, arrival_s)
            try:
                return await self._attempt(request, raw, stream, book, rid, tracked, deadline)
            except _AttemptFailed as exc:
                last_error = str(exc)
            except ReplicaDown as exc:
                last_error = str(exc)
            finally:
                book.remove(rid, tracked)  # no-op after a completion
            tried.add(replica)
            next_replica = self._fallback(tried) if len(tried) < cfg.max_attempts else None
            if next_replica is None:
                if not self._any_healthy():
                    raise ProxyError(503, "no_replica", f"no replica is reachable ({len(tried)} tried, last: "
                                     f"{last_error}); check the vLLM servers", retry_after_s=1.0)
                raise ProxyError(502, "upstream_failed", f"{len(tried)} attempts failed before the first byte "
                                 f"(last: {last_error})")
            book.retried_total += 1
            replica = next_replica

    def _any_healthy(self) -> bool:
        return any(b.healthy for b in self.books)

    async def _attempt(self, request: web.Request, raw: bytes, stream: bool, book: ReplicaBook, rid: int,
                       tracked: Tracked, deadline: float) -> web.StreamResponse:
        """One try on one replica. Raises :class:`_AttemptFailed` if it failed before any byte reached the client."""
        gate = book.gate
        await gate.acquire(max(deadline - time.monotonic(), 0.0))
        try:
            assert self._session is not None  # internal invariant: handlers run only between start() and stop()
            first_byte_by = time.monotonic() + self.config.first_byte_timeout_s
            try:
                async with _FirstByteWatch(self, book, first_byte_by) as watch:
                    upstream = await self._session.post(self._upstream_url(book, request.path), data=raw,
                                                        headers=self._upstream_headers(request))
            except _TRANSPORT_ERRORS as exc:
                if watch.expired:
                    self._wedged(book, exc)
                self._attempt_failed(book, exc)
            async with upstream:
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
                out_headers["X-Rlserve-Replica"] = str(book.index)
                if not stream or upstream.status != 200:
                    try:
                        data = await upstream.read()
                    except _TRANSPORT_ERRORS as exc:
                        self._attempt_failed(book, exc)
                    if upstream.status == 200:
                        book.complete(rid, tracked, self.now_s(), _completion_tokens(data))
                        self._served(book)
                    return web.Response(body=data, status=upstream.status, headers=out_headers)
                return await self._stream(request, upstream, out_headers, book, rid, tracked, first_byte_by)
        finally:
            gate.release()

    def _wedged(self, book: ReplicaBook, exc: BaseException) -> NoReturn:
        """``book`` sent no first byte in time and answered nothing else for as long (:class:`_FirstByteWatch`):
        held down until it serves again (its /health may still answer); the request goes elsewhere."""
        self.metrics.count_error("upstream_first_byte_timeout")
        if self._prober is not None:
            self._prober.hold_down(book.index)
        self._attempt_failed(book, exc)

    def _served(self, book: ReplicaBook) -> None:
        """``book`` answered in time: progress noted; if it was held down for a missed first byte, it is up again."""
        self._progress_s[book.index] = time.monotonic()
        prober = self._prober
        if prober is not None and book.index in prober.held_down:
            prober.served(book.index)
            self.set_health(book.index, True)

    def _upstream_url(self, book: ReplicaBook, path: str) -> URL:
        """The replica's URL for ``path``, parsed once (URL parsing is a measurable part of a proxied request)."""
        url = self._urls.get((book.index, path))
        if url is None:
            url = self._urls[(book.index, path)] = URL(book.spec.url + path)
        return url

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        """Content type, plus the upstream key; the client's own Authorization only when the proxy has no keys."""
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if self._upstream_auth is not None:
            headers["Authorization"] = self._upstream_auth
        elif self._auth is None and "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        return headers

    def _attempt_failed(self, book: ReplicaBook, exc: BaseException) -> NoReturn:
        stalled = self._prober is not None and book.index in self._prober.held_down
        reason = f"no first byte within {self.config.first_byte_timeout_s:g} s" if stalled else "connection failed"
        self.set_health(book.index, False, f"{reason} ({type(exc).__name__} {exc})".strip())
        raise _AttemptFailed(f"replica {book.index}: {reason}") from exc

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse, out_headers: dict[str, str],
                      book: ReplicaBook, rid: int, tracked: Tracked, first_byte_by: float) -> web.StreamResponse:
        content = upstream.content
        try:
            async with _FirstByteWatch(self, book, first_byte_by) as watch:
                chunk = await content.readany()
        except _TRANSPORT_ERRORS as exc:
            if watch.expired:
                self._wedged(book, exc)
            self._attempt_failed(book, exc)
        if not chunk:
            self._attempt_failed(book, ConnectionError("the stream closed before its first byte"))
        book.first_token(tracked, self.now_s())
        self._served(book)
        response = web.StreamResponse(status=upstream.status, headers=out_headers)
        await response.prepare(request)
        before_last = last = b""  # the final events (finish reason, usage, [DONE]) are in the last two chunks
        done = False
        while chunk:
            try:
                # Tokens that arrived while we were busy go out in one write (one syscall) rather than one each;
                # nothing waits for more data, so no latency is added and the bytes are unchanged.
                chunk += content.read_nowait()
            except _TRANSPORT_ERRORS as exc:
                await self._end_broken_stream(response, book, exc)
                return response
            book.tokens(tracked, chunk.count(b"data: {"))
            before_last, last = last, chunk
            if chunk.endswith(_SSE_DONE):  # an OpenAI stream's last event: sent below, with the end of our body
                done = True
                break
            try:
                await response.write(chunk)
            except ConnectionResetError:  # the client went away; leaving closes the upstream connection
                self.metrics.count_error("client_disconnected")
                return response
            try:
                chunk = await content.readany()
            except _TRANSPORT_ERRORS as exc:
                await self._end_broken_stream(response, book, exc)
                return response
        if not done:  # the replica ended its body cleanly but without [DONE]: the answer may be truncated
            await self._end_broken_stream(response, book, None)
            return response
        try:
            # [DONE] and the chunked-body terminator in one write, without waiting for the replica to end its body
            await response.write_eof(last)
        except ConnectionResetError:
            self.metrics.count_error("client_disconnected")
            return response
        book.complete(rid, tracked, self.now_s(), _final_stream_tokens(before_last + last, tracked))
        self._progress_s[book.index] = time.monotonic()
        await _read_to_end(content, book)
        return response

    async def _end_broken_stream(self, response: web.StreamResponse, book: ReplicaBook,
                                 exc: BaseException | None) -> None:
        """Close a stream whose replica failed after the first byte with an error event, as vLLM does.

        ``exc`` is ``None`` when the replica ended its body without ``data: [DONE]`` (kind ``upstream_truncated``;
        the replica stays up, its probes judge it); a broken connection marks it down (``upstream_midstream``).
        """
        if exc is None:
            kind, what = "upstream_truncated", "ended its stream without data: [DONE]"
            log.warning("replica %d (%s) %s; the client got an error event", book.index, book.spec.public_url, what)
        else:
            kind, what = "upstream_midstream", "failed mid-stream"
            self.set_health(book.index, False, f"stream broken: {type(exc).__name__} {exc}")
        self.metrics.count_error(kind)
        error = {"error": {"message": f"replica {book.index} {what}; the answer is incomplete, retry the request",
                           "type": kind, "code": 502}}
        with contextlib.suppress(ConnectionResetError):
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n")
            await response.write_eof()

    # --- other endpoints ----------------------------------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        """The union of the healthy replicas' models (deduplicated by id)."""
        try:
            self._check_auth(request)
        except ProxyError as exc:
            return self._error_response(exc)
        assert self._session is not None  # internal invariant
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_s)
        headers = {"Authorization": self._upstream_auth} if self._upstream_auth else None

        async def fetch(book: ReplicaBook) -> list[dict[str, Any]]:
            try:
                async with self._session.get(f"{book.spec.url}/v1/models", timeout=timeout,  # type: ignore[union-attr]
                                             headers=headers) as resp:
                    if resp.status != 200:
                        return []
                    data = (await resp.json()).get("data")
                    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
            except (*_TRANSPORT_ERRORS, ValueError, AttributeError):
                return []

        candidates = [b for b in self.books if b.healthy] or self.books
        merged: dict[str, dict[str, Any]] = {}
        for models in await asyncio.gather(*(fetch(b) for b in candidates)):
            for m in models:
                merged.setdefault(str(m.get("id")), m)
        if not merged:
            return self._error_response(ProxyError(503, "no_replica", "no replica answered /v1/models; check the "
                                                   "vLLM servers", retry_after_s=1.0))
        return web.json_response({"object": "list", "data": list(merged.values())})

    async def _handle_health(self, request: web.Request) -> web.Response:
        """200 only when a request can be served now: some replica up and the router's last decision succeeded.

        ``status``: ``ok``; ``degraded`` (serving, but a replica is down or its engine metrics are stale/unknown,
        so a metrics-driven router is falling back); ``no_replica`` or ``router_failing`` (503). Replicas are named
        by index only (this endpoint needs no API key)."""
        prober = self._prober
        detail = [{"index": b.index, "up": b.healthy,
                   "stalled": prober is not None and b.index in prober.held_down,
                   "metrics": prober.metrics_state(b.index) if prober is not None else "unknown"}
                  for b in self.books]
        up = sum(b.healthy for b in self.books)
        if not up:
            status = "no_replica"
        elif self._router_error is not None:
            status = "router_failing"
        elif up < len(self.books) or any(d["metrics"] in ("stale", "unknown") for d in detail):
            status = "degraded"
        else:
            status = "ok"
        return web.json_response({"status": status, "replicas_up": up, "replicas": len(self.books),
                                  "router": self.router.name, "router_error": self._router_error,
                                  "replica_detail": detail},
                                 status=503 if status in ("no_replica", "router_failing") else 200)

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_admin_replicas(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
        except ProxyError as exc:
            return self._error_response(exc)
        return web.json_response({"time_s": self.now_s(), "replicas": _replica_dicts(self.books, self.snapshot())})

    async def _handle_admin_cap(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            try:
                index = int(request.match_info["index"])
            except ValueError:
                index = -1
            if not 0 <= index < len(self.books):
                raise ProxyError(404, "not_found", f"no replica {request.match_info['index']!r}; indices are "
                                 f"0..{len(self.books) - 1}")
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = None
            if not isinstance(body, dict) or "cap" not in body:
                raise ProxyError(400, "invalid_request", 'send {"cap": <integer >= 1>} or {"cap": null} to uncap')
            try:
                self.set_concurrency_cap(index, body["cap"])
            except ConfigError as exc:
                raise ProxyError(400, "invalid_request", str(exc)) from exc
        except ProxyError as exc:
            return self._error_response(exc)
        return web.json_response({"replica": index, "cap": body["cap"]})


async def _read_to_end(content: aiohttp.StreamReader, book: ReplicaBook) -> None:
    """Read a replica's streamed body after its ``data: [DONE]`` to the end, so that its connection is reused.

    Nothing follows ``[DONE]`` in an OpenAI stream and the client's response is already complete: bytes that do
    follow are logged and dropped, and a connection that breaks here is only closed (the probes judge health).
    """
    extra = 0
    with contextlib.suppress(*_TRANSPORT_ERRORS):
        while data := await content.readany():
            extra += len(data)
    if extra:
        log.warning("replica %d (%s) sent %d bytes after data: [DONE]; not forwarded", book.index, book.spec.public_url,
                    extra)


def _completion_tokens(data: bytes) -> int | None:
    """``usage.completion_tokens`` in a response body, found without parsing all of it (``None`` if absent)."""
    i = data.rfind(b'"completion_tokens":')
    if i < 0:
        return None
    j = i + len(b'"completion_tokens":')
    end = j
    while end < len(data) and data[end] in b" 0123456789":
        end += 1
    try:
        return int(data[j:end])
    except ValueError:
        return None


def _final_stream_tokens(tail: bytes, t: Tracked) -> int | None:
    """Tokens a finished stream carried: its usage if it has one, ``max_tokens`` if it stopped for length,
    else ``None`` (keep the per-event count, a lower bound)."""
    usage = _completion_tokens(tail)
    if usage is not None:
        return usage
    if t.output_exact and (b'"finish_reason":"length"' in tail or b'"finish_reason": "length"' in tail):
        return t.max_tokens
    return None


def _replica_dicts(books: Sequence[ReplicaBook], snapshot: ClusterSnapshot) -> list[dict[str, Any]]:
    def one(book: ReplicaBook, state: ReplicaState) -> dict[str, Any]:
        return {"index": book.index, "url": book.spec.public_url, "healthy": book.healthy, "cap": book.gate.cap,
                "in_flight": book.gate.in_flight, "queued": book.gate.queued, "state": asdict(state)}

    return [one(b, s) for b, s in zip(books, snapshot.replicas, strict=True)]
