"""Baseline energy controllers on synthetic snapshots: static, Clipper's AIMD, EAIS's model-based choice."""

from __future__ import annotations

import dataclasses

import pytest

from rlserve.errors import ConfigError
from rlserve.metrics import Slo
from rlserve.policies.energy import ENERGY_CONTROLLERS, ActionSpace, ControlContext, EnergyDecision, make_controller
from rlserve.snapshot import ClusterSnapshot, ReplicaState

SPACE = ActionSpace.for_gpu(345.0, 1980.0, 15.0)
SLO = Slo(ttft_s=2.0, tpot_s=0.05)


def ctx(**kw: object) -> ControlContext:
    base = dict(action_space=SPACE, slo=SLO, max_num_seqs=64)
    base.update(kw)
    return ControlContext(**base)  # type: ignore[arg-type]


def replica(**kw: object) -> ReplicaState:
    base = dict(num_waiting=0, num_running=8, kv_blocks_used=800, kv_blocks_total=10_000, block_size=16,
                max_num_seqs=64, concurrency_cap=64, num_preemptions_total=0, pending_prefill_tokens=0,
                pending_decode_tokens=0, completed_total=0, generated_tokens_total=0, recent_ttft_s=0.2,
                recent_e2e_s=5.0, decode_tokens_per_s=80.0, prefill_tokens_per_s=20_000.0,
                kv_capacity_tokens=160_000, sm_clock_mhz=1980.0, power_w=300.0, energy_j=0.0, busy_s=0.0)
    base.update(kw)
    return ReplicaState(**base)  # type: ignore[arg-type]


def test_registry_names() -> None:
    assert {"static", "clipper", "eais", "dqn"} <= set(ENERGY_CONTROLLERS)
    with pytest.raises(ConfigError, match="choose one of"):
        make_controller("magic", ctx())


def test_static_default_is_uncapped_max_clock_and_pairs_parse() -> None:
    snap = ClusterSnapshot(0.0, 1, (replica(),))
    assert make_controller("static", ctx()).decide(snap, 0) == EnergyDecision(64, 1980.0)
    pinned = make_controller("static:16@1200", ctx())
    assert pinned.decide(snap, 0) == EnergyDecision(16, 1200.0) and pinned.name == "static:16@1200"
    with pytest.raises(ConfigError, match="CAP@MHZ"):
        make_controller("static:fast", ctx())
    with pytest.raises(ConfigError, match=r"\[1, max_num_seqs=64\]"):
        make_controller("static:100@1200", ctx())


def test_clipper_aimd_on_inter_token_time() -> None:
    c = make_controller("clipper", ctx())
    t, gen = 0.0, 0
    decisions = []

    def step(tokens: int) -> EnergyDecision:
        nonlocal t, gen
        t += 1.0
        gen += tokens
        return c.decide(ClusterSnapshot(t, 1, (replica(generated_tokens_total=gen),)), 0)

    decisions.append(step(0))  # first call: no interval yet, starts at the space's largest cap
    assert decisions[0] == EnergyDecision(36, 1980.0)
    # 8 running, 1 s, 400 tokens -> 20 ms per token: within 50 ms -> +1
    assert step(400).concurrency_cap == 37
    # 8 running, 1 s, 100 tokens -> 80 ms per token: over -> x0.9
    assert step(100).concurrency_cap == 33
    assert all(d.sm_clock_mhz == 1980.0 for d in decisions)
    c.reset()
    assert step(0).concurrency_cap == 36


def test_clipper_needs_a_tpot_slo() -> None:
    with pytest.raises(ConfigError, match="slo.tpot_s"):
        make_controller("clipper", ctx(slo=Slo(ttft_s=1.0)))


def test_eais_needs_a_perf_model() -> None:
    with pytest.raises(ConfigError, match="performance model"):
        make_controller("eais", ctx())


def test_eais_lowers_the_clock_when_memory_bound_and_keeps_it_when_loaded() -> None:
    from rlserve.perf import ReplicaPerfModel, get_gpu, get_model

    perf = ReplicaPerfModel(get_gpu("h100-sxm"), get_model("llama-3-8b"))
    c = make_controller("eais", ctx(perf=perf, max_num_seqs=256))
    assert perf.sm_clock_mhz == 1980.0  # the model's clock is put back after building the tables

    def run(arrivals_per_s: int, out_tokens: int, running: int) -> EnergyDecision:
        c.reset()
        d = None
        for i in range(20):
            r = replica(num_running=running, kv_blocks_used=running * 60, completed_total=arrivals_per_s * i,
                        generated_tokens_total=arrivals_per_s * out_tokens * i, max_num_seqs=256)
            d = c.decide(ClusterSnapshot(float(i), 1, (r,), arrivals_total=arrivals_per_s * i), 0)
        assert d is not None
        return d

    light = run(2, 200, 4)
    assert light.sm_clock_mhz < 1980.0  # decode is memory-bound: a lower clock costs little time, saves power
    overload = run(500, 400, 36)  # far beyond the replica: nothing is feasible -> uncapped at max clock
    assert overload == EnergyDecision(256, 1980.0)  # uncapped (max_num_seqs)
    ept, ok = c.predict()
    assert ept.shape == ok.shape == (len(SPACE.sm_clocks_mhz), len(SPACE.concurrency_caps) + 1)  # + uncapped


def test_replica_state_is_not_mutated() -> None:
    r = replica()
    snap = ClusterSnapshot(1.0, 1, (r,))
    for name in ("static", "clipper"):
        make_controller(name, ctx()).decide(snap, 0)
    assert snap.replicas[0] == dataclasses.replace(r)
