"""Behaviour cloning of a recurrent policy from demonstrations (the warm start before PPO).

Demonstrations are recorded while a *behaviour* policy drives the environment and a *teacher* labels every visited
state with its own choice (DAgger-style relabelling). Driving with several behaviours (random, round robin,
heuristics) puts the teacher's labels on imbalanced states too, which a policy trained only on the teacher's
own trajectories would never see and would not know how to recover from.

The recurrent network is trained like PPO replays rollouts: on chunks of consecutive steps, each started from the
hidden state the *current* network reaches at that point of the demonstration (recomputed by a no-grad pass at
the start of every epoch), with resets at episode starts. Starting every chunk from zero instead would train a
policy for "the first steps after a reset" and leave it untrained for the long-running hidden states it meets
when routing thousands of requests in a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlserve.errors import ConfigError
from rlserve.rl.actor_critic import RecurrentPolicy
from rlserve.rl.normalizers import ObsNormalizer


@dataclass(frozen=True)
class Demonstrations:
    """Step-major demonstration arrays: ``obs`` (T, N, D), teacher ``actions`` (T, N), ``episode_starts`` (T, N)."""

    obs: np.ndarray
    actions: np.ndarray
    episode_starts: np.ndarray

    def normalized(self, norm: ObsNormalizer) -> Demonstrations:
        """The same demonstrations with observations passed through ``norm``."""
        return Demonstrations(norm.normalize(self.obs), self.actions, self.episode_starts)


def behaviour_clone(model: RecurrentPolicy, demos: Demonstrations, *, chunk_len: int, epochs: int, lr: float,
                    minibatch_chunks: int, rng: np.random.Generator) -> dict[str, float]:
    """Fit the actor to the teacher's actions by cross-entropy; returns the final epoch's loss and accuracy.

    Only the feature layers and the actor are trained (the critic's parameters receive no gradient).
    """
    t_total, n = demos.actions.shape
    num_chunks_per_env = t_total // chunk_len
    if num_chunks_per_env == 0:
        raise ConfigError(f"need at least chunk_len={chunk_len} demonstration steps per environment, got {t_total}")
    t_used = num_chunks_per_env * chunk_len
    obs = torch.as_tensor(demos.obs[:t_used], dtype=torch.float32)
    acts = torch.as_tensor(demos.actions[:t_used], dtype=torch.long)
    masks = torch.as_tensor(~demos.episode_starts[:t_used], dtype=torch.float32)
    actor_params = [p for name, p in model.named_parameters() if not name.startswith("critic")]
    opt = torch.optim.Adam(actor_params, lr=lr)
    num_chunks = num_chunks_per_env * n
    loss_v, acc_v = float("nan"), float("nan")
    model.train()
    for _ in range(epochs):
        chunk_hxs = _chunk_start_states(model, obs, masks, chunk_len)  # (chunks per env, layers, N, H)
        losses, hits, count = [], 0, 0
        order = rng.permutation(num_chunks)
        for start in range(0, num_chunks, minibatch_chunks):
            idx = order[start:start + minibatch_chunks]
            rows = torch.as_tensor((idx // n) * chunk_len).unsqueeze(0) + torch.arange(chunk_len).unsqueeze(1)
            cols = torch.as_tensor(idx % n).unsqueeze(0).expand_as(rows)
            h0 = chunk_hxs[torch.as_tensor(idx // n), :, torch.as_tensor(idx % n)].permute(1, 0, 2)
            logits, _ = model.get_logits(obs[rows, cols], h0, masks[rows, cols])
            target = acts[rows, cols]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(actor_params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            hits += int((logits.argmax(-1) == target).sum())
            count += target.numel()
        loss_v, acc_v = float(np.mean(losses)), hits / count
    return {"bc/loss": loss_v, "bc/accuracy": acc_v}


@torch.no_grad()
def _chunk_start_states(model: RecurrentPolicy, obs: torch.Tensor, masks: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """Hidden state of the current network at the first step of every chunk, running through the demonstrations."""
    t_used, n = masks.shape
    h = model.initial_state(n)
    states = []
    for start in range(0, t_used, chunk_len):
        states.append(h)
        _, _, h = model(obs[start:start + chunk_len], h, masks[start:start + chunk_len])
    return torch.stack(states)
