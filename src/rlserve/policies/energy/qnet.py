"""The dueling Q-network of the DQN energy controller (used by training and by the deployed controller).

``Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)`` (Wang et al., 2016, eq. 9): the value stream learns how good a
state is once, the advantage stream only how actions differ, which matters here because most actions are rarely
tried and share the state's value. Subtracting the mean advantage makes the split identifiable.

``factors=(n_caps, n_clocks)`` factors the advantage over the two parts of the joint action (action branching,
Tavakoli et al., AAAI 2018): ``A(s, (cap, clock)) = A_cap(s, cap) + A_clock(s, clock)``, each mean-centred. What
is learned about a clock then holds for every cap, so each transition trains 1 of 18 clock advantages instead
of 1 of 54 joint ones. The joint index layout (cap-major, the seed's) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DuelingQNetwork(nn.Module):
    """MLP trunk, then a scalar value head and an advantage head (joint, or factored over cap and clock)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (128, 128),
                 factors: tuple[int, int] | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.value = nn.Linear(width, 1)
        if factors is not None and factors[0] * factors[1] != n_actions:
            raise ValueError(f"factors {factors} do not multiply to {n_actions} actions")
        self.factors = factors
        self.advantage = nn.Linear(width, n_actions if factors is None else factors[0] + factors[1])
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.hidden_sizes = tuple(hidden_sizes)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values, shape ``(batch, n_actions)``."""
        z = self.trunk(obs)
        adv = self.advantage(z)
        if self.factors is not None:
            n_caps, _ = self.factors
            a_cap, a_clock = adv[:, :n_caps], adv[:, n_caps:]
            a_cap = a_cap - a_cap.mean(dim=-1, keepdim=True)
            a_clock = a_clock - a_clock.mean(dim=-1, keepdim=True)
            adv = (a_cap.unsqueeze(2) + a_clock.unsqueeze(1)).flatten(1)  # cap-major, like the action index
            return self.value(z) + adv
        return self.value(z) + adv - adv.mean(dim=-1, keepdim=True)
