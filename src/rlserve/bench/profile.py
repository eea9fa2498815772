"""Profile a live OpenAI-compatible vLLM server with a designed request set, for ``rlserve calibrate --url``.

What is measured, and why this design:

- **lone prefills** of many prompt sizes, one at a time, ``max_tokens=1``: the client's TTFT is the frontend
  latency (HTTP, tokenisation, streaming back) plus one prefill iteration of ``n`` tokens;
- **decode batches** of several sizes ``B`` and prompt lengths ``c``: ``B`` requests sent together, each streamed
  with ``return_token_ids`` so tokens are counted exactly even when vLLM packs several into one chunk. In the
  window where all ``B`` have their first token and none has finished, every iteration is a decode step of the
  whole batch, so tokens per request over the window give the decode iteration time at ``(B, S)`` with ``S`` the
  context summed over the batch at the window's middle;
- **KV capacity and block size** from ``/metrics`` (``vllm:cache_config_info``).

Prompts are random token ids, distinct per request (vLLM's prefix cache must not shorten a prefill). The run is
bounded by a deadline: what is not measured by then is missing and the profile says it is incomplete.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np

from rlserve.bench.request import SseParser
from rlserve.errors import BackendError
from rlserve.telemetry.vllm_metrics import parse_vllm_metrics

DEFAULT_PREFILL_SIZES = (16, 64, 128, 256, 512, 768, 1024, 1536)
DEFAULT_DECODE_BATCHES = (1, 2, 4, 8, 16)
DEFAULT_DECODE_CONTEXTS = (32, 256, 1024)
TOKEN_ID_RANGE = (100, 1000)  # ids every test model's and real vocabulary has


@dataclass(frozen=True)
class PrefillPoint:
    """One lone prefill: ``tokens`` prompt tokens, client TTFT in seconds."""

    tokens: int
    ttft_s: float


@dataclass(frozen=True)
class DecodePoint:
    """One decode measurement: batch size, context summed over the batch, seconds per decode iteration."""

    batch: int
    prompt_tokens: int
    context_sum: float
    step_s: float
    tokens_timed: int  # tokens (per request, summed) the step time is averaged over


@dataclass
class Profile:
    """Everything one profiling run measured; ``complete`` only when the whole design was measured."""

    url: str
    model: str
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    prefills: list[PrefillPoint] = field(default_factory=list)
    decodes: list[DecodePoint] = field(default_factory=list)
    complete: bool = False
    elapsed_s: float = 0.0
    missing: list[str] = field(default_factory=list)  # not measured before the deadline
    rejected: list[str] = field(default_factory=list)  # measured but unusable (window too short, bursty stream)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class ProfileDesign:
    """The request set: sizes, repeats and the time bound."""

    prefill_sizes: Sequence[int] = DEFAULT_PREFILL_SIZES
    prefill_repeats: int = 3
    decode_batches: Sequence[int] = DEFAULT_DECODE_BATCHES
    decode_contexts: Sequence[int] = DEFAULT_DECODE_CONTEXTS
    decode_tokens: int = 48
    decode_repeats: int = 2
    max_model_len: int = 2048
    budget_s: float = 180.0
    request_timeout_s: float = 60.0
    seed: int = 0

    def steps(self) -> int:
        """Number of measurements the design makes (for the progress bar)."""
        return (len(self.prefill_sizes) * self.prefill_repeats
                + len(self.decode_batches) * len(self.decode_contexts) * self.decode_repeats)


async def _stream(session: aiohttp.ClientSession, url: str, model: str, prompt: list[int],
                  max_tokens: int) -> tuple[float, list[tuple[float, int]]]:
    """Send one streaming completion; returns (send time, [(arrival time, tokens in chunk)])."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True, "return_token_ids": True}
    parser = SseParser()
    chunks: list[tuple[float, int]] = []
    sent = time.monotonic()
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            text = (await resp.text())[:200].replace("\n", " ")
            raise BackendError(f"{url} answered HTTP {resp.status}: {text}")
        async for raw in resp.content.iter_any():
            now = time.monotonic()
            for data in parser.feed(raw):
                if data.strip() == "[DONE]":
                    continue
                payload = json.loads(data)
                if "error" in payload:
                    raise BackendError(f"{url} sent an error event: {str(payload['error'])[:200]}")
                for choice in payload.get("choices") or ():
                    n = len(choice.get("token_ids") or ()) or (1 if choice.get("text") else 0)
                    if n:
                        chunks.append((now, n))
    got = sum(n for _, n in chunks)
    if got != max_tokens:
        raise BackendError(f"{url} returned {got} tokens for max_tokens={max_tokens} (ignore_eos is needed)")
    return sent, chunks


def decode_step(streams: list[list[tuple[float, int]]], prompt_tokens: int) -> tuple[float, float, int] | None:
    """(seconds per decode iteration, context sum at the middle, tokens timed) from ``B`` streams that ran
    together; None if too few tokens were timed.

    Each stream is timed from its first chunk after every stream has its first token (before that, prefills of
    the later requests share iterations with the decodes) to its last chunk. Only chunk times at these two ends
    matter, so vLLM packing several tokens into one chunk does not bias the result.
    """
    start = max(s[0][0] for s in streams)
    spans = 0.0
    tokens = 0
    chunks = 0
    gen_mid = 0.0
    for s in streams:
        times = [t for t, _ in s]
        counts = np.cumsum([n for _, n in s])
        i = next((j for j, t in enumerate(times) if t >= start), 0)
        if i == len(times) - 1:
            i = 0
        spans += times[-1] - times[i]
        tokens += int(counts[-1] - counts[i])
        chunks += len(times) - 1 - i
        gen_mid += (counts[-1] + counts[i]) / 2
    if tokens < 2 * len(streams) or spans <= 0 or chunks * 4 < tokens:
        return None  # too short, or the stream came in bursts (a busy frontend): client times say nothing
    return spans / tokens, len(streams) * prompt_tokens + gen_mid, tokens


