"""The energy observation: seed dimensions and extras from two consecutive snapshots (synthetic here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlserve.metrics import Slo
from rlserve.policies.energy.action_space import ActionSpace
from rlserve.policies.energy.state import EnergyStateBuilder, EnergyStateConfig
from rlserve.snapshot import ClusterSnapshot, QueuedRequestView, ReplicaState

SPACE = ActionSpace((1, 8, 32), (600.0, 1290.0, 1980.0))
SLO = Slo(ttft_s=2.0, tpot_s=0.1)


def replica(**kw: object) -> ReplicaState:
    base = dict(num_waiting=0, num_running=0, kv_blocks_used=0, kv_blocks_total=1000, block_size=16,
                max_num_seqs=256, concurrency_cap=32, num_preemptions_total=0, pending_prefill_tokens=0,
                pending_decode_tokens=0, completed_total=0, generated_tokens_total=0, recent_ttft_s=0.0,
                recent_e2e_s=0.0, decode_tokens_per_s=50.0, prefill_tokens_per_s=10_000.0,
                kv_capacity_tokens=16_000, sm_clock_mhz=1980.0, power_w=80.0, energy_j=0.0, busy_s=0.0)
    base.update(kw)
    return ReplicaState(**base)  # type: ignore[arg-type]


def snap(t: float, r: ReplicaState, arrivals: int = 0) -> ClusterSnapshot:
    return ClusterSnapshot(t, 1, (r,), arrivals_total=arrivals)


def test_seed_dims_and_extras_from_deltas() -> None:
    b = EnergyStateBuilder(EnergyStateConfig(), SLO, SPACE)
    first = b.build(snap(10.0, replica()), 0)
    assert first.shape == (16,) and first.dtype == np.float32
    r = replica(num_running=10, num_waiting=5, kv_blocks_used=250, completed_total=4, generated_tokens_total=400,
                energy_j=600.0, busy_s=1.5, recent_ttft_s=1.0, sm_clock_mhz=1290.0, concurrency_cap=8,
                queue=(QueuedRequestView(3.0, 100, 0, 100, 50, 0),))
    x = b.build(snap(12.0, r, arrivals=10), 0)
    expected_seed = [300.0 / 1000, 0.75, 0.9, 0.0, 0.0, 10 / 50, 5 / 50, 0.25, 2.0 / 20, 200.0 / 2000]
    np.testing.assert_allclose(x[:10], expected_seed, rtol=1e-6)
    # inter-token time = dt * mean running / tokens = 2 * 5 / 400 = 0.025 s -> TPOT slack 0.75
    np.testing.assert_allclose(x[10:], [0.5, 0.75, 1.5, 0.5, 0.25, 5.0 / 20], rtol=1e-6)
    assert b.last_stats is not None and b.last_stats.power_w == pytest.approx(300.0)


def test_stalled_requests_have_negative_tpot_slack_and_optional_features() -> None:
    cfg = EnergyStateConfig(block_size_feature=True, kv_block_features=True)
    b = EnergyStateBuilder(cfg, SLO, SPACE)
    b.build(snap(0.0, replica(num_running=4)), 0)
    x = b.build(snap(1.0, replica(num_running=4, kv_blocks_used=400)), 0)
    assert x.shape == (cfg.dim,) == (19,)
    assert x[11] == -1.0  # requests ran but no token came out
    np.testing.assert_allclose(x[16:], [16 / 64, 0.4, 0.6])


def test_real_world_fallbacks_without_counters() -> None:
    b = EnergyStateBuilder(EnergyStateConfig(extras=False), SLO, SPACE)
    r = dataclasses.replace(replica(), energy_j=None, busy_s=None, power_w=250.0)
    b.build(snap(0.0, r), 0)
    x = b.build(snap(1.0, r), 0, gpu_util=0.4, cpu_power_w=100.0, cpu_util=0.3)
    np.testing.assert_allclose(x[:5], [0.25, 0.4, 0.9, 0.5, 0.3])
    b.reset()
    assert b.last_stats is None
