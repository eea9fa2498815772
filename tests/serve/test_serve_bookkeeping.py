"""The proxy's bookkeeping rendered as ReplicaState, on synthetic inputs (no HTTP)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from prometheus_client import generate_latest

from rlserve.serve.bookkeeping import ReplicaBook
from rlserve.serve.config import ReplicaSpec
from rlserve.serve.probes import relevant_metric_lines
from rlserve.snapshot import RECENT_LATENCY_EWMA_ALPHA
from rlserve.telemetry.vllm_metrics import VllmMetrics, parse_vllm_metrics
from rlserve.testing.fake_openai_server import FakeOpenAIServer, FakeServerConfig


def _book(**spec: object) -> ReplicaBook:
    return ReplicaBook(0, ReplicaSpec("http://127.0.0.1:1", **spec), max_queue=8)  # type: ignore[arg-type]


def test_pending_tokens_follow_a_request_through_its_life() -> None:
    book = _book()
    t = book.add(7, arrival_s=1.0, prompt_tokens=50, max_tokens=10)
    s = book.state(1.0)
    assert (s.pending_prefill_tokens, s.pending_decode_tokens) == (50, 10)
    book.first_token(t, 1.5)
    book.tokens(t, 1)
    s = book.state(1.5)
    assert (s.pending_prefill_tokens, s.pending_decode_tokens, s.generated_tokens_total) == (0, 9, 1)
    book.tokens(t, 12)  # more tokens than max_tokens said (an estimate): never negative
    assert book.state(2.0).pending_decode_tokens == 0
    book.complete(7, t, 3.0)
    s = book.state(3.0)
    assert (s.completed_total, s.generated_tokens_total, s.recent_ttft_s, s.recent_e2e_s) == (1, 13, 0.5, 2.0)


def test_removed_requests_leave_no_pending_tokens_and_count_no_completion() -> None:
    book = _book()
    a = book.add(1, 0.0, 30, 5)
    b = book.add(2, 0.0, 40, 6)
    book.first_token(b, 0.1)
    book.tokens(b, 2)
    book.remove(1, a)
    book.remove(2, b)
    book.remove(2, b)  # idempotent
    s = book.state(1.0)
    assert (s.pending_prefill_tokens, s.pending_decode_tokens, s.completed_total) == (0, 0, 0)
    assert not book.outstanding


def test_latency_averages_use_the_shared_ewma_weight() -> None:
    book = _book()
    ttfts, e2es = [0.2, 0.4, 0.1], [1.0, 3.0, 2.0]
    for i, (ttft, e2e) in enumerate(zip(ttfts, e2es, strict=True)):
        t = book.add(i, 10.0 * i, 5, 5)
        book.first_token(t, 10.0 * i + ttft)
        book.complete(i, t, 10.0 * i + e2e)
    expected_ttft, expected_e2e = ttfts[0], e2es[0]
    for ttft, e2e in zip(ttfts[1:], e2es[1:], strict=True):
        expected_ttft += RECENT_LATENCY_EWMA_ALPHA * (ttft - expected_ttft)
        expected_e2e += RECENT_LATENCY_EWMA_ALPHA * (e2e - expected_e2e)
    s = book.state(30.0)
    assert s.recent_ttft_s == pytest.approx(expected_ttft) and s.recent_e2e_s == pytest.approx(expected_e2e)


def test_engine_metrics_split_in_flight_requests_and_give_kv_blocks() -> None:
    book = _book(max_num_seqs=4)
    for i in range(6):
        book.add(i, 0.0, 10, 10)
    for _ in range(5):
        book.gate.in_flight += 1  # 5 admitted, 1 still at the gate (simulated without an event loop)
    book.gate._waiters.append(None)  # type: ignore[arg-type]
    s = book.state(0.0)  # no scrape yet: only max_num_seqs bounds the running batch
    assert (s.num_running, s.num_waiting, s.kv_blocks_total, s.block_size) == (4, 2, 0, 16)
    book.engine = VllmMetrics(kv_cache_usage=0.25, num_requests_running=2, num_requests_waiting=3,
                              num_preemptions_total=4, num_gpu_blocks=400, block_size=32)
    s = book.state(0.0)
    assert (s.num_running, s.num_waiting) == (2, 4)  # the engine's own queue + the gate's
    assert (s.kv_blocks_used, s.kv_blocks_total, s.block_size, s.kv_capacity_tokens) == (100, 400, 32, 12_800)
    assert s.num_preemptions_total == 4
    book.engine = VllmMetrics(kv_cache_usage=0.0, num_requests_running=0, num_requests_waiting=9,
                              num_preemptions_total=math.nan)
    s = book.state(0.0)  # a stale scrape cannot claim more waiting requests than are in flight
    assert (s.num_running, s.num_waiting, s.num_preemptions_total) == (0, 6, 0)


def test_every_state_field_is_filled_from_its_source() -> None:
    """ReplicaBook.state builds ReplicaState positionally (for speed): every field checked by name, each source
    value distinct, so two fields swapped in that call fail here."""
    book = _book(max_num_seqs=8, block_size=16, kv_blocks_total=1000, decode_tokens_per_s=55.0,
                 prefill_tokens_per_s=7000.0, sm_clock_mhz=1410.0, num_stages=2)
    for i in range(11):
        t = book.add(i, arrival_s=0.5 * i, prompt_tokens=100 + i, max_tokens=20 + i)
        if i < 3:
            book.first_token(t, 0.5 * i + 0.25)
            book.tokens(t, 4)
    book.complete(0, t_done := book.outstanding[0], 2.0)
    book.gate.set_cap(12)
    book.gate.in_flight = 9
    book.gate._waiters.extend([None, None])  # type: ignore[list-item]  # 2 at the gate, no event loop
    book.engine = VllmMetrics(kv_cache_usage=0.3, num_requests_running=6, num_requests_waiting=3,
                              num_preemptions_total=5, num_gpu_blocks=4000, block_size=32)
    book.healthy = False
    s = book.state(6.0, queue_k=2, prefix_hit_tokens=48)
    oldest = next(iter(book.outstanding.values()))
    expected = dict(num_waiting=2 + 3, num_running=9 - 3, kv_blocks_used=300, kv_blocks_total=1000, block_size=16,
                    max_num_seqs=8, concurrency_cap=12, num_preemptions_total=5,
                    pending_prefill_tokens=book.pending_prefill_tokens,
                    pending_decode_tokens=book.pending_decode_tokens, completed_total=1,
                    generated_tokens_total=book.generated_tokens_total, recent_ttft_s=0.25,
                    recent_e2e_s=2.0 - t_done.arrival_s, decode_tokens_per_s=55.0, prefill_tokens_per_s=7000.0,
                    kv_capacity_tokens=16_000, sm_clock_mhz=1410.0, num_stages=2, power_w=None, energy_j=None,
                    busy_s=None, healthy=False, prefix_hit_tokens=48)
    got = {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "queue"}
    assert got == expected
    assert len({v for v in expected.values() if isinstance(v, int | float) and not isinstance(v, bool)}) >= 15
    assert len(s.queue) == 2 and s.queue[0].age_s == 6.0 - oldest.arrival_s
    assert (s.queue[0].prompt_tokens, s.queue[0].max_tokens) == (oldest.prompt_tokens, oldest.max_tokens)


def test_configured_geometry_wins_over_metrics_and_cap_defaults_to_max_num_seqs() -> None:
    book = _book(block_size=64, kv_blocks_total=10, max_num_seqs=32)
    book.engine = VllmMetrics(kv_cache_usage=0.5, num_requests_running=0, num_requests_waiting=0,
                              num_gpu_blocks=400, block_size=16)
    s = book.state(0.0)
    assert (s.block_size, s.kv_blocks_total, s.kv_blocks_used, s.concurrency_cap) == (64, 10, 5, 32)
    book.gate.set_cap(3)
    assert book.state(0.0).concurrency_cap == 3


@pytest.mark.parametrize("legacy", [False, True])
def test_filtered_metrics_parse_like_the_full_text(legacy: bool) -> None:
    server = FakeOpenAIServer(FakeServerConfig(legacy_metric_names=legacy, num_gpu_blocks=123, block_size=32))
    server.counters.running, server.counters.waiting, server.counters.used_blocks = 3, 2, 41
    text = generate_latest(server._registry).decode()
    filtered = relevant_metric_lines(text)
    assert len(filtered) < len(text)
    full, kept = parse_vllm_metrics(text), parse_vllm_metrics(filtered)
    for name in ("kv_cache_usage", "num_requests_running", "num_requests_waiting", "num_preemptions_total",
                 "num_gpu_blocks", "block_size"):
        assert getattr(kept, name) == getattr(full, name), name
    assert (kept.num_gpu_blocks, kept.num_requests_waiting) == (123, 2)


def test_a_finished_stream_settles_its_token_count() -> None:
    from rlserve.serve.bookkeeping import Tracked
    from rlserve.serve.proxy import _final_stream_tokens

    t = Tracked(0.0, 10, 32, output_exact=True)
    t.generated_tokens = 20  # 20 SSE events, some carrying several tokens
    length_end = b'data: {"choices":[{"text":"x","finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
    assert _final_stream_tokens(length_end, t) == 32
    assert _final_stream_tokens(b'data: {"usage":{"completion_tokens": 31}}\n\ndata: [DONE]\n\n', t) == 31
    assert _final_stream_tokens(b'data: {"choices":[{"finish_reason":"stop"}]}\n\n', t) is None  # keep count
    t.output_exact = False  # max_tokens was not the client's: "length" says nothing about the count
    assert _final_stream_tokens(length_end, t) is None
    book = _book()
    t = book.add(1, 0.0, 10, 32, output_exact=True)
    book.tokens(t, 20)
    book.complete(1, t, 1.0, 32)
    s = book.state(1.0)
    assert (s.generated_tokens_total, s.pending_decode_tokens, s.pending_prefill_tokens) == (32, 0, 0)
