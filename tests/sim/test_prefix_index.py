"""The prefix index (one implementation for the proxy and the simulator) and the prefix workloads it serves."""

from __future__ import annotations

import numpy as np
import pytest

from rlserve.prefix_index import PrefixIndex, prefix_block_hashes, text_block_hashes
from rlserve.scenario import load_scenario
from rlserve.sim import ClusterConfig, ClusterSimulator, ReplicaConfig
from rlserve.workload import WorkloadConfig, build_workload
from rlserve.workload.request import Workload


def test_chained_hashes_share_exactly_the_shared_blocks() -> None:
    a = prefix_block_hashes(0, 100, prefix_id=7, prefix_tokens=64)
    b = prefix_block_hashes(1, 90, prefix_id=7, prefix_tokens=64)
    c = prefix_block_hashes(2, 100, prefix_id=8, prefix_tokens=64)
    assert len(a) == 6 and len(b) == 5  # full blocks of 16 only
    assert a[:4] == b[:4] and a[4] != b[4]  # 64 shared tokens = 4 blocks
    assert not set(a) & set(c)
    text = "You are a helpful assistant. " * 10
    t1, t2 = text_block_hashes(text + "What is 2+2? " * 20), text_block_hashes(text + "Name a prime. " * 20)
    shared = len(text) // 64  # 16 tokens x 4 characters per block
    assert len(t1) > shared + 2 and t1[:shared] == t2[:shared] and not set(t1[shared:]) & set(t2[shared:])
    assert text_block_hashes(list(range(40))) == text_block_hashes(tuple(range(40)))  # token ids: 16 per block


def test_index_matches_leading_blocks_and_is_bounded() -> None:
    idx = PrefixIndex(2, block_size=16, capacity_blocks=10, ttl_s=60.0)
    h = prefix_block_hashes(0, 16 * 8, prefix_id=1, prefix_tokens=16 * 8)
    idx.record(1, h[:5], now_s=0.0)
    assert idx.matched_tokens(h, now_s=1.0) == [0, 80]
    assert idx.matched_tokens(h, now_s=61.0) == [0, 0]  # expired (TTL)
    idx.record(1, prefix_block_hashes(9, 16 * 8, prefix_id=2, prefix_tokens=128), now_s=2.0)
    assert len(idx) == 10  # capacity: 5 + 8 hashes, the 3 least recent evicted
    assert idx.matched_tokens(h, now_s=3.0)[1] == 32  # the chain's first blocks were kept (evicted last)


def test_simulator_snapshot_reports_the_indexed_prefix_of_the_next_request() -> None:
    w = Workload.from_arrays(np.array([0.0, 1.0, 2.0]), np.array([500, 500, 500]), np.array([5, 5, 5]),
                             prefix_id=np.array([3, 4, 3]), prefix_tokens=np.array([320, 320, 320]))
    cluster = ClusterConfig(tuple(ReplicaConfig(model="llama-2-7b", gpu="a100-80gb", enable_prefix_caching=True)
                                  for _ in range(2)))
    sim = ClusterSimulator(cluster, w)
    assert [r.prefix_hit_tokens for r in sim.snapshot().replicas] == [0, 0]
    sim.dispatch(1)
    sim.dispatch(0)
    assert [r.prefix_hit_tokens for r in sim.snapshot().replicas] == [0, 320]  # prefix 3 went to replica 1


def test_sessions_workload_grows_each_conversation_and_is_deterministic() -> None:
    cfg = WorkloadConfig.from_dict({
        "num_requests": 400, "arrival": {"kind": "poisson", "qps": 4.0}, "sessions": {"turns_mean": 4,
                                                                                      "think_time_s": 10},
        "lengths": {"kind": "fixed", "prompt_tokens": 50, "output_tokens": 30}, "max_total_tokens": 2000},
        where="test")
    w = build_workload(cfg, 3)
    np.testing.assert_array_equal(w.prompt_tokens, build_workload(cfg, 3).prompt_tokens)
    assert np.all(np.diff(w.arrival_s) >= 0) and len(w) == 400
    assert (w.prefix_tokens == w.prompt_tokens).all()  # every turn's prompt lies on its conversation
    for s in np.unique(w.prefix_id)[:20]:
        p = w.prompt_tokens[w.prefix_id == s]
        assert p.tolist() == [50 + 80 * k for k in range(len(p))]  # previous prompt + answer (30) + user text (50)
    turns = np.bincount(w.prefix_id)
    assert 2.5 < turns[turns > 0].mean() < 5.0  # ~4 turns, the last conversations cut by the request count
    assert 3.0 < len(w) / w.arrival_s[-1] < 5.0  # requests still arrive at about qps


