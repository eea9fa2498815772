"""A minimal OpenAI-compatible streaming server that stands in for vLLM where a real one cannot run.

Why it exists: the benchmark client, the monitors and the router proxy need a server whose timing is *known*
(to measure their own overhead) and that starts in milliseconds (unit tests). It speaks the subset of vLLM's
HTTP surface those components touch:

- ``POST /v1/completions`` and ``POST /v1/chat/completions``, streaming (SSE, ``data: [DONE]``) or not, with
  ``stream_options.include_usage``;
- ``GET /v1/models``, ``GET /health``;
- ``GET /metrics`` in Prometheus text with vLLM's metric names (``vllm:num_requests_running``,
  ``vllm:kv_cache_usage_perc`` as a fraction in [0, 1], ``vllm:cache_config_info``...), computed from what the
  fake is actually doing: admitted requests hold ``ceil(tokens / block_size)`` KV blocks, and requests beyond
  ``max_num_seqs`` wait.

Timing: the first token is sent ``ttft_delay_s`` after the request is admitted, then one token every
``inter_token_delay_s``. Each response carries the header ``x-fake-received-unix-s`` (server wall clock when the
request arrived). The server also keeps its own view of every streamed request's TTFT (handler entry to the
first chunk handed to the socket): ``GET /fake/timings`` returns ``{"server_ttft_s": [...]}`` and
``DELETE /fake/timings`` clears it, so a client benchmark can subtract what the server itself spent.

Run it in-process (``async with FakeOpenAIServer(...)``, or :func:`serve_in_thread` from synchronous code) or as
``python -m rlserve.testing.fake_openai_server --port P``. Fault injection for tests: ``metrics_mode``
(``"ok"``, ``"garbage"``, ``"error"``), ``metrics_delay_s`` and ``completions_status`` may be changed on the live
``config``; ``completions_mode`` makes completions misbehave: ``wedge`` (accepted, not a byte ever sent, while
``/health`` still answers) or ``no_done`` (a stream that ends cleanly without ``data: [DONE]``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from rlserve.aio import running_in_thread

FAKE_TOKEN = " tok"


@dataclass
class FakeServerConfig:
    """How the fake behaves. Fields may be changed while it runs (read on every request/scrape)."""

    model: str = "fake-model"
    tokens_per_response: int = 16
    """Output tokens when the request gives no ``max_tokens`` (or when ``honour_max_tokens`` is False)."""
    honour_max_tokens: bool = True
    """Generate exactly the request's ``max_tokens`` (like vLLM with ``ignore_eos``)."""
    ttft_delay_s: float = 0.0
    """Server time from admission to the first token."""
    inter_token_delay_s: float = 0.0
    """Server time between consecutive tokens."""
    max_num_seqs: int = 1024
    """Concurrently running requests; more wait (and show up as ``num_requests_waiting``)."""
    num_gpu_blocks: int = 4096
    block_size: int = 16
    legacy_metric_names: bool = False
    """Expose ``vllm:gpu_cache_usage_perc`` (vLLM < 0.10) instead of ``vllm:kv_cache_usage_perc``."""
    metrics_mode: str = "ok"
    """``ok``; ``garbage`` (200 with unparsable text); ``error`` (HTTP 500)."""
    metrics_delay_s: float = 0.0
    """Delay before answering ``/metrics`` (a slow server)."""
    completions_status: int = 200
    """Answer every completion request with this HTTP status (an OpenAI-style error body unless 200)."""
    completions_mode: str = "ok"
    """``ok``; ``wedge`` (never send a byte); ``no_done`` (end streams without ``data: [DONE]``)."""


@dataclass
class _Counters:
    running: int = 0
    waiting: int = 0
    used_blocks: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: int = 0
    prefix_queries: int = 0


def _prompt_tokens(body: dict[str, Any]) -> int:
    """Rough token count of a prompt: list-of-ids length, else whitespace words (the fake has no tokenizer)."""
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
        return max(1, len(text.split()))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], int):
            return len(prompt)
        return max(1, sum(len(str(p).split()) for p in prompt))
    return max(1, len(str(prompt).split()))


