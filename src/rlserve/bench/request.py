"""Request functions: send one OpenAI-compatible streaming request and time every token. They never raise.

Two endpoints, registered in :data:`REQUEST_FUNCS` by path: ``/v1/completions`` and ``/v1/chat/completions``.
Both share one Server-Sent-Events parser (:class:`SseParser`) and one timing loop; they differ only in the
request body and where a chunk keeps its text. Any failure (connection refused, HTTP error, an ``error`` event,
a stream that ends without ``[DONE]``) becomes ``success=False`` with a one-line ``error``, so a benchmark with a
dying server still finishes and reports.

Times are ``time.monotonic()`` seconds, the clock the monitors stamp samples with, so per-request timings line up
with the KV-cache and power traces. TTFT is measured from the moment the request is handed to the connection
(as ``vllm bench serve`` does); the benchmark's intended arrival time is kept separately by the runner.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rlserve.bench.datasets import SampleRequest, prompt_text


@dataclass
class RequestOutput:
    """What happened to one request. Times are monotonic seconds; NaN where it never got that far."""

    success: bool = False
    error: str = ""
    prompt_tokens: int = 0  # the server's count (usage chunk) when it sent one, else the planned count
    output_tokens: int = 0  # the server's count when given, else the number of non-empty chunks
    send_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    itl_s: list[float] = field(default_factory=list)  # gaps between consecutive content chunks
    generated_text: str = ""

    @property
    def ttft_s(self) -> float:
        """Time to first token from sending."""
        return self.first_token_s - self.send_s

    @property
    def latency_s(self) -> float:
        """End-to-end latency from sending to the last byte."""
        return self.finish_s - self.send_s


class SseParser:
    """Incremental ``text/event-stream`` parser: feed raw bytes, get the ``data`` of each complete event.

    Handles events split across network chunks, CRLF line ends, multi-line data and ``:`` comment lines
    (keep-alives), per the WHATWG SSE format.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Consume ``chunk``; return the data payloads of events completed by it."""
        self._buf += chunk
        events: list[str] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return events
            line, self._buf = self._buf[:nl].rstrip(b"\r"), self._buf[nl + 1:]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data).decode("utf-8", "replace"))
                    self._data = []
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self._data.append(value[1:] if value.startswith(b" ") else value)

    def close(self) -> list[str]:
        """Flush an event left open by a stream that ended without a blank line."""
        events = self.feed(b"\n\n") if self._buf or self._data else []
        return events


@dataclass(frozen=True)
class RequestOptions:
    """What every request of a run carries besides its prompt (``vllm bench serve``'s flags of the same names).

    ``sampling`` holds the sampling parameters given on the command line (``temperature``, ``top_p`` ...);
    ``extra_body`` is merged last into every body (``--extra-body``), so it can override anything.
    """

    ignore_eos: bool = True
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0})
    extra_body: dict[str, Any] = field(default_factory=dict)


def completions_body(model: str, req: SampleRequest, opts: RequestOptions) -> dict[str, Any]:
    """``/v1/completions`` body: token-id prompts are sent as ids (exact length)."""
    prompt = list(req.prompt) if isinstance(req.prompt, tuple) else req.prompt
    return {"model": model, "prompt": prompt, "max_tokens": req.output_tokens, **opts.sampling,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": opts.ignore_eos,
            **opts.extra_body}


def chat_body(model: str, req: SampleRequest, opts: RequestOptions) -> dict[str, Any]:
    """``/v1/chat/completions`` body: one user message."""
    return {"model": model, "messages": [{"role": "user", "content": prompt_text(req.prompt)}],
            "max_completion_tokens": req.output_tokens, **opts.sampling, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": opts.ignore_eos, **opts.extra_body}


def _completion_text(choice: dict[str, Any]) -> str:
    return choice.get("text") or ""


def _chat_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


async def _stream_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any], planned_prompt: int,
                          text_of: Callable[[dict[str, Any]], str]) -> RequestOutput:
    out = RequestOutput(prompt_tokens=planned_prompt)
    usage: dict[str, Any] | None = None
    chunks = 0
    texts: list[str] = []
    last = math.nan
    done = False
    parser = SseParser()
    out.send_s = time.monotonic()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200].replace("\n", " ")
                out.error = f"HTTP {resp.status}: {text}"
                return out
            async for raw in resp.content.iter_any():
                now = time.monotonic()
                for data in parser.feed(raw):
                    if data.strip() == "[DONE]":
                        done = True
                        continue
                    payload = json.loads(data)
                    if "error" in payload:
                        out.error = f"server error event: {str(payload['error'])[:200]}"
                        return out
                    if payload.get("usage"):
                        usage = payload["usage"]
                    for choice in payload.get("choices") or ():
                        if text := text_of(choice):
                            texts.append(text)
                            chunks += 1
                            if math.isnan(out.first_token_s):
                                out.first_token_s = now
                            else:
                                out.itl_s.append(now - last)
                            last = now
            for data in parser.close():
                done = done or data.strip() == "[DONE]"
        out.finish_s = time.monotonic()
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        out.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        return out
    if not done:
        out.error = "stream ended without [DONE]"
        return out
    if chunks == 0:
        out.error = "no tokens received"
        return out
    out.generated_text = "".join(texts)
    out.output_tokens = int(usage.get("completion_tokens", chunks)) if usage else chunks
    if usage and usage.get("prompt_tokens"):
        out.prompt_tokens = int(usage["prompt_tokens"])
    out.success = True
    return out


async def openai_completions(session: aiohttp.ClientSession, base_url: str, model: str, req: SampleRequest,
                             opts: RequestOptions = RequestOptions()) -> RequestOutput:
    """Stream one ``/v1/completions`` request."""
    return await _stream_request(session, f"{base_url}/v1/completions", completions_body(model, req, opts),
                                 req.prompt_tokens, _completion_text)


async def openai_chat(session: aiohttp.ClientSession, base_url: str, model: str, req: SampleRequest,
                      opts: RequestOptions = RequestOptions()) -> RequestOutput:
    """Stream one ``/v1/chat/completions`` request."""
    return await _stream_request(session, f"{base_url}/v1/chat/completions", chat_body(model, req, opts),
                                 req.prompt_tokens, _chat_text)


RequestFunc = Callable[[aiohttp.ClientSession, str, str, SampleRequest, RequestOptions],
                       Coroutine[Any, Any, RequestOutput]]

REQUEST_FUNCS: dict[str, RequestFunc] = {
    "/v1/completions": openai_completions,
    "/v1/chat/completions": openai_chat,
}