def test_zipf_shared_prompts_are_skewed_and_prepended() -> None:
    cfg = WorkloadConfig.from_dict({
        "num_requests": 5000, "arrival": {"kind": "poisson", "qps": 4.0},
        "lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 10},
        "prefix": {"share_fraction": 1.0, "num_prefixes": 10, "prefix_tokens": 1000, "zipf_s": 1.0,
                   "prepend": True}}, where="test")
    w = build_workload(cfg, 0)
    counts = np.bincount(w.prefix_id, minlength=10)
    assert (w.prompt_tokens == 1100).all() and (w.prefix_tokens == 1000).all()
    assert counts[0] / counts[9] == pytest.approx(10, rel=0.3)  # p_j proportional to 1 / (j + 1)


def test_session_turns_reuse_the_cache_of_the_previous_turn() -> None:
    """Each turn extends its conversation's cached prefix, so turn 3 computes only what turn 2 added (about the
    same work as turn 2), not everything after turn 1's prompt."""
    prompts = np.array([1024, 1536, 2048])
    w = Workload.from_arrays(np.array([0.0, 10.0, 20.0]), prompts, np.array([2, 2, 2]), np.zeros(3, np.int64),
                             prompts)
    on = ClusterSimulator(ClusterConfig((ReplicaConfig(model="llama-2-7b", gpu="a100-80gb",
                                                       enable_prefix_caching=True),)), w)
    for _ in range(3):
        on.dispatch(0)
    result = on.finish()
    ttft = result.records.ttft_s
    assert ttft[1] < ttft[0] * 0.7 and ttft[2] < ttft[1] * 1.2
    assert result.replica_stats[0].prefix_hit_tokens == 1024 + 1536
    assert result.summary().extra["prefix_hit_rate"] == pytest.approx(2560 / prompts.sum())


def test_shipped_prefix_scenarios_hit_the_cache_when_routed_for_it() -> None:
    scn = load_scenario("shared_prompts_kv").with_num_requests(600)
    assert scn.cluster.replicas[0].enable_prefix_caching
    from rlserve.policies import make_router
    from rlserve.sim import simulate

    w = scn.build_workload(0)
    hits = {r: simulate(scn.cluster, w, make_router(r, seed=0)).summary().extra["prefix_hit_rate"]
            for r in ("round_robin", "prefix_affinity")}
    assert hits["prefix_affinity"] > hits["round_robin"] + 0.1


def test_sharegpt_conversations_are_replayed_as_sessions(tmp_path) -> None:
    """A public format with conversation ids: every human -> gpt exchange of a ShareGPT record becomes a turn,
    each turn's prompt the whole history so far (4 characters per token without a tokenizer)."""
    import json

    convo = [{"from": "human", "value": "a" * 400}, {"from": "gpt", "value": "b" * 200},
             {"from": "human", "value": "c" * 80}, {"from": "gpt", "value": "d" * 120},
             {"from": "human", "value": "e" * 40}, {"from": "gpt", "value": "f" * 40}]
    (tmp_path / "sg.json").write_text(json.dumps([{"id": "x", "conversations": convo}]))
    cfg = WorkloadConfig.from_dict({"num_requests": 30, "arrival": {"kind": "poisson", "qps": 1.0},
                                    "sessions": {"think_time_s": 5},
                                    "lengths": {"kind": "sharegpt", "path": "sg.json"}}, where="t",
                                   base_dir=tmp_path)
    w = build_workload(cfg, 0)
    for s in np.unique(w.prefix_id)[:5]:
        turns = w.prompt_tokens[w.prefix_id == s].tolist()
        assert turns == [100, 100 + 50 + 20, 100 + 50 + 20 + 30 + 10][:len(turns)]
    assert set(w.output_tokens.tolist()) == {50, 30, 10}
