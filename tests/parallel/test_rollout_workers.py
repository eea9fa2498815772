"""PPO rollouts on Ray actors (a real local Ray, num_cpus=2): reproducible for a seed and worker count, and a
worker killed during training is replaced without changing the result."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.envs.router_training import train_router
from rlserve.errors import ConfigError
from rlserve.parallel import Parallel
from rlserve.rl.config import load_config
from rlserve.rl.ppo import TrainResult
from rlserve.rl.rollout_workers import RolloutWorkers

pytestmark = pytest.mark.filterwarnings("ignore:token caps shortened")  # capped lognormal tails, by design


def _cfg(**over: Any) -> Any:
    base: dict[str, Any] = {
        "total_updates": 3, "seed": 5, "network": {"hidden_size": 16, "proj_dim": 16},
        "checkpoints": {"validation_interval": 0},
        "ppo": {"num_envs": 4, "num_steps": 32, "chunk_len": 16, "num_minibatches": 2, "epochs": 1},
        "warm_start": {"stabilization_steps": 32, "bc_epochs": 1}, "env": {"episode_requests": 40},
        "monitoring": {"enable_tensorboard": False, "stdout": False}}
    base.update(over)
    return load_config(overrides=base)


def _same(a: TrainResult, b: TrainResult) -> None:
    assert a.model is not None and b.model is not None
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    strip = [{k: v for k, v in h.items() if not k.startswith("time/")} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if not k.startswith("time/")} for h in b.history]


@pytest.fixture(scope="module")
def two_workers_run(ray_local: Any) -> TrainResult:
    """The reference: 3 updates with 2 rollout workers."""
    return train_router(_cfg(), None, rollout_workers=RolloutWorkers(2, Parallel(workers=2)))


def test_same_seed_and_worker_count_same_result(two_workers_run: TrainResult) -> None:
    again = train_router(_cfg(), None, rollout_workers=RolloutWorkers(2, Parallel(workers=2)))
    _same(two_workers_run, again)
    assert again.updates == 3 and again.env_steps == 3 * 4 * 32 and again.worker_replacements == 0


def test_a_killed_worker_is_replaced_and_training_continues(ray_local: Any, two_workers_run: TrainResult) -> None:
    spec = RolloutWorkers(2, Parallel(workers=2), name_prefix="rlserve-test-kill-")
    timers = []

    def kill_during_next_rollout(update: int, total: int, scalars: dict[str, float]) -> None:
        if update == 1:  # the next rollout starts as soon as this returns: kill worker 1 while it collects
            victim = ray_local.get_actor("rlserve-test-kill-1-0")
            timers.append(threading.Timer(0.02, lambda: ray_local.kill(victim, no_restart=True)))
            timers[-1].start()

    killed = train_router(_cfg(), None, rollout_workers=spec, progress=kill_during_next_rollout)
    timers[0].join()
    assert killed.worker_replacements >= 1 and killed.updates == 3
    _same(two_workers_run, killed)  # the replacement replayed its environments and redid the same rollout


@pytest.mark.slow  # two more trainings (~15 s quiet, ~50 s on a loaded 2-core machine)
def test_resume_with_workers_is_bit_for_bit(two_workers_run: TrainResult, tmp_path: Path) -> None:
    spec = RolloutWorkers(2, Parallel(workers=2))
    train_router(_cfg(), tmp_path, rollout_workers=spec, stop_after_updates=2)
    resumed = train_router(_cfg(), tmp_path, rollout_workers=spec, resume=True)
    assert resumed.updates == 3 and resumed.model is not None and two_workers_run.model is not None
    for (name, x), y in zip(two_workers_run.model.state_dict().items(), resumed.model.state_dict().values(),
                            strict=True):
        assert torch.equal(x, y), name


def test_train_router_cli_rejects_zero_workers(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "router", "-o", str(tmp_path / "o"), "--workers", "0"])
    assert res.exit_code != 0 and "--workers must be >= 1" in str(res.exception) + res.output


def test_more_workers_than_environments_is_an_error(ray_local: Any) -> None:
    with pytest.raises(ConfigError, match="at most one worker per environment"):
        train_router(_cfg(), None, rollout_workers=RolloutWorkers(5, Parallel(workers=2)))
