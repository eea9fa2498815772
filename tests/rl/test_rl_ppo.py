import numpy as np
import pytest
import torch
from rl_toy_env import ArgmaxEnv, teacher

from rlserve.errors import ConfigError, InputError
from rlserve.rl.config import load_config
from rlserve.rl.ppo import train


def _cfg(**over):
    base = {"total_updates": 6, "seed": 3,
            "network": {"hidden_size": 16, "proj_dim": 16, "architecture": "flat"},
            "ppo": {"num_envs": 2, "num_steps": 32, "chunk_len": 8, "num_minibatches": 2, "epochs": 3,
                    "lr": 3e-3, "entropy_coef": 0.0, "target_kl": None},
            "warm_start": {"stabilization_steps": 32, "enabled": False},
            "monitoring": {"enable_tensorboard": False}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return load_config(overrides=base)


def _envs(n=2):
    return [ArgmaxEnv for _ in range(n)]


@pytest.mark.parametrize("temperature", [{"base_temperature": 1.0}, {"base_temperature": 1.7,
                                                                    "max_temperature": 2.0}])
def test_ratio_is_one_on_first_minibatch_of_every_update(temperature):
    result = train(_cfg(temperature=temperature), _envs())
    devs = [h["train/first_minibatch_ratio_dev"] for h in result.history]
    assert len(devs) == 6
    assert max(devs) < 1e-5


def test_ppo_learns_the_toy_task():
    # a one-step task: a short discount keeps the advantage noise of unrelated future rewards small
    result = train(_cfg(total_updates=25, ppo={"gamma": 0.5}), _envs(), info_keys=["rollout/hit"])
    hit_first = result.history[0]["rollout/hit"]
    hit_last = np.mean([h["rollout/hit"] for h in result.history[-3:]])
    assert hit_first < 0.5 and hit_last > 0.75


def test_warm_start_clones_teacher_and_kl_to_reference_is_logged(tmp_path):
    cfg = _cfg(total_updates=2, warm_start={"enabled": True, "stabilization_steps": 256, "bc_epochs": 30,
                                             "kl_ref_initial_coef": 1.0, "kl_ref_final_coef": 0.0,
                                             "kl_ref_decay_updates": 2})
    result = train(cfg, _envs(), demonstrator=teacher, out_dir=tmp_path, info_keys=["rollout/hit"])
    assert result.bc_stats["bc/accuracy"] > 0.85
    assert result.history[0]["rollout/hit"] > 0.5  # sampled from the cloned policy, not uniform (1/3)
    assert result.history[0]["train/kl_ref_coef"] == 1.0 and result.history[1]["train/kl_ref_coef"] == 0.5
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("step,train/policy_loss")


def test_resume_is_bit_for_bit(tmp_path):
    cfg = _cfg(total_updates=4, checkpoints={"checkpoint_interval": 1},
               warm_start={"enabled": True, "stabilization_steps": 40})
    straight = train(cfg, _envs(), demonstrator=teacher, out_dir=tmp_path / "a")
    train(cfg, _envs(), demonstrator=teacher, out_dir=tmp_path / "b", stop_after_updates=2)
    resumed = train(cfg, _envs(), demonstrator=teacher, out_dir=tmp_path / "b", resume=True)
    assert resumed.updates == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="exists"):
        train(cfg, _envs(), out_dir=tmp_path / "a")


def test_resume_errors(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        train(_cfg(), _envs(), out_dir=tmp_path, resume=True)
    train(_cfg(total_updates=1), _envs(), out_dir=tmp_path / "x")
    with pytest.raises(InputError, match="state_dim=3"):
        train(_cfg(total_updates=2), [lambda: ArgmaxEnv(n=4)] * 2, out_dir=tmp_path / "x", resume=True,
              allow_config_change=True)


def test_validation_callback_selects_best_and_keeps_resume_exact(tmp_path):
    def score(path):
        torch.rand(100)  # validation may use torch's RNG; training must not notice
        return -abs(torch.load(path, weights_only=True)["update"] - 2)

    cfg = _cfg(total_updates=4, checkpoints={"checkpoint_interval": 1, "validation_interval": 1})
    straight = train(cfg, _envs(), out_dir=tmp_path / "a", validate=score)
    assert straight.best_score == 0 and torch.load(straight.best_path, weights_only=True)["update"] == 2
    assert [h["validation/score"] for h in straight.history] == [-1, 0, -1, -2]  # update 0 (pre-PPO) then 1..4
    train(cfg, _envs(), out_dir=tmp_path / "b", validate=score, stop_after_updates=3)
    resumed = train(cfg, _envs(), out_dir=tmp_path / "b", validate=score, resume=True)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
