"""EnergyEnv on the real simulator: gymnasium contract, truncation (never termination), rewards from intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rlserve.envs.energy_env import EnergyEnv, EnergyEnvConfig
from rlserve.errors import ConfigError


def make_env(scenario: Path, **kw: object) -> EnergyEnv:
    base = dict(scenarios=(str(scenario),), caps=(8, 32, 256), num_clocks=4, max_episode_s=600.0)
    base.update(kw)
    return EnergyEnv(EnergyEnvConfig(**base))  # type: ignore[arg-type]


def test_passes_the_gymnasium_checker(small_scenario: Path) -> None:
    env = make_env(small_scenario)
    check_env(env, skip_render_check=True)
    assert env.action_space.n == 12 and env.observation_space.shape == (16,)


def test_episode_ends_truncated_when_drained_and_rewards_match_energy(small_scenario: Path) -> None:
    env = make_env(small_scenario, reward_params={"ept_ref_j": 0.2, "energy_scale_j": 700.0, "slo_penalty": 1.0})
    obs, info = env.reset(seed=5)
    assert env.observation_space.contains(obs) and info["scenario"] == "energy_small"
    energy = tokens = misses = total = 0.0
    for _ in range(1000):
        obs, reward, terminated, truncated, info = env.step(env.action_space.n - 1)  # uncapped, max clock
        assert not terminated  # serving has no terminal state
        o = info["outcome"]
        assert info["cost"] == pytest.approx(o.slo_misses - 0.01 * o.arrivals)
        energy, tokens, misses = energy + o.energy_j, tokens + o.tokens, misses + o.slo_misses
        total += reward
        if truncated:
            break
    assert truncated
    assert total == pytest.approx((0.2 * tokens - energy) / 700.0 - misses)
    m = info["episode_metrics"]
    assert m["energy_per_output_token_j"] == pytest.approx(energy / tokens)
    assert m["mean_sm_clock_mhz"] == env.action_space_def.max_clock_mhz and m["mean_concurrency_cap"] == 256


def test_max_episode_s_truncates(small_scenario: Path) -> None:
    env = make_env(small_scenario, max_episode_s=5.0)
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]


def test_same_seed_same_episode(small_scenario: Path) -> None:
    def rollout() -> list[float]:
        env = make_env(small_scenario, load_scale=(0.5, 1.5))
        env.reset(seed=11)
        rng = np.random.default_rng(0)
        return [env.step(int(rng.integers(env.action_space.n)))[1] for _ in range(20)]

    assert rollout() == rollout()


def test_lower_clock_saves_energy_per_token_in_the_env(small_scenario: Path) -> None:
    def ept(action: int) -> float:
        env = make_env(small_scenario)
        env.reset(seed=3)
        while True:
            *_, truncated, info = env.step(action)
            if truncated:
                return info["episode_metrics"]["energy_per_output_token_j"]

    space = make_env(small_scenario).action_space_def
    low = space.encode_action(256, space.sm_clocks_mhz[1])
    assert ept(low) < 0.8 * ept(space.n_actions - 1)


def test_conditional_block_size_needs_the_feature(small_scenario: Path) -> None:
    with pytest.raises(ConfigError, match="block_size_feature"):
        make_env(small_scenario, block_sizes=(16, 64))
    from rlserve.policies.energy.state import EnergyStateConfig

    env = make_env(small_scenario, block_sizes=(16, 64), state=EnergyStateConfig(block_size_feature=True))
    seen = set()
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        seen.add(round(float(obs[16]) * 64))
    assert seen == {16, 64}


def test_config_from_dict_rejects_typos() -> None:
    with pytest.raises(ConfigError, match="env: unknown key 'scenario'; allowed: block_sizes"):
        EnergyEnvConfig.from_dict({"scenario": "energy_steady"})
    with pytest.raises(ConfigError, match="env: unknown key 'state.extra'; allowed: block_size_feature"):
        EnergyEnvConfig.from_dict({"state": {"extra": True}})
    cfg = EnergyEnvConfig.from_dict({"scenarios": "energy_bursty", "caps": [8, 16], "state": {"extras": False}})
    assert cfg.scenarios == ("energy_bursty",) and cfg.state.dim == 10


def test_history_observation_at_half_second_decisions_passes_the_checker(small_scenario: Path) -> None:
    from rlserve.policies.energy.state import EnergyStateConfig

    env = make_env(small_scenario, interval_s=0.5, state=EnergyStateConfig(history=True))
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (24,)
    obs, _ = env.reset(seed=3)
    for _ in range(40):
        obs, *_ = env.step(env.action_space.n - 1)
        assert env.observation_space.contains(obs)
