"""On-policy storage for recurrent PPO: GAE with truncation bootstrapping, minibatches of whole sequences.

Layout: every array is ``(num_steps, num_envs, ...)``, step-major as collected. Per step we keep what the update
needs to replay the rollout *exactly*: the observation, the hidden state the policy had *before* the step, the
episode-start mask, the action, its log-prob and the full tempered logits (for an exact KL to the rollout policy),
the temperature the action was sampled at, the value, the reward, and how the episode ended.

Episode ends, the two cases SB3 distinguishes and serving needs (episodes are cut after M requests, the cluster
does not stop existing):

- ``terminated``: a true end; nothing follows, the bootstrap value is 0.
- ``truncated``: the episode was cut; the return continues, bootstrapped with ``V(final observation)`` which the
  trainer computes before resetting the environment and passes as ``final_value``.

Recurrent minibatches (CleanRL ``ppo_atari_lstm`` / MAPPO "data chunks"): the rollout of each environment is cut
into chunks of ``chunk_len`` consecutive steps; a minibatch is a set of whole chunks kept in time order, replayed
from the hidden state stored at each chunk's first step, with resets where the episode-start mask is 0. Replaying
with unchanged weights therefore reproduces the rollout's log-probs exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from rlserve.errors import ConfigError


class SequenceBatch(NamedTuple):
    """A minibatch of ``B`` sequences of length ``L``; tensors are ``(L, B, ...)``, ``hxs`` is ``(layers, B, H)``."""

    obs: torch.Tensor
    actions: torch.Tensor
    masks: torch.Tensor  # 0 where an episode starts (reset the hidden state before the step)
    old_log_probs: torch.Tensor
    old_logits: torch.Tensor  # tempered logits at rollout time
    old_values: torch.Tensor
    temperatures: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    hxs: torch.Tensor


class RolloutBuffer:
    """Fixed-size rollout storage; call :meth:`add` ``num_steps`` times, then :meth:`compute_gae`."""

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, action_dim: int, hidden_shape: tuple[int, int],
                 gamma: float = 0.99, gae_lambda: float = 0.95) -> None:
        self.num_steps, self.num_envs = num_steps, num_envs
        self.gamma, self.gae_lambda = gamma, gae_lambda
        t, n = num_steps, num_envs
        self.obs = torch.zeros(t, n, obs_dim)
        self.hxs = torch.zeros(t, hidden_shape[0], n, hidden_shape[1])
        self.masks = torch.ones(t, n)
        self.actions = torch.zeros(t, n, dtype=torch.long)
        self.log_probs = torch.zeros(t, n)
        self.logits = torch.zeros(t, n, action_dim)
        self.temperatures = torch.ones(t, n)
        self.values = torch.zeros(t, n)
        self.rewards = torch.zeros(t, n)
        self.dones = torch.zeros(t, n)  # the episode ended after this step (terminated or truncated)
        self.final_values = torch.zeros(t, n)  # V(final obs) where truncated, 0 otherwise
        self.advantages = torch.zeros(t, n)
        self.returns = torch.zeros(t, n)
        self.pos = 0

    @property
    def full(self) -> bool:
        """Whether ``num_steps`` steps have been added."""
        return self.pos == self.num_steps

    def reset(self) -> None:
        """Start a new rollout (storage is overwritten, not reallocated)."""
        self.pos = 0

    def add(self, obs: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor, actions: torch.Tensor,
            log_probs: torch.Tensor, logits: torch.Tensor, temperatures: torch.Tensor | float, values: torch.Tensor,
            rewards: np.ndarray | torch.Tensor, terminated: np.ndarray, truncated: np.ndarray,
            final_values: np.ndarray | torch.Tensor | None = None) -> None:
        """Store one step of all environments.

        ``hxs`` is the hidden state *before* this step, ``masks`` is 0 for environments whose episode starts at this
        step. ``final_values`` holds ``V(final obs)`` for truncated environments (ignored elsewhere).
        """
        if self.full:
            raise ConfigError("rollout buffer is full; call compute_gae, use the batches, then reset()")
        p = self.pos
        self.obs[p], self.hxs[p], self.masks[p] = obs, hxs, masks.reshape(-1)
        self.actions[p], self.log_probs[p], self.logits[p] = actions, log_probs, logits
        self.temperatures[p] = torch.as_tensor(temperatures, dtype=torch.float32)
        self.values[p] = values
        self.rewards[p] = torch.as_tensor(np.asarray(rewards), dtype=torch.float32)
        term = torch.as_tensor(np.asarray(terminated, bool))
        trunc = torch.as_tensor(np.asarray(truncated, bool)) & ~term
        self.dones[p] = (term | trunc).float()
        fv = torch.zeros(self.num_envs) if final_values is None else torch.as_tensor(final_values, dtype=torch.float32)
        self.final_values[p] = torch.where(trunc, fv, torch.zeros_like(fv))
        self.pos += 1

    def compute_gae(self, last_values: torch.Tensor) -> None:
        """Generalised advantage estimation, backwards over the rollout.

        ``last_values`` = V(observation after the last stored step) for environments still mid-episode: the
        rollout's end is a truncation of the *rollout*, so it is bootstrapped like any other.
        """
        last_gae = torch.zeros(self.num_envs)
        next_values = last_values.reshape(-1)
        for t in reversed(range(self.num_steps)):
            # bootstrap value: the next state's value mid-episode, V(final obs) after a truncation, 0 after a true end
            not_done = 1.0 - self.dones[t]
            boot = next_values * not_done + self.final_values[t]
            delta = self.rewards[t] + self.gamma * boot - self.values[t]
            last_gae = delta + self.gamma * self.gae_lambda * not_done * last_gae
            self.advantages[t] = last_gae
            next_values = self.values[t]
        self.returns = self.advantages + self.values

    def sequences(self, chunk_len: int, num_minibatches: int, rng: np.random.Generator,
                  normalize_advantages: bool = True) -> Iterator[SequenceBatch]:
        """Yield ``num_minibatches`` minibatches covering every chunk once, in a random order of chunks.

        Advantages are normalised per minibatch (mean 0, std 1) when asked, as in SB3/CleanRL.
        """
        if self.num_steps % chunk_len:
            raise ConfigError(f"rollout steps ({self.num_steps}) must be a multiple of chunk_len ({chunk_len})")
        chunks_per_env = self.num_steps // chunk_len
        num_chunks = chunks_per_env * self.num_envs
        if not 1 <= num_minibatches <= num_chunks:
            raise ConfigError(f"num_minibatches must be in [1, {num_chunks}] (number of sequence chunks), "
                              f"got {num_minibatches}")
        order = rng.permutation(num_chunks)
        for idx in np.array_split(order, num_minibatches):
            starts = torch.as_tensor((idx // self.num_envs) * chunk_len)
            envs = torch.as_tensor(idx % self.num_envs)
            steps = starts.unsqueeze(0) + torch.arange(chunk_len).unsqueeze(1)  # (L, B)
            e = envs.unsqueeze(0).expand_as(steps)
            adv = self.advantages[steps, e]
            if normalize_advantages and adv.numel() > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            yield SequenceBatch(
                obs=self.obs[steps, e], actions=self.actions[steps, e], masks=self.masks[steps, e],
                old_log_probs=self.log_probs[steps, e], old_logits=self.logits[steps, e],
                old_values=self.values[steps, e], temperatures=self.temperatures[steps, e], advantages=adv,
                returns=self.returns[steps, e], hxs=self.hxs[starts, :, envs].permute(1, 0, 2),
            )
