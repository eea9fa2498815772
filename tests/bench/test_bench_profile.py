"""The profiler's timing arithmetic on synthetic streams (the live part is in tests/integration)."""

from __future__ import annotations

import pytest

from rlserve.bench.profile import StreamTrace, decode_step


def _stream(first: float, step: float, tokens: int, per_chunk: int = 1) -> list[tuple[float, int]]:
    """One request's chunks: first token at ``first``, then one token per ``step``, sent ``per_chunk`` at a time."""
    out = [(first, 1)]
    for k in range(per_chunk, tokens, per_chunk):
        out.append((first + k * step, per_chunk))
    return out


def test_decode_step_is_timed_after_every_stream_has_its_first_token() -> None:
    # B = 3 requests whose prefills ended at 0.00, 0.01 and 0.02, then lock-step decode at 5 ms
    streams = [_stream(0.0, 0.005, 41), _stream(0.01, 0.005, 41), _stream(0.02, 0.005, 41)]
    step, context, timed = decode_step(streams, prompt_tokens=100)
    assert step == pytest.approx(0.005)
    assert 3 * 100 < context < 3 * 141 and timed > 100


def test_packed_chunks_do_not_bias_the_step_but_bursts_are_rejected() -> None:
    packed = [_stream(0.0, 0.004, 41, per_chunk=2), _stream(0.0, 0.004, 41, per_chunk=2)]
    assert decode_step(packed, 10)[0] == pytest.approx(0.004)
    bursty = [_stream(0.0, 0.004, 41, per_chunk=8), _stream(0.0, 0.004, 41, per_chunk=8)]
    assert decode_step(bursty, 10) is None


def test_token_gaps_spread_a_chunk_over_its_tokens() -> None:
    trace = StreamTrace(0.0, ((0.1, 2), (0.2, 1), (0.5, 3)))
    assert trace.token_gaps() == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert trace.first_token_s == 0.1 and trace.finish_s == 0.5
