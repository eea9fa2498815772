import pytest

from rlserve.errors import ConfigError
from rlserve.rl.config import TrainConfig, load_config
from rlserve.rl.temperature import TemperatureController


def test_yaml_overrides_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo: {lr: 0.001, num_envs: 2}\nreward: {mode: hybrid}\nwarm_start: {behaviour: [random]}\n")
    cfg = load_config(path, overrides={"ppo": {"epochs": 2}})
    assert (cfg.ppo.lr, cfg.ppo.num_envs, cfg.ppo.epochs, cfg.reward.mode) == (0.001, 2, 2, "hybrid")
    assert cfg.warm_start.behaviour == ["random"]
    assert cfg.network.hidden_size == TrainConfig().network.hidden_size
    assert load_config(overrides=cfg.to_dict()) == cfg


@pytest.mark.parametrize(("data", "message"), [
    ({"ppo": {"learning_rate": 1}}, r"unknown key 'ppo.learning_rate'; allowed: adam_eps, "),
    ({"ppo": {"epochs": 2.5}}, "ppo.epochs: input should be a valid integer, got 2.5"),
    ({"reward": {"mode": "cumulative"}}, "reward.mode: input should be 'cost', 'hybrid', 'instant' or 'delta'"),
    ({"monitoring": {"enable_tensorboard": "yes"}}, "enable_tensorboard: input should be a valid boolean"),
    ({"ppo": {"num_steps": 100, "chunk_len": 32}}, "multiple of ppo.chunk_len"),
    ({"temperature": {"min_temperature": 2.0}}, "min_temperature <= base_temperature"),
    # values that used to be accepted with a wrong effect
    ({"ppo": {"max_grad_norm": -1}}, "ppo.max_grad_norm: input should be greater than 0, got -1"),
    ({"ppo": {"epochs": 0}}, "ppo.epochs: input should be greater than or equal to 1"),
    ({"checkpoints": {"checkpoint_interval": 0}}, "checkpoints.checkpoint_interval: input should be greater"),
    ({"network": {"hidden_size": 0}}, "network.hidden_size: input should be greater than or equal to 1"),
    ({"ppo": {"lr": float("nan")}}, "ppo.lr: input should be a finite number"),
    ({"ppo": {"num_envs": "abc"}}, "ppo.num_envs: input should be a valid integer, got 'abc'"),
    ({"monitoring": {"stdout": "no"}}, "monitoring.stdout: input should be a valid boolean"),
    ({"env": {"scenarios": []}}, "env.scenarios: list should have at least 1 item"),
])
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(overrides=data)
    assert "\n" not in str(info.value)


def test_temperature_pressure_clamp_and_smoothing():
    ctl = TemperatureController(base_temperature=1.0, min_temperature=0.8, max_temperature=3.0,
                                qps_sensitivity=0.0, latency_sensitivity=1.0, smoothing=0.5)
    assert ctl.target(10, 10, 2.0, 1.0) == 2.0  # latency twice the target: +100%
    assert ctl.target(10, 10, 100.0, 1.0) == 3.0  # clamped
    assert ctl.target(10, 10, 0.0, 1.0) == 0.8
    assert ctl.compute_temperature(10, 10, 2.0, 1.0) == 1.5  # halfway to the target, no pulsing
    restored = TemperatureController()
    restored.load_state_dict(ctl.state_dict())
    assert restored.temperature == 1.5 and restored.smoothing == 0.5
