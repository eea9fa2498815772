"""Information parity: one request stream through the proxy's bookkeeping and through the simulator gives a policy
the same observable numbers, computed from declared ``max_tokens`` and tokens streamed, never the true lengths.

The simulator runs one replica one iteration at a time (``exact_steps``) with true outputs shorter than the declared
``max_tokens`` for most requests, and a small KV cache so that some requests are preempted and recomputed. At a grid
of instants, the events a proxy would have seen up to then (arrival, first token, each streamed token, stream end
with ``usage.completion_tokens``) are replayed into a :class:`~rlserve.serve.bookkeeping.ReplicaBook`, and the
fields both worlds define from the request stream are compared. The engine-side fields (waiting/running split, KV
blocks, partially prefilled prompts) come from ``/metrics`` in the proxy and are compared elsewhere
(``test_serve_consistency.py``).
"""

from __future__ import annotations

import numpy as np
from linear_perf import LinearPerf

from rlserve.serve.bookkeeping import ReplicaBook, Tracked
from rlserve.serve.config import ReplicaSpec
from rlserve.sim import ClusterConfig, ClusterSimulator, ReplicaConfig
from rlserve.snapshot import decode_tokens_left
from rlserve.workload.request import Workload

N = 40


def _workload() -> Workload:
    rng = np.random.default_rng(3)
    declared = rng.integers(20, 120, N)
    true = np.where(rng.random(N) < 0.7, np.maximum(declared // rng.integers(2, 6, N), 1), declared)
    return Workload.from_arrays(np.sort(rng.uniform(0, 2.0, N)), rng.integers(30, 400, N), true,
                                max_tokens=declared)


def _generated(sim: ClusterSimulator, rid: int) -> int:
    """Tokens the engine has emitted for ``rid`` so far (what its stream has carried)."""
    rep, t = sim.replicas[0], sim.table
    return rep.steps + t.goff[rid] if rid in rep.decoding else t.gen[rid]


def test_proxy_bookkeeping_and_simulator_observe_the_same_stream() -> None:
    workload = _workload()
    cluster = ClusterConfig((ReplicaConfig(model="llama-2-7b", gpu="a100-80gb", batching="chunked", block_size=16,
                                           num_gpu_blocks=60),))
    sim = ClusterSimulator(cluster, workload, perf_models=[LinearPerf(kv_blocks=60)], exact_steps=True)
    book = ReplicaBook(0, ReplicaSpec("http://127.0.0.1:1"), max_queue=N)
    tracked: dict[int, Tracked] = {}
    done: set[int] = set()
    early = checked = 0
    for now in np.linspace(0.0, 12.0, 241):
        while sim.peek_arrival() is not None and sim.peek_arrival().arrival_s <= now:  # type: ignore[union-attr]
            req = sim.peek_arrival()
            assert req is not None
            sim.dispatch(0)
            tracked[req.id] = book.add(req.id, req.arrival_s, req.prompt_tokens, req.max_tokens)
        sim.advance_to(max(now, sim.now))
        table = sim.table
        # replay what the proxy saw since the last instant, in time order within each kind of event
        for rid in sorted(tracked, key=lambda i: (table.first_token[i], table.arrival[i])):
            t = tracked[rid]
            if t.first_token_s < 0 and table.first_token[rid] <= now:
                book.first_token(t, table.first_token[rid])
        for rid in table.finished_order:  # stream ends, in the order the engine finished them
            if rid not in done:
                t = tracked[rid]
                book.tokens(t, int(table.output[rid]) - t.generated_tokens)
                book.complete(rid, t, table.finish[rid], generated_tokens=int(table.output[rid]))
                done.add(rid)
                early += table.output[rid] < table.declared[rid]
        for rid, t in tracked.items():  # tokens streamed so far by the others
            if rid not in done and (n := _generated(sim, rid) - t.generated_tokens) > 0:
                book.tokens(t, n)
        sim_state = sim.snapshot(queue_k=N).replicas[0]
        proxy_state = book.state(now, queue_k=N)
        for name in ("pending_decode_tokens", "completed_total", "generated_tokens_total", "recent_ttft_s",
                     "recent_e2e_s"):
            assert getattr(sim_state, name) == getattr(proxy_state, name), f"{name} at t={now:.2f}"
        assert sim_state.outstanding == len(book.outstanding)
        expected = sum(decode_tokens_left(table.declared[i], _generated(sim, i)) for i in tracked if i not in done)
        assert sim_state.pending_decode_tokens == expected  # declared sizes only: the truth never shows
        # queue views: the same requests, sizes and progress (the simulator lists in arrival order, as routed here)
        assert [(q.prompt_tokens, q.max_tokens, q.generated_tokens) for q in sim_state.queue] == \
            [(q.prompt_tokens, q.max_tokens, q.generated_tokens) for q in proxy_state.queue]
        checked += 1
    result = sim.finish()
    assert result.records.finished.all() and len(done) == N
    assert early > N // 2  # most requests ended before their max_tokens: the drop on completion was exercised
    assert sum(r.preemptions for r in result.replica_stats) > 0  # and recompute-preemption did not break it
    assert checked == 241
