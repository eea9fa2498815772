"""A tiny deterministic environment for trainer tests: reward 1 for choosing the index of the largest feature."""

import gymnasium as gym
import numpy as np


class ArgmaxEnv(gym.Env):
    """Observation: ``n`` random features; reward 1 when the action is the argmax; truncated after ``length``."""

    def __init__(self, n: int = 3, length: int = 16) -> None:
        self.n, self.length = n, length
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n,), np.float64)
        self.action_space = gym.spaces.Discrete(n)
        self._obs = np.zeros(n)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._obs = self.np_random.normal(size=self.n)
        return self._obs.copy(), {}

    def step(self, action):
        reward = float(int(action) == int(np.argmax(self._obs)))
        self._t += 1
        self._obs = self.np_random.normal(size=self.n)
        return self._obs.copy(), reward, False, self._t >= self.length, {"rollout/hit": reward}


def teacher(env, episode):
    """Demonstrator: behave at random half of the time, label with the optimal action."""
    e = env.unwrapped
    best = int(np.argmax(e._obs))
    return (best if episode % 2 else int(e.np_random.integers(e.n))), best
