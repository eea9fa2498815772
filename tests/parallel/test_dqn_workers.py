"""DQN episodes on Ray actors (a real local Ray, num_cpus=2): reproducible, and a killed worker changes nothing."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rlserve.envs.energy_env import EnergyEnv, EnergyEnvConfig
from rlserve.parallel import Parallel
from rlserve.policies.energy.qnet import DuelingQNetwork
from rlserve.rl.dqn import DQNConfig, DQNTrainResult, train
from rlserve.rl.dqn_workers import EpisodeWorkers
from rlserve.scenario import SCENARIO_DIR


@pytest.fixture(scope="module")
def env_config(tmp_path_factory: pytest.TempPathFactory) -> EnergyEnvConfig:
    doc = yaml.safe_load((SCENARIO_DIR / "energy_steady.yaml").read_text())
    doc["workload"]["num_requests"], doc["name"] = 150, "energy_tiny"
    path = tmp_path_factory.mktemp("scn") / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return EnergyEnvConfig.from_dict({"scenarios": [str(path)], "caps": [64, 256], "num_clocks": 3})


def _train(env_config: EnergyEnvConfig, out: Path | None, workers: EpisodeWorkers | None,
           on_episode_end: Any = None) -> tuple[DQNTrainResult, dict[str, torch.Tensor]]:
    env = EnergyEnv(env_config)
    q = DuelingQNetwork(env.config.state.dim, env.action_space_def.n_actions, (16,), None)
    cfg = DQNConfig(total_steps=80, learning_starts=20, batch_size=8, hidden_sizes=(16,), seed=2,
                    lagrangian=True, n_step=2)
    result = train(env, q, cfg, kind="dqn_energy", out_dir=out, episode_workers=workers,
                   on_episode_end=on_episode_end)
    return result, {k: v.clone() for k, v in q.state_dict().items()}


def test_same_seed_and_workers_same_result_and_a_killed_worker_is_replaced(ray_local: Any,
                                                                           env_config: EnergyEnvConfig) -> None:
    spec = EpisodeWorkers(2, functools.partial(EnergyEnv, env_config), Parallel(workers=2))
    first, q1 = _train(env_config, None, spec)
    assert first.episodes >= 4 and first.worker_replacements == 0  # at least two rounds of two episodes
    timers = []

    def kill_during_next_round(episode: int, info: Any) -> None:
        if episode == 1:  # the second round starts when this round's last episode is learned: kill worker 0 then
            victim = ray_local.get_actor("rlserve-test-dqn-0-0")
            timers.append(threading.Timer(0.01, lambda: ray_local.kill(victim, no_restart=True)))
            timers[-1].start()

    named = EpisodeWorkers(2, functools.partial(EnergyEnv, env_config), Parallel(workers=2),
                           name_prefix="rlserve-test-dqn-")
    killed, q2 = _train(env_config, None, named, kill_during_next_round)
    timers[0].join()
    assert killed.worker_replacements >= 1
    assert killed.episode_returns == first.episode_returns and killed.steps == first.steps
    assert all(torch.equal(q1[k], q2[k]) for k in q1)
