"""Energy rewards: the seed's GreenDLS form with its KV term and clipping; energy per token in additive form."""

from __future__ import annotations

import math

import pytest

from rlserve.envs.energy_reward import EnergyPerTokenReward, GreenDlsReward, IntervalOutcome, make_reward
from rlserve.errors import ConfigError


def outcome(**kw: float) -> IntervalOutcome:
    base = dict(interval_s=1.0, energy_j=400.0, tokens=2000, finished=10, slo_misses=0, mean_e2e_s=5.0, kv_usage=0.6)
    base.update(kw)
    return IntervalOutcome(**base)  # type: ignore[arg-type]


def test_greendls_within_slo_is_the_seed_formula() -> None:
    r = GreenDlsReward(slo_delay_s=10.0)
    # delay 5000 ms, energy 40 J per request = 40,000 mJ: 150 * 5000 / 40000 = 18.75; KV usage 0.6 -> no term
    parts = r(outcome())
    assert parts.total == pytest.approx(18.75 / 50)
    assert parts.components["kv"] == 0.0


def test_greendls_kv_term_and_violation_and_clip() -> None:
    r = GreenDlsReward(slo_delay_s=10.0)
    assert r(outcome(kv_usage=0.1)).components["kv"] == pytest.approx(-5 * 0.4 / 50)
    assert r(outcome(kv_usage=0.95)).components["kv"] == pytest.approx(-10 * 0.05 / 50)
    late = r(outcome(mean_e2e_s=10.04))  # 40 ms over: (10000 - 10040) / 50
    assert late.total == pytest.approx(-0.8)
    assert r(outcome(mean_e2e_s=30.0)).total == -2.0  # clipped
    assert r(outcome(finished=0, mean_e2e_s=math.nan)).total == 0.0


def test_energy_per_token_sums_to_episode_energy_per_token() -> None:
    r = EnergyPerTokenReward(ept_ref_j=0.2, energy_scale_j=700.0, slo_penalty=0.5)
    intervals = [outcome(energy_j=e, tokens=t) for e, t in [(300.0, 1000), (500.0, 3000), (100.0, 0)]]
    total = sum(r(o).total for o in intervals)
    tokens, energy = 4000, 900.0
    assert total == pytest.approx(tokens * (0.2 - energy / tokens) / 700.0)
    assert r(outcome(slo_misses=3)).components["slo"] == pytest.approx(-1.5)


def test_make_reward_errors() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        make_reward("nope")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_reward("greendls", slo_delay=3)
    with pytest.raises(ConfigError, match="ept_ref_j > 0"):
        make_reward("energy_per_token", ept_ref_j=0.0, energy_scale_j=1.0)