class FakeOpenAIServer:
    """The fake server; ``await start()`` / ``await stop()`` or ``async with``. ``port=0`` picks a free port."""

    def __init__(self, config: FakeServerConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or FakeServerConfig()
        self.host = host
        self.port = port
        self.counters = _Counters()
        self.server_ttft_s: list[float] = []
        self._runner: web.AppRunner | None = None
        self._admission: asyncio.Semaphore | None = None
        self._admission_size = 0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)  # collect() below

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving (returns once the socket accepts connections)."""
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/fake/timings", self._timings)
        app.router.add_delete("/fake/timings", self._timings)
        # handler_cancellation: a client that hangs up ends its handler (a wedged one included), as in vLLM
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close the socket and cancel in-flight responses."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- handlers -------------------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _timings(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.server_ttft_s.clear()
        return web.json_response({"server_ttft_s": self.server_ttft_s})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.config.model, "object": "model"}]})

    def _semaphore(self) -> asyncio.Semaphore:
        # Rebuilt when max_num_seqs changes between requests (config is live).
        if self._admission is None or self._admission_size != self.config.max_num_seqs:
            self._admission = asyncio.Semaphore(self.config.max_num_seqs)
            self._admission_size = self.config.max_num_seqs
        return self._admission

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        received_unix_s, received_s = time.time(), time.monotonic()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "body must be a JSON object"}}, status=400)
        cfg = self.config
        if cfg.completions_mode == "wedge":
            await asyncio.Event().wait()  # until the client gives up (its handler is cancelled)
        if cfg.completions_status != 200:
            return web.json_response({"error": {"message": "injected failure", "code": cfg.completions_status}},
                                     status=cfg.completions_status)
        chat = request.path.endswith("/chat/completions")
        n_out = int(body.get("max_tokens") or body.get("max_completion_tokens") or cfg.tokens_per_response)
        if not cfg.honour_max_tokens:
            n_out = cfg.tokens_per_response
        n_out = max(1, n_out)
        n_in = _prompt_tokens(body)
        c = self.counters
        c.waiting += 1
        sem = self._semaphore()
        async with sem:
            c.waiting -= 1
            c.running += 1
            c.prompt_tokens += n_in
            c.prefix_queries += n_in
            blocks = 0
            try:
                blocks = self._grow(0, n_in)
                headers = {"x-fake-received-unix-s": f"{received_unix_s:.6f}"}
                if body.get("stream"):
                    return await self._stream(request, body, chat, n_in, n_out, headers, blocks, received_s)
                if cfg.ttft_delay_s > 0:
                    await asyncio.sleep(cfg.ttft_delay_s)
                if cfg.inter_token_delay_s > 0 and n_out > 1:
                    await asyncio.sleep(cfg.inter_token_delay_s * (n_out - 1))
                c.generation_tokens += n_out
                c.success += 1
                text = FAKE_TOKEN * n_out
                choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                return web.json_response(
                    {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                     "created": int(received_unix_s), "model": cfg.model, "choices": [choice],
                     "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}},
                    headers=headers)
            finally:
                c.running -= 1
                c.used_blocks -= blocks

    def _grow(self, held_blocks: int, tokens: int) -> int:
        """Account KV blocks for ``tokens`` tokens; returns the blocks now held (the fake never runs out)."""
        need = math.ceil(tokens / self.config.block_size)
        self.counters.used_blocks += need - held_blocks
        return need

    async def _stream(self, request: web.Request, body: dict[str, Any], chat: bool, n_in: int, n_out: int,
                      headers: dict[str, str], blocks: int, received_s: float) -> web.StreamResponse:
        cfg = self.config
        c = self.counters
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **headers})
        await resp.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(text: str, finish: str | None, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"content": text}
                if first:
                    delta["role"] = "assistant"
                ch: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                ch = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            payload = {"id": "cmpl-fake", "object": obj, "created": created, "model": cfg.model, "choices": [ch]}
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        held = blocks
        try:
            if cfg.ttft_delay_s > 0:
                await asyncio.sleep(cfg.ttft_delay_s)
            for i in range(n_out):
                if i > 0 and cfg.inter_token_delay_s > 0:
                    await asyncio.sleep(cfg.inter_token_delay_s)
                held = self._grow(held, n_in + i + 1)
                c.generation_tokens += 1
                await resp.write(chunk(FAKE_TOKEN, "length" if i == n_out - 1 else None, first=i == 0))
                if i == 0:
                    self.server_ttft_s.append(time.monotonic() - received_s)
            if include_usage:
                usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
                payload = {"id": "cmpl-fake", "object": obj, "created": created, "model": cfg.model,
                           "choices": [], "usage": usage}
                await resp.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")
            if cfg.completions_mode != "no_done":
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            c.success += 1
        finally:
            c.used_blocks -= held - blocks  # the caller releases the initial `blocks`
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        cfg = self.config
        if cfg.metrics_delay_s > 0:
            await asyncio.sleep(cfg.metrics_delay_s)
        if cfg.metrics_mode == "error":
            return web.Response(status=500, text="internal error\n")
        if cfg.metrics_mode == "garbage":
            return web.Response(text="<html>this is { not prometheus\n", content_type="text/plain")
        return web.Response(body=generate_latest(self._registry), content_type="text/plain")

    def collect(self) -> Iterator[Any]:
        """Prometheus collector: the fake's state under vLLM's metric names."""
        cfg, c = self.config, self.counters
        labels = ["model_name", "engine"]
        values = [cfg.model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=labels)
            m.add_metric(values, value)
            return m

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", c.running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", c.waiting)
        usage_name = "vllm:gpu_cache_usage_perc" if cfg.legacy_metric_names else "vllm:kv_cache_usage_perc"
        yield gauge(usage_name, "KV-cache usage. 1 means 100 percent usage.",
                    min(1.0, c.used_blocks / max(1, cfg.num_gpu_blocks)))
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", 0)
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      c.prefix_queries)
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", 0)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", c.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", c.generation_tokens)
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=[*labels, "finished_reason"])
        success.add_metric([*values, "length"], c.success)
        yield success
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=["block_size", "num_gpu_blocks", "cache_dtype", "enable_prefix_caching"])
        info.add_metric([str(cfg.block_size), str(cfg.num_gpu_blocks), "auto", "False"], 1.0)
        yield info


@contextlib.contextmanager
def serve_in_thread(config: FakeServerConfig | None = None, host: str = "127.0.0.1",
                    port: int = 0) -> Iterator[FakeOpenAIServer]:
    """Run the fake on its own event loop in a daemon thread; yields the started server, stops it on exit.

    For synchronous callers (tests, benchmarks) whose own event loop must not share time with the server's.
    """
    with running_in_thread(FakeOpenAIServer(config, host, port), "fake-openai-server", join_timeout_s=10) as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """``python -m rlserve.testing.fake_openai_server --port P [--ttft-delay-s ...]``: serve until Ctrl-C."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--tokens-per-response", type=int, default=16)
    p.add_argument("--ttft-delay-s", type=float, default=0.0)
    p.add_argument("--inter-token-delay-s", type=float, default=0.0)
    p.add_argument("--max-num-seqs", type=int, default=1024)
    p.add_argument("--num-gpu-blocks", type=int, default=4096)
    p.add_argument("--block-size", type=int, default=16)
    a = p.parse_args(argv)
    cfg = FakeServerConfig(model=a.model, tokens_per_response=a.tokens_per_response, ttft_delay_s=a.ttft_delay_s,
                           inter_token_delay_s=a.inter_token_delay_s, max_num_seqs=a.max_num_seqs,
                           num_gpu_blocks=a.num_gpu_blocks, block_size=a.block_size)

    async def serve() -> None:
        async with FakeOpenAIServer(cfg, a.host, a.port) as server:
            print(f"fake OpenAI server on {server.base_url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
