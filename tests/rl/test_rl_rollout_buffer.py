import numpy as np
import pytest
import torch

from rlserve.errors import ConfigError
from rlserve.rl.rollout_buffer import RolloutBuffer


def _fill(buf, rewards, values, terminated, truncated, final_values):
    for t in range(len(rewards)):
        buf.add(torch.zeros(1, 2), torch.zeros(1, 1, 4), torch.ones(1), torch.zeros(1, dtype=torch.long),
                torch.zeros(1), torch.zeros(1, 3), 1.0, torch.tensor([values[t]]), np.array([rewards[t]]),
                np.array([terminated[t]]), np.array([truncated[t]]), np.array([final_values[t]]))


def test_gae_hand_computed_with_termination_and_truncation():
    gamma, lam = 0.9, 0.8
    buf = RolloutBuffer(4, 1, 2, 3, (1, 4), gamma=gamma, gae_lambda=lam)
    r, v = [1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 1.5, 2.0]
    # step 1 ends by truncation with V(final obs) = 10; step 3 is the rollout end, bootstrapped with last value 7
    _fill(buf, r, v, [False, False, False, False], [False, True, False, False], [0.0, 10.0, 0.0, 0.0])
    buf.compute_gae(torch.tensor([7.0]))
    d3 = r[3] + gamma * 7.0 - v[3]
    d2 = r[2] + gamma * v[3] - v[2]
    d1 = r[1] + gamma * 10.0 - v[1]  # truncation: bootstrap with V(final obs), not V(next episode's first obs)
    d0 = r[0] + gamma * v[1] - v[0]
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1  # episode boundary: no advantage flows back across it
    a0 = d0 + gamma * lam * a1
    np.testing.assert_allclose(buf.advantages[:, 0].numpy(), [a0, a1, a2, a3], rtol=1e-6)
    np.testing.assert_allclose(buf.returns[:, 0].numpy(), np.array([a0, a1, a2, a3]) + v, rtol=1e-6)


def test_termination_does_not_bootstrap_even_if_final_value_given():
    buf = RolloutBuffer(2, 1, 2, 3, (1, 4), gamma=0.5, gae_lambda=1.0)
    _fill(buf, [1.0, 1.0], [0.0, 0.0], [True, False], [False, False], [99.0, 0.0])
    buf.compute_gae(torch.tensor([4.0]))
    np.testing.assert_allclose(buf.advantages[:, 0].numpy(), [1.0, 1.0 + 0.5 * 4.0])


def test_sequences_cover_every_step_once_in_order():
    buf = RolloutBuffer(8, 3, 1, 2, (1, 1))
    for t in range(8):
        obs = torch.tensor([[t * 10.0 + e] for e in range(3)])
        hxs = torch.full((1, 3, 1), float(t))
        buf.add(obs, hxs, torch.ones(3), torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.zeros(3, 2), 1.0,
                torch.zeros(3), np.zeros(3), np.zeros(3, bool), np.zeros(3, bool))
    buf.compute_gae(torch.zeros(3))
    seen = []
    for mb in buf.sequences(chunk_len=4, num_minibatches=3, rng=np.random.default_rng(0)):
        obs = mb.obs[..., 0]  # (L, B)
        assert torch.all(obs[1:] - obs[:-1] == 10)  # consecutive steps of one environment, in time order
        # the stored hidden state is the one at each chunk's first step
        torch.testing.assert_close(mb.hxs[0], (obs[0] // 10).unsqueeze(-1))
        seen += obs.flatten().tolist()
    assert sorted(seen) == sorted(t * 10.0 + e for t in range(8) for e in range(3))
    with pytest.raises(ConfigError, match="multiple of chunk_len"):
        next(buf.sequences(chunk_len=3, num_minibatches=1, rng=np.random.default_rng(0)))
    with pytest.raises(ConfigError, match="num_minibatches"):
        next(buf.sequences(chunk_len=4, num_minibatches=7, rng=np.random.default_rng(0)))
