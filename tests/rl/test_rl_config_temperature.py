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
    ({"ppo": {"learning_rate": 1}}, r"unknown key\(s\) \['learning_rate'\] in ppo"),
    ({"ppo": {"epochs": 2.5}}, "ppo.epochs must be an integer"),
    ({"reward": {"mode": "cumulative"}}, "reward.mode must be one of"),
    ({"monitoring": {"enable_tensorboard": "yes"}}, "must be true or false"),
    ({"ppo": {"num_steps": 100, "chunk_len": 32}}, "multiple of ppo.chunk_len"),
    ({"temperature": {"min_temperature": 2.0}}, "min_temperature <= base_temperature"),
])
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=data)


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
