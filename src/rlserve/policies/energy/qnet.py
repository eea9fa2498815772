"""The dueling Q-network of the DQN energy controller (used by training and by the deployed controller).

``Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)`` (Wang et al., 2016, eq. 9): the value stream learns how good a
state is once, the advantage stream only how actions differ, which matters here because most of the 198 actions
are rarely tried and share the state's value. Subtracting the mean advantage makes the split identifiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DuelingQNetwork(nn.Module):
    """MLP trunk, then a scalar value head and an advantage head with one output per action."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.value = nn.Linear(width, 1)
        self.advantage = nn.Linear(width, n_actions)
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.hidden_sizes = tuple(hidden_sizes)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values, shape ``(batch, n_actions)``."""
        z = self.trunk(obs)
        adv = self.advantage(z)
        return self.value(z) + adv - adv.mean(dim=-1, keepdim=True)
