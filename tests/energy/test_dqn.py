"""The DQN trainer: double-DQN targets, terminal vs truncated transitions, multi-step learning, exact resume."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlserve.errors import ConfigError
from rlserve.policies.energy.qnet import DuelingQNetwork
from rlserve.rl.dqn import CHECKPOINT_NAME, POLICY_NAME, DQNAgent, DQNConfig, ReplayBatch, train
from rlserve.rl.logger import Logger

torch.set_num_threads(1)


class ChainEnv(gym.Env):
    """States 0..n-1 in a line; 'right' from n-2 reaches the goal (+1, terminated); every other step costs 0.01.

    The only reward is n-2 steps away from the start, so a learner that treats every step as terminal (a bandit)
    cannot find the way: it needs values propagated back through the chain.
    """

    def __init__(self, n: int = 8, max_steps: int = 40) -> None:
        self.n, self.max_steps = n, max_steps
        self.observation_space = gym.spaces.Box(0.0, 1.0, (n,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.pos = self.t = 0

    def _obs(self) -> np.ndarray:
        o = np.zeros(self.n, np.float32)
        o[self.pos] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos = self.t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        self.pos = min(self.pos + 1, self.n - 1) if action == 1 else max(self.pos - 1, 0)
        terminated = self.pos == self.n - 1
        reward = 1.0 if terminated else -0.01
        truncated = not terminated and self.t >= self.max_steps
        return self._obs(), reward, terminated, truncated, {"episode_metrics": {"final_pos": float(self.pos)}}


def small_config(**kw: object) -> DQNConfig:
    base = dict(total_steps=2500, learning_rate=1e-3, gamma=0.9, buffer_size=5000, batch_size=32,
                learning_starts=300, target_update_interval=50, eps_decay_steps=1500, eps_end=0.05,
                hidden_sizes=(32,), seed=3, checkpoint_interval=0)
    base.update(kw)
    return DQNConfig(**base)  # type: ignore[arg-type]


def greedy_rollout(q: torch.nn.Module, env: ChainEnv) -> tuple[bool, int]:
    obs, _ = env.reset(seed=0)
    for t in range(env.max_steps):
        with torch.no_grad():
            action = int(q(torch.as_tensor(obs).unsqueeze(0)).argmax())
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated:
            return True, t + 1
        if truncated:
            break
    return False, env.max_steps


def test_learns_a_multi_step_task() -> None:
    env = ChainEnv()
    cfg = small_config()
    q = DuelingQNetwork(env.n, 2, cfg.hidden_sizes)
    result = train(env, q, cfg, kind="test")
    reached, steps = greedy_rollout(q, env)
    assert reached and steps == env.n - 1
    assert result.steps >= cfg.total_steps


def test_a_bandit_fails_the_same_task() -> None:
    # gamma = 0 is what "every step terminal" amounts to; the task must defeat it, or the test above proves nothing.
    env = ChainEnv()
    cfg = small_config(gamma=0.0)
    q = DuelingQNetwork(env.n, 2, cfg.hidden_sizes)
    train(env, q, cfg, kind="test")
    reached, _ = greedy_rollout(q, env)
    assert not reached


def test_truncated_steps_are_stored_as_not_terminated(monkeypatch) -> None:
    stored: list[float] = []
    orig = DQNAgent.remember

    def spy(self: DQNAgent, obs, action, reward, next_obs, terminated, truncated=False,  # type: ignore[no-untyped-def]
            cost=0.0) -> None:
        stored.append(float(terminated))
        orig(self, obs, action, reward, next_obs, terminated, truncated, cost)

    monkeypatch.setattr(DQNAgent, "remember", spy)
    # the goal is unreachable in 5 steps: every episode is truncated, no transition may be stored as terminal
    train(ChainEnv(n=30, max_steps=5), DuelingQNetwork(30, 2, (8,)),
          small_config(total_steps=50, learning_starts=1000), kind="test")
    assert len(stored) == 50 and not any(stored)

    stored.clear()  # 'right' from the start reaches the goal: real terminations are stored as such
    train(ChainEnv(n=2, max_steps=5), DuelingQNetwork(2, 2, (8,)),
          small_config(total_steps=200, learning_starts=1000), kind="test")
    assert 0 < sum(stored) < len(stored)


def test_double_dqn_target_by_hand() -> None:
    torch.manual_seed(0)
    cfg = small_config(gamma=0.5)
    agent = DQNAgent(DuelingQNetwork(3, 4, (8,)), 3, 4, cfg, np.random.default_rng(0))
    with torch.no_grad():  # make the target network differ from the online one
        for p in agent.q_target.parameters():
            p.add_(0.3)
    next_obs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    batch = ReplayBatch(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1.0, -2.0]), next_obs,
                        torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), torch.zeros(2))
    with torch.no_grad():
        a_star = agent.q(next_obs).argmax(dim=1)
        q_eval = agent.q_target(next_obs)[torch.arange(2), a_star]
    expected = torch.tensor([1.0 + 0.5 * float(q_eval[0]), -2.0])  # second transition terminated: no bootstrap
    torch.testing.assert_close(agent.td_target(batch), expected)

    classic = DQNAgent(agent.q, 3, 4, small_config(gamma=0.5, double=False), np.random.default_rng(0))
    classic.q_target.load_state_dict(agent.q_target.state_dict())
    with torch.no_grad():
        q_max = agent.q_target(next_obs).max(dim=1).values
    torch.testing.assert_close(classic.td_target(batch), torch.tensor([1.0 + 0.5 * float(q_max[0]), -2.0]))


def test_n_step_transitions_by_hand() -> None:
    cfg = small_config(gamma=0.5, n_step=3)
    agent = DQNAgent(DuelingQNetwork(1, 2, (4,)), 1, 2, cfg, np.random.default_rng(0))
    s = [np.array([float(i)], np.float32) for i in range(6)]
    for t in range(4):  # rewards 1, 2, 3, 4
        agent.remember(s[t], t % 2, float(t + 1), s[t + 1], False)
    b = agent.buffer
    assert len(b) == 2  # two full 3-step transitions so far: from s0 and s1
    np.testing.assert_allclose(b.rewards[:2], [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3 + 0.25 * 4])
    np.testing.assert_allclose(b.next_obs[:2, 0], [3.0, 4.0])
    np.testing.assert_allclose(b.discount[:2], [0.125, 0.125])
    agent.remember(s[4], 0, 5.0, s[5], False, truncated=True)  # the episode is cut: flush s2, s3, s4
    assert len(b) == 5
    np.testing.assert_allclose(b.rewards[2:5], [3 + 0.5 * 4 + 0.25 * 5, 4 + 0.5 * 5, 5.0])
    np.testing.assert_allclose(b.next_obs[2:5, 0], [5.0, 5.0, 5.0])  # truncated: all bootstrap from s5
    np.testing.assert_allclose(b.discount[2:5], [0.125, 0.25, 0.5])
    assert not b.terminated[:5].any()


def test_n_step_learns_the_chain_too() -> None:
    env = ChainEnv()
    cfg = small_config(n_step=3)
    q = DuelingQNetwork(env.n, 2, cfg.hidden_sizes)
    train(env, q, cfg, kind="test")
    assert greedy_rollout(q, env) == (True, env.n - 1)


def test_lagrangian_cost_enters_the_target_with_the_current_multiplier() -> None:
    cfg = small_config(gamma=0.5, lagrangian=True, lagrange_init=2.0, lagrange_lr=0.5, eps_decay_steps=10)
    agent = DQNAgent(DuelingQNetwork(2, 2, (4,)), 2, 2, cfg, np.random.default_rng(0))
    z = torch.zeros(1, 2)
    batch = ReplayBatch(z, torch.tensor([0]), torch.tensor([1.0]), z, torch.tensor([1.0]), torch.tensor([0.5]),
                        torch.tensor([0.3]))
    torch.testing.assert_close(agent.td_target(batch), torch.tensor([1.0 - 2.0 * 0.3]))
    assert agent.update_lagrange(5.0) == 2.0  # still exploring: the multiplier waits
    agent.steps = 10
    assert agent.update_lagrange(1.0) == pytest.approx(2.5)
    assert agent.update_lagrange(-10.0) == 0.0  # never negative
    agent.lagrange = 3.0
    assert agent.td_target(batch).item() == pytest.approx(1.0 - 0.9)  # replayed with the multiplier of now
    plain = DQNAgent(DuelingQNetwork(2, 2, (4,)), 2, 2, small_config(), np.random.default_rng(0))
    assert plain.lagrange == 0.0 and plain.update_lagrange(5.0) == 0.0


def test_epsilon_decays_linearly_then_stays() -> None:
    cfg = small_config(eps_start=1.0, eps_end=0.1, eps_decay_steps=100)
    agent = DQNAgent(DuelingQNetwork(2, 2, (4,)), 2, 2, cfg, np.random.default_rng(0))
    agent.steps = 50
    assert agent.epsilon == pytest.approx(0.55)
    agent.steps = 10_000
    assert agent.epsilon == pytest.approx(0.1)


def test_resume_is_bit_for_bit(tmp_path) -> None:
    env = ChainEnv()
    straight = DuelingQNetwork(env.n, 2, (16,))
    names = ["final_pos"]
    train(env, straight, small_config(total_steps=1200), kind="test", out_dir=tmp_path / "a", metric_names=names)

    first = DuelingQNetwork(env.n, 2, (16,))
    r1 = train(env, first, small_config(total_steps=600), kind="test", out_dir=tmp_path / "b", metric_names=names)
    assert 600 <= r1.steps < 1200
    resumed = DuelingQNetwork(env.n, 2, (16,))
    train(env, resumed, small_config(total_steps=1200), kind="test", out_dir=tmp_path / "b", resume=True,
          metric_names=names)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "b" / CHECKPOINT_NAME).is_file() and (tmp_path / "b" / POLICY_NAME).is_file()
    rows = (tmp_path / "b" / "progress.csv").read_text().splitlines()
    assert rows[0].startswith("step,rollout/episode_return") and len(rows) > 2
    assert list((tmp_path / "b" / "tb").glob("events.out.tfevents.*"))


def test_resume_checks_the_checkpoint_kind(tmp_path) -> None:
    from rlserve.errors import InputError

    env = ChainEnv()
    train(env, DuelingQNetwork(env.n, 2, (8,)), small_config(total_steps=100), kind="test", out_dir=tmp_path,
          metric_names=["final_pos"])
    with pytest.raises(InputError, match="expected 'other'"):
        train(env, DuelingQNetwork(env.n, 2, (8,)), small_config(total_steps=200), kind="other", out_dir=tmp_path,
              resume=True, logger=Logger())


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ConfigError, match="gamma"):
        DQNConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="unknown key 'learning_rat'; allowed: batch_size"):
        DQNConfig.from_dict({"learning_rat": 1e-3})


@pytest.mark.parametrize(("section", "message"), [
    ({"dqn": {"max_grad_norm": -1}}, "dqn.max_grad_norm: input should be greater than 0"),
    ({"dqn": {"hidden_sizes": [0]}}, r"dqn.hidden_sizes\[0\]: input should be greater than or equal to 1"),
    ({"dqn": {"hidden_sizes": []}}, "dqn.hidden_sizes: tuple should have at least 1 item"),
    ({"dqn": {"double": "no"}}, "dqn.double: input should be a valid boolean, got 'no'"),
    ({"factored_advantage": "no"}, "factored_advantage: input should be a valid boolean, got 'no'"),
    ({"validation_seeds": -1}, "validation_seeds: input should be greater than or equal to 0"),
    ({"dqn": {"checkpoint_interval": -5}}, "dqn.checkpoint_interval: input should be greater than or equal to 0"),
    ({"dqn": {"total_steps": "abc"}}, "dqn.total_steps: input should be a valid integer"),
    ({"env": {"interval_s": 0}}, "env.interval_s must be > 0"),
    ({"env": {"state": {"extras": "yes"}}}, "env.state.extras: input should be a valid boolean"),
])
def test_energy_training_values_with_a_wrong_effect_are_errors(tmp_path, section, message) -> None:
    import yaml

    from rlserve.envs.energy_train import load_train_config

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ConfigError, match=message) as info:
        load_train_config(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_factored_advantage_keeps_the_cap_major_layout() -> None:
    torch.manual_seed(0)
    q = DuelingQNetwork(4, 3 * 5, (8,), factors=(3, 5))
    out = q(torch.randn(2, 4))
    assert out.shape == (2, 15)
    # additive in cap and clock: Q(c, f) - Q(c, f') is the same for every cap c
    grid = out.reshape(2, 3, 5)
    diffs = grid[:, :, 1] - grid[:, :, 0]
    torch.testing.assert_close(diffs, diffs[:, :1].expand_as(diffs))
    with pytest.raises(ValueError, match="multiply"):
        DuelingQNetwork(4, 14, (8,), factors=(3, 5))


def test_validation_keeps_the_best_policy(tmp_path) -> None:
    from rlserve.rl.checkpoints import load_checkpoint
    from rlserve.rl.dqn import BEST_NAME

    scores = iter([1.0, 3.0, 2.0, 0.5, 0.1, 0.0])
    seen: list[int] = []

    def validate(path) -> float:  # type: ignore[no-untyped-def]
        seen.append(load_checkpoint(path, kind="test")["agent"]["steps"])
        return next(scores)

    env = ChainEnv()
    train(env, DuelingQNetwork(env.n, 2, (8,)), small_config(total_steps=300, checkpoint_interval=100), kind="test",
          out_dir=tmp_path, metric_names=["final_pos"], validate=validate)
    best = load_checkpoint(tmp_path / BEST_NAME, kind="test")
    assert len(seen) >= 3 and best["validation_score"] == 3.0 and best["agent"]["steps"] == seen[1]
    assert "train/validation_score" in (tmp_path / "progress.csv").read_text().splitlines()[0]
