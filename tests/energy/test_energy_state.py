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


def test_history_features_smooth_the_load_and_track_pressure() -> None:
    cfg = EnergyStateConfig(history=True)
    b = EnergyStateBuilder(cfg, SLO, SPACE)
    h = cfg.history_offset
    assert cfg.dim == 24 and h == 16
    first = b.build(snap(0.0, replica()), 0)
    np.testing.assert_allclose(first[h:], [0, 0, 0, 0, 1.0, 1.0, 0, 0])  # full slack: nothing ran yet
    # one second with 10 arrivals: the short average (tau 10 s) moves 1 - e^-0.1 of the way, the long one less
    queued = QueuedRequestView(1.5, 5000, 0, 5000, 50, 0)  # waited 1.5 s > half the 2 s TTFT SLO
    r = replica(num_waiting=4, pending_prefill_tokens=5000, queue=(queued,))
    x = b.build(snap(1.0, r, arrivals=10), 0)
    short, long = 1 - np.exp(-0.1), 1 - np.exp(-1 / 60)
    assert x[h] == pytest.approx(10 * short / 20, rel=1e-5)
    assert x[h + 1] == pytest.approx(10 * long / 20, rel=1e-5)
    assert x[h + 3] == pytest.approx((4 - 4 * short) / 50, rel=1e-5)  # queue above its average: growing
    assert x[h + 6] == pytest.approx(5000 / 10_000 / 2.0)  # 0.5 s of prefill work = a quarter of the TTFT budget
    assert x[h + 7] == 0.0  # under pressure now
    # 30 calm seconds later: time since pressure 30 / 60, the averages decay toward the new (zero) rate
    y = b.build(snap(31.0, replica(), arrivals=10), 0)
    assert y[h + 7] == pytest.approx(0.5)
    assert y[h] < x[h] and y[h + 3] < 0  # the queue shrank below its average
    b.reset()
    np.testing.assert_allclose(b.build(snap(40.0, replica()), 0)[h:], first[h:])  # a new run starts afresh
