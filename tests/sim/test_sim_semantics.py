"""Simulator semantics: closed-form latencies, invariants, preemption, determinism, jump == step."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_perf import LinearPerf

from rlserve.errors import ConfigError
from rlserve.policies import make_router
from rlserve.sim import ClusterConfig, ClusterSimulator, ReplicaConfig, simulate
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request, Workload


def cluster(n: int = 1, **kw) -> ClusterConfig:
    return ClusterConfig((ReplicaConfig(**kw),) * n)


def run(cl: ClusterConfig, w: Workload, router: str = "round_robin", *, exact: bool = False, **perf_kw):
    sim = ClusterSimulator(cl, w, perf_models=[LinearPerf(**perf_kw) for _ in cl.replicas], exact_steps=exact)
    sim.run(make_router(router, seed=0))
    return sim.finish()


def random_workload(rng: np.random.Generator, n: int, qps: float, max_prompt: int = 600, max_out: int = 300,
                    prefixes: bool = False) -> Workload:
    prefix_id = rng.integers(0, 3, n) if prefixes else None
    prefix_tokens = np.full(n, 64) if prefixes else None
    return Workload.from_arrays(np.cumsum(rng.exponential(1 / qps, n)), rng.integers(65, max_prompt, n),
                                rng.integers(1, max_out, n), prefix_id, prefix_tokens)


@pytest.mark.parametrize("batching", ["prefill_priority", "chunked"])
def test_lone_request_latency_is_closed_form(batching: str) -> None:
    perf = dict(overhead_s=0.01, prefill_token_s=1e-4, decode_seq_s=2e-4, ctx_token_s=1e-6)
    prompt, output, arrival = 300, 50, 1.5
    w = Workload.from_arrays(np.array([arrival]), np.array([prompt]), np.array([output]))
    rec = run(cluster(batching=batching, max_num_batched_tokens=4096), w, **perf).records
    first_token = arrival + perf["overhead_s"] + perf["prefill_token_s"] * prompt
    # decode step i attends to prompt + i + 1 tokens (the KV of the prompt, earlier outputs and itself)
    finish = first_token + sum(perf["overhead_s"] + perf["decode_seq_s"] + perf["ctx_token_s"] * (prompt + 1 + i)
                               for i in range(output - 1))
    assert rec.first_scheduled_s[0] == arrival
    assert rec.first_token_s[0] == pytest.approx(first_token, rel=1e-12)
    assert rec.finish_s[0] == pytest.approx(finish, rel=1e-12)
    assert rec.tpot_s[0] == pytest.approx((finish - first_token) / (output - 1), rel=1e-12)


def test_chunked_prefill_splits_a_long_prompt_over_iterations() -> None:
    perf = dict(overhead_s=0.01, prefill_token_s=1e-4)
    w = Workload.from_arrays(np.array([0.0]), np.array([2500]), np.array([1]))
    rec = run(cluster(batching="chunked", max_num_batched_tokens=1000), w, **perf).records
    # 3 iterations of 1000, 1000 and 500 prompt tokens; the single output token comes with the last one
    assert rec.finish_s[0] == pytest.approx(3 * 0.01 + 2500 * 1e-4, rel=1e-12)


def test_single_token_request_finishes_with_its_prefill() -> None:
    w = Workload.from_arrays(np.array([0.0]), np.array([100]), np.array([1]))
    rec = run(cluster(batching="prefill_priority"), w).records
    assert rec.finish_s[0] == rec.first_token_s[0]
    assert math.isnan(rec.tpot_s[0])


class Recorder:
    """Round robin that checks invariants on every snapshot it sees."""

    name = "recorder"

    def __init__(self) -> None:
        self.times: list[float] = []
        self.max_fill = 0.0
        self._n = 0

    def reset(self, seed: int | None = None) -> None:
        self._n = 0

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        self.times.append(snapshot.time_s)
        for r in snapshot.replicas:
            assert 0 <= r.kv_blocks_used <= r.kv_blocks_total
            assert r.num_waiting >= 0 and r.num_running >= 0 and r.pending_decode_tokens >= 0
            self.max_fill = max(self.max_fill, r.kv_blocks_used / r.kv_blocks_total)
        self._n += 1
        return self._n % snapshot.num_replicas


@pytest.mark.parametrize("batching", ["prefill_priority", "chunked"])
def test_kv_pressure_preempts_and_every_request_still_finishes_once(batching: str) -> None:
    rng = np.random.default_rng(3)
    w = random_workload(rng, 400, qps=40.0, max_out=400)
    cl = cluster(2, batching=batching, max_num_seqs=64, max_num_batched_tokens=2048)
    sim = ClusterSimulator(cl, w, perf_models=[LinearPerf(kv_blocks=150) for _ in range(2)])
    rec_router = Recorder()
    sim.run(rec_router)
    result = sim.finish()
    rec = result.records
    assert rec.preemptions.sum() > 0, "this setting is meant to run out of KV blocks"
    assert rec.finished.all()
    assert sorted(sim.table.finished_order) == list(range(len(w)))  # each exactly once
    assert rec_router.max_fill > 0.9
    assert np.all(np.diff(rec_router.times) >= 0)  # simulated time is monotone
    assert np.all(rec.first_scheduled_s >= rec.arrival_s)
    assert np.all(rec.first_token_s > rec.first_scheduled_s)
    assert np.all(rec.finish_s >= rec.first_token_s)
    for r in sim.replicas:  # all blocks returned at the end
        assert r.used == 0 and r.B == 0 and not r.waiting and not r.prefilling


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batching=st.sampled_from(["prefill_priority", "chunked"]),
       kv_blocks=st.integers(60, 400), qps=st.floats(2.0, 80.0), prefixes=st.booleans(),
       router=st.sampled_from(["round_robin", "least_outstanding", "least_kv"]))
def test_multi_step_jumps_equal_single_steps(seed: int, batching: str, kv_blocks: int, qps: float,
                                             prefixes: bool, router: str) -> None:
    """The exact decode jumps give the same schedule as one-iteration-at-a-time stepping."""
    w = random_workload(np.random.default_rng(seed), 120, qps, prefixes=prefixes)
    cl = cluster(3, batching=batching, max_num_seqs=32, max_num_batched_tokens=1024, block_size=16,
                 enable_prefix_caching=prefixes)
    fast = run(cl, w, router, kv_blocks=kv_blocks)
    slow = run(cl, w, router, exact=True, kv_blocks=kv_blocks)
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "energy_j"):
        np.testing.assert_allclose(getattr(fast.records, col), getattr(slow.records, col), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(fast.records.preemptions, slow.records.preemptions)
    np.testing.assert_array_equal(fast.records.replica, slow.records.replica)
    assert fast.energy_j == pytest.approx(slow.energy_j, rel=1e-9)
    gaps_fast, gaps_slow = (_expanded_itl(r) for r in (fast, slow))
    np.testing.assert_allclose(gaps_fast, gaps_slow, rtol=1e-9, atol=1e-12)


def _expanded_itl(result) -> np.ndarray:
    gaps, weights = result.itl()
    return np.sort(np.repeat(gaps, weights.astype(np.int64)))


@pytest.mark.parametrize("batching", ["prefill_priority", "chunked"])
def test_itl_gaps_add_up_to_each_requests_decode_time(batching: str) -> None:
    """Without preemptions, every token after the first has exactly one gap: the gaps of a run sum to the time
    between first and last token summed over requests, and there is one gap per such token."""
    w = random_workload(np.random.default_rng(3), 200, qps=40.0)
    res = run(cluster(2, batching=batching, max_num_seqs=32, max_num_batched_tokens=2048), w, kv_blocks=100_000)
    assert res.records.preemptions.sum() == 0
    gaps, weights = res.itl()
    rec = res.records
    assert weights.sum() == (rec.output_tokens - 1).sum()
    assert float(np.dot(gaps, weights)) == pytest.approx(float(np.sum(rec.finish_s - rec.first_token_s)), rel=1e-9)
    summary = res.summary()
    assert summary.itl_s is not None and summary.itl_s["p99"] >= summary.itl_s["p50"] > 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), batching=st.sampled_from(["prefill_priority", "chunked"]),
       kv_blocks=st.integers(60, 300), cap=st.integers(1, 32))
def test_invariants_hold_on_random_runs(seed: int, batching: str, kv_blocks: int, cap: int) -> None:
    w = random_workload(np.random.default_rng(seed), 150, qps=30.0)
    cl = cluster(2, batching=batching, max_num_seqs=32, max_num_batched_tokens=1024, concurrency_cap=cap)
    sim = ClusterSimulator(cl, w, perf_models=[LinearPerf(kv_blocks=kv_blocks) for _ in range(2)])
    router = Recorder()
    sim.run(router)
    rec = sim.finish().records
    assert rec.finished.all()
    assert len(set(sim.table.finished_order)) == len(sim.table.finished_order) == len(w)
    assert np.all(np.diff(router.times) >= 0)
    assert np.all(rec.finish_s >= rec.first_token_s) and np.all(rec.first_token_s > rec.arrival_s)


def test_same_seed_same_numbers_with_the_real_perf_model() -> None:
    rng = np.random.default_rng(7)
    w = random_workload(rng, 300, qps=20.0)
    cl = cluster(3, gpu="a100-80gb", model="llama-2-7b")
    a = simulate(cl, w, make_router("power_of_two", seed=5))
    b = simulate(cl, w, make_router("power_of_two", seed=5))
    for col, values in a.records.columns().items():
        np.testing.assert_array_equal(values, b.records.columns()[col], err_msg=col)
    c = simulate(cl, w, make_router("power_of_two", seed=6))
    assert not np.array_equal(a.records.replica, c.records.replica)


def test_prefix_cache_hits_shorten_prefill() -> None:
    n = 20
    w = Workload.from_arrays(np.arange(n) * 1.0, np.full(n, 1024), np.full(n, 2), np.zeros(n, np.int64),
                             np.full(n, 960))
    on = run(cluster(enable_prefix_caching=True, batching="chunked"), w).records
    off = run(cluster(enable_prefix_caching=False, batching="chunked"), w).records
    assert on.ttft_s[0] == pytest.approx(off.ttft_s[0])  # the first request computes the prefix itself
    assert np.all(on.ttft_s[1:] < off.ttft_s[1:] * 0.2)  # later ones reuse 60 cached blocks of 16 tokens


def test_oversized_request_is_rejected_not_hung() -> None:
    w = Workload.from_arrays(np.array([0.0, 0.1]), np.array([100, 50_000]), np.array([10, 10]))
    result = run(cluster(batching="chunked"), w)
    assert result.rejected == 1
    assert result.records.finished.tolist() == [True, False]


def test_energy_accounts_idle_and_busy_time() -> None:
    w = Workload.from_arrays(np.array([10.0]), np.array([100]), np.array([1]))
    result = run(cluster(), w, power_w=400.0, idle_power_w=100.0)
    busy = result.replica_stats[0].busy_s
    # idle from t=0 to the arrival, then one busy prefill iteration; nothing after the last finish
    assert result.energy_j == pytest.approx(100.0 * 10.0 + 400.0 * busy)


def test_control_changes_take_effect_and_are_validated() -> None:
    w = random_workload(np.random.default_rng(0), 300, qps=50.0)
    sim = ClusterSimulator(cluster(1, max_num_seqs=32), w, perf_models=[LinearPerf()])
    router = make_router("round_robin")
    sim.set_concurrency_cap(0, 2)
    running = []
    for t in np.arange(0.5, 3.0, 0.25):
        sim.run(router, until_s=float(t))
        running.append(sim.snapshot().replicas[0].num_running)
    assert max(running) == 2  # the cap binds under this load
    sim.set_concurrency_cap(0, 32)
    sim.run(router, until_s=4.0)
    assert sim.snapshot().replicas[0].num_running > 2
    clock_before = sim.snapshot().replicas[0].sm_clock_mhz
    sim.set_sm_clock(0, 900.0)
    assert sim.snapshot().replicas[0].sm_clock_mhz == 900.0 != clock_before
    with pytest.raises(ConfigError):
        sim.set_concurrency_cap(0, 0)
    with pytest.raises(ConfigError):
        sim.set_concurrency_cap(0, 33)
    sim.run(router)
    assert sim.finish().records.finished.all()


def test_pop_finished_returns_each_request_once_in_finish_order() -> None:
    w = random_workload(np.random.default_rng(1), 300, qps=30.0)
    sim = ClusterSimulator(cluster(2), w, perf_models=[LinearPerf(), LinearPerf()])
    router = make_router("least_outstanding", seed=0)
    seen: list[int] = []
    for t in np.arange(1.0, 40.0, 1.0):
        sim.run(router, until_s=float(t))
        ids = sim.pop_finished()
        finish = sim.records.finish_s[ids]
        assert np.all(finish <= t) and np.all(np.diff(finish) >= 0)
        seen.extend(ids.tolist())
    sim.run(router)
    sim.finish()
    assert len(seen) == len(set(seen))


def test_run_gives_a_router_the_queue_views_it_asks_for() -> None:
    class QueueReader(Recorder):
        queue_k = 3

        def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
            self.longest = max(getattr(self, "longest", 0), max(len(r.queue) for r in snapshot.replicas))
            assert all(len(r.queue) <= 3 for r in snapshot.replicas)
            return super().select(request, snapshot)

    w = random_workload(np.random.default_rng(2), 200, qps=40.0)
    sim = ClusterSimulator(cluster(2), w, perf_models=[LinearPerf(), LinearPerf()])
    router = QueueReader()
    sim.run(router)
    assert router.longest == 3


def test_padded_prefill_budget_counts_requests_times_the_longest_prompt() -> None:
    """Vidur's vLLM scheduler pads every prompt of a prefill batch to the longest; 600 + 100 fit a 1000-token
    budget summed, not padded (2 x 600), so the second request waits one iteration."""
    # a one-token request runs first so that both others are waiting at the next iteration boundary
    w = Workload.from_arrays(np.array([0.0, 0.001, 0.001]), np.array([50, 600, 100]), np.array([1, 5, 5]))
    kw = dict(batching="prefill_priority", max_num_batched_tokens=1000, max_num_seqs=8)
    summed = run(cluster(1, **kw), w).records
    padded = run(cluster(1, prefill_budget="padded", **kw), w).records
    assert summed.first_token_s[1] == summed.first_token_s[2]
    assert padded.first_token_s[2] > padded.first_token_s[1]  # a batch of its own after the 600-token one
    assert padded.first_scheduled_s[2] > padded.first_scheduled_s[1] == summed.first_scheduled_s[1]


def test_chunked_watermark_keeps_blocks_free_only_when_asked() -> None:
    """With 100 blocks of 16 and a 10% watermark, a second 1,400-token prompt (88 blocks) is admitted
    at the next iteration boundary without the watermark in chunked mode but must wait for the first request
    with it."""
    w = Workload.from_arrays(np.array([0.0, 0.0]), np.array([160, 1400]), np.array([3, 3]))
    kw = dict(batching="chunked", max_num_batched_tokens=4096, block_size=16, watermark=0.1)
    free = run(cluster(1, **kw), w, kv_blocks=100).records
    kept = run(cluster(1, chunked_watermark=True, **kw), w, kv_blocks=100).records
    assert free.first_scheduled_s[1] == free.first_token_s[0] < free.finish_s[0]  # the next boundary
    assert kept.first_scheduled_s[1] >= kept.finish_s[0]
    with pytest.raises(ConfigError, match="prefill_budget"):
        ReplicaConfig(prefill_budget="max")