async def _metrics(session: aiohttp.ClientSession, url: str) -> tuple[int | None, int | None]:
    try:
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
        m = parse_vllm_metrics(text)
    except (aiohttp.ClientError, TimeoutError, BackendError):
        return None, None
    return m.block_size, m.num_gpu_blocks


async def profile_server(url: str, model: str | None = None, design: ProfileDesign | None = None,
                         progress: Callable[[str], None] | None = None) -> Profile:
    """Run the design against ``url``; stops at the deadline with ``complete=False`` (never raises for that).

    Raises:
        BackendError: the server cannot be reached, errors, or times out on a request.
    """
    design = design or ProfileDesign()
    url = url.rstrip("/")
    rng = np.random.default_rng(design.seed)
    lo, hi = TOKEN_ID_RANGE
    t_start = time.monotonic()
    deadline = t_start + design.budget_s
    done = 0
    total = design.steps()

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(f"[{done}/{total}] {what} ({time.monotonic() - t_start:.0f}s of {design.budget_s:.0f}s)")

    def prompt(n: int) -> list[int]:
        return rng.integers(lo, hi, n).tolist()

    timeout = aiohttp.ClientTimeout(total=design.request_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            if model is None:
                async with session.get(f"{url}/v1/models") as resp:
                    model = str((await resp.json(content_type=None))["data"][0]["id"])
            prof = Profile(url=url, model=model)
            prof.block_size, prof.num_gpu_blocks = await _metrics(session, url)
            for _ in range(2):  # warm-up: first requests pay one-off costs
                await _stream(session, url, model, prompt(64), 4)
            for n in sorted(design.prefill_sizes):
                if n + 1 > design.max_model_len:
                    continue
                for _ in range(design.prefill_repeats):
                    if time.monotonic() > deadline:
                        prof.missing.append(f"prefill {n}")
                        continue
                    sent, chunks = await _stream(session, url, model, prompt(n), 1)
                    prof.prefills.append(PrefillPoint(n, chunks[0][0] - sent))
                    tick(f"prefill {n} tokens: {1e3 * (chunks[0][0] - sent):.1f} ms")
            m = design.decode_tokens
            for c in design.decode_contexts:
                if c + m > design.max_model_len:
                    continue
                for b in design.decode_batches:
                    for _ in range(design.decode_repeats):
                        if time.monotonic() > deadline:
                            prof.missing.append(f"decode B={b} c={c}")
                            continue
                        results = await asyncio.gather(*(_stream(session, url, model, prompt(c), m)
                                                         for _ in range(b)))
                        step = decode_step([chunks for _, chunks in results], c)
                        if step is None:
                            prof.rejected.append(f"decode B={b} c={c}")
                        else:
                            prof.decodes.append(DecodePoint(b, c, step[1], step[0], step[2]))
                        tick(f"decode B={b} context {c}: "
                             + (f"{1e3 * step[0]:.2f} ms/step" if step else "rejected (short or bursty stream)"))
    except TimeoutError:
        raise BackendError(f"{url}: a request took longer than {design.request_timeout_s:g} s; is the server "
                           "overloaded? raise --request-timeout-s") from None
    except aiohttp.ClientError as exc:
        raise BackendError(f"{url}: {type(exc).__name__}: {exc}; is the server running?") from None
    prof.elapsed_s = time.monotonic() - t_start
    # every design point measured (rejected ones were measured; a fit needs most of them, checked by the caller)
    prof.complete = not prof.missing and len(prof.decodes) >= len(prof.rejected) and bool(prof.prefills)
    return prof


@dataclass(frozen=True)
class StreamTrace:
    """One replayed request as the client saw it: send time and (arrival time, tokens) per chunk, monotonic s."""

    send_s: float
    chunks: tuple[tuple[float, int], ...]

    @property
    def first_token_s(self) -> float:
        """When the first token arrived."""
        return self.chunks[0][0]

    @property
    def finish_s(self) -> float:
        """When the last token arrived."""
        return self.chunks[-1][0]

    def token_gaps(self) -> list[float]:
        """Per-token inter-token gaps: a chunk of ``n`` tokens after a gap ``g`` counts as ``n`` gaps of ``g/n``
        (vLLM packs tokens generated between two sends into one chunk; this spreads them evenly)."""
        gaps: list[float] = []  # tokens delivered with the first one have no observable gap: left out
        for (t0, _), (t1, n) in zip(self.chunks, self.chunks[1:], strict=False):
            gaps += [(t1 - t0) / n] * n
        return gaps


async def replay(url: str, model: str, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int],
                 arrival_s: Sequence[float], request_timeout_s: float = 120.0) -> tuple[float, list[StreamTrace]]:
    """Send token-id prompts at ``arrival_s`` (seconds from the start, as ``rlserve bench`` replays a trace) and
    record every streamed chunk with its token count. Returns (start, traces).

    Raises:
        BackendError: any request fails (a fidelity measurement with failed requests means nothing).
    """
    url = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.monotonic()
        tasks = []
        for prompt, m, at in zip(prompts, max_tokens, arrival_s, strict=True):
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_stream(session, url, model, list(prompt), int(m))))
        try:
            results = await asyncio.gather(*tasks)
        except (TimeoutError, aiohttp.ClientError) as exc:
            for task in tasks:
                task.cancel()
            raise BackendError(f"{url}: replay failed ({type(exc).__name__}: {exc})") from None
    return start, [StreamTrace(sent, tuple(chunks)) for sent, chunks in results]
