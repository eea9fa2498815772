"""The seed's recurrent actor-critic: feature projection, shared MLP, GRU, decoupled actor and critic branches.

::

    s ─► feature_proj (LayerNorm → Linear → GELU → Linear) ─► shared_mlp ((1 + layer_n) × Linear → LayerNorm → ReLU)
           ├─► actor GRU ─► actor MLP (2 × Linear → LayerNorm → ReLU) ─► Linear ─► logits  [─► LayerNorm → Tanh × scale]
           └─► critic MLP (2 × Linear → LayerNorm → ReLU) ─► critic GRU ─► Linear ─► value

Differences from the seed, each fixing a defect that kept its policy near uniform:

- The bounded logit head (``LayerNorm → Tanh``) is off by default. With it logits live in ``[-1, 1]``, so no action
  can get more than ``e^2 / (e^2 + n - 1)`` of the probability: the policy can never become confident. When turned
  on, the Tanh output is multiplied by ``logit_scale`` so that confident policies stay reachable.
- Temperature divides the logits identically in :meth:`act_value` (rollout) and :meth:`evaluate_actions`
  (update), so the PPO ratio is exactly 1 before the first gradient step.
- Orthogonal initialisation (gain sqrt(2) for hidden layers, 0.01 for the policy output so the initial policy is
  near uniform without being stuck there, 1 for the value output), as in the PPO implementation-details study.

Hidden states have shape ``(2 * gru_layers, N, hidden_size)``: the actor GRU's layers first, then the critic's.
``masks`` are 0 where an episode starts: the hidden state is reset before that step is processed.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn
from torch.distributions import Categorical

M = TypeVar("M", bound=nn.Module)


def _orthogonal(module: M, gain: float) -> M:
    for name, p in module.named_parameters():
        if "weight" in name and p.dim() >= 2:
            nn.init.orthogonal_(p, gain)
        elif "bias" in name:
            nn.init.zeros_(p)
    return module


def _mlp(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [_orthogonal(nn.Linear(width, width), math.sqrt(2)), nn.LayerNorm(width), nn.ReLU()]
    return nn.Sequential(*layers)


def _feature_proj(width: int, proj_dim: int, hidden_size: int) -> nn.Sequential:
    """The seed's feature projection: LayerNorm → Linear → GELU → Linear."""
    return nn.Sequential(nn.LayerNorm(width), _orthogonal(nn.Linear(width, proj_dim), math.sqrt(2)), nn.GELU(),
                         _orthogonal(nn.Linear(proj_dim, hidden_size), math.sqrt(2)))


class RecurrentPolicy(nn.Module):
    """What PPO, behaviour cloning and the checkpoints need from a recurrent actor-critic: :meth:`forward` over
    sequences, plus the step/evaluate helpers below, written once for every architecture.

    Subclasses set ``state_dim``, ``action_dim``, ``hidden_size``, ``gru_layers`` and implement :meth:`forward`.
    """

    state_dim: int
    action_dim: int
    hidden_size: int
    gru_layers: int

    def initial_state(self, n: int) -> torch.Tensor:
        """Zero hidden state for ``n`` parallel sequences."""
        return torch.zeros(2 * self.gru_layers, n, self.hidden_size)

    @staticmethod
    def _run_gru(gru: nn.GRU, x: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
        """Run ``gru`` over ``x`` (T, N, H), resetting the hidden state where ``masks`` (T, N) is 0.

        Stretches without resets go through cuDNN-style whole-sequence calls; the hidden state is multiplied by the
        mask only at steps where some sequence starts a new episode (CleanRL's recurrent recipe, batched).
        """
        outputs = []
        t_total = x.shape[0]
        resets = [0] + [t for t in range(1, t_total) if bool((masks[t] == 0).any())] + [t_total]
        for start, end in zip(resets[:-1], resets[1:], strict=True):
            hxs = hxs * masks[start].view(1, -1, 1)
            out, hxs = gru(x[start:end], hxs)
            outputs.append(out)
        return torch.cat(outputs, dim=0), hxs

    def forward(self, s: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
        """Logits (T, N, A), values (T, N) and the final hidden state for sequences ``s`` (T, N, state_dim)."""
        raise NotImplementedError

    @staticmethod
    def _as_sequence(s: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Accept one step ``(N, D)`` with masks ``(N,)``/``(N, 1)`` or sequences ``(T, N, D)`` with ``(T, N)``."""
        if s.dim() == 2:
            return s.unsqueeze(0), masks.reshape(1, -1), True
        return s, masks.reshape(s.shape[0], s.shape[1]), False

    def get_logits(self, s: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
        """Untempered action logits and the new hidden state (used by BC and the KL-to-reference term)."""
        seq, m, single = self._as_sequence(s, masks)
        logits, _, new_hxs = self(seq, hxs, m)
        return (logits[0] if single else logits), new_hxs

    def act_value(self, s: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor, temperature: float = 1.0,
                  deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
        """One step for ``N`` environments: action, its log-prob, value, new hidden state and the tempered logits.

        The log-prob is taken under ``Categorical(logits / temperature)``, the distribution the action was drawn
        from; ``deterministic`` takes the argmax instead of sampling (inference).
        """
        seq, m, _ = self._as_sequence(s, masks)
        logits, values, new_hxs = self(seq, hxs, m)
        tempered = logits[0] / temperature
        dist = Categorical(logits=tempered)
        action = tempered.argmax(dim=-1) if deterministic else dist.sample()
        return action, dist.log_prob(action), values[0], new_hxs, tempered

    def evaluate_actions(self, s: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor, a: torch.Tensor,
                         temperature: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                           torch.Tensor, torch.Tensor]:
        """Log-prob and entropy of actions ``a`` under the tempered policy, values, new hidden state, logits.

        ``temperature`` must be the one each action was sampled with (a tensor shaped like ``a`` when it varied),
        so the ratio new/old compares the same distribution.
        """
        seq, m, single = self._as_sequence(s, masks)
        logits, values, new_hxs = self(seq, hxs, m)
        temp = torch.as_tensor(temperature, dtype=logits.dtype)
        if temp.dim() > 0:
            temp = temp.reshape(*logits.shape[:-1], 1)
        tempered = logits / temp
        dist = Categorical(logits=tempered)
        actions = a.reshape(logits.shape[:-1])
        out = (dist.log_prob(actions), dist.entropy(), values, new_hxs, tempered)
        if single:
            return out[0][0], out[1][0], out[2][0], out[3], out[4][0]
        return out


class ActorCritic(RecurrentPolicy):
    """Recurrent policy and value network over flat state vectors and a discrete action set.

    Args:
        state_dim: length of the (normalised) state vector.
        action_dim: number of discrete actions (replicas, for the router).
        hidden_size: width of every hidden layer and GRU.
        proj_dim: width of the middle layer of the feature projection.
        layer_n: the shared MLP has ``1 + layer_n`` layers.
        gru_layers: stacked GRU layers in each of the actor and critic.
        bounded_logits: the seed's ``LayerNorm → Tanh`` logit head (off by default; see module docstring).
        logit_scale: multiplier of the bounded head's output.
    """

    def __init__(self, state_dim: int, action_dim: int, *, hidden_size: int = 64, proj_dim: int = 128,
                 layer_n: int = 1, gru_layers: int = 1, bounded_logits: bool = False,
                 logit_scale: float = 5.0) -> None:
        super().__init__()
        self.state_dim, self.action_dim = state_dim, action_dim
        self.hidden_size, self.gru_layers = hidden_size, gru_layers
        self.feature_proj = _feature_proj(state_dim, proj_dim, hidden_size)
        self.shared_mlp = _mlp(hidden_size, 1 + layer_n)
        self.actor_gru = _orthogonal(nn.GRU(hidden_size, hidden_size, num_layers=gru_layers), 1.0)
        self.actor_mlp = _mlp(hidden_size, 2)
        self.actor_out = _orthogonal(nn.Linear(hidden_size, action_dim), 0.01)
        self.bounded_logits = bounded_logits
        self.logit_scale = logit_scale
        self.logit_norm = nn.LayerNorm(action_dim) if bounded_logits else None
        self.critic_mlp = _mlp(hidden_size, 2)
        self.critic_gru = _orthogonal(nn.GRU(hidden_size, hidden_size, num_layers=gru_layers), 1.0)
        self.critic_out = _orthogonal(nn.Linear(hidden_size, 1), 1.0)

    def forward(self, s: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
        """Logits (T, N, A), values (T, N) and the final hidden state for sequences ``s`` (T, N, state_dim)."""
        shared = self.shared_mlp(self.feature_proj(s))
        actor_h, critic_h = hxs[: self.gru_layers], hxs[self.gru_layers:]
        a_out, actor_h = self._run_gru(self.actor_gru, shared, actor_h, masks)
        logits = self.actor_out(self.actor_mlp(a_out))
        if self.logit_norm is not None:
            logits = torch.tanh(self.logit_norm(logits)) * self.logit_scale
        c_out, critic_h = self._run_gru(self.critic_gru, self.critic_mlp(shared), critic_h, masks)
        values = self.critic_out(c_out).squeeze(-1)
        return logits, values, torch.cat([actor_h, critic_h], dim=0)


MASKED_LOGIT = -1e9
"""Logit of an empty replica slot: finite (so entropies and KLs stay finite), exp() underflows to exactly 0."""


class ReplicaSetActorCritic(RecurrentPolicy):
    """Permutation-equivariant recurrent actor-critic over a *set* of replicas: one set of weights for any count.

    Observation layout (``replica_set_layout``)::

        [ global features (global_dim) | replica count n | replica 0 (replica_dim) | ... | replica slots-1 ]

    ``slots`` may exceed ``n`` (training pads clusters of different sizes to one width): slots ``>= n`` are ignored
    and get the logit :data:`MASKED_LOGIT`. The count is read raw (the normaliser leaves it alone).

    ::

        each replica i: [replica_i | global] ─► feature_proj ─► shared_mlp ─► e_i        (weights shared over i)
        pooled = Linear(mean_i e_i ‖ max_i e_i) → LayerNorm → ReLU
        actor:  pooled ─► actor GRU ─► a;  logit_i = actor_mlp(e_i ‖ pooled ‖ a) ─► Linear(1)  [+ prior_i]
        critic: pooled ─► critic MLP ─► critic GRU ─► Linear ─► value

    Mean and max over the replicas and the per-replica head commute with any reordering of the replicas, so
    permuting the replicas permutes the logits and leaves the value unchanged, by construction.

    Residual prior (``prior_feature``): ``logit_i += -softplus(prior_weight) * x_i[prior_feature]``, where that
    feature is a monotone score of a heuristic (the router uses least-expected-latency's gap to the best replica).
    With ``zero_init_head`` the learned correction starts at exactly 0, so the untrained policy's argmax *is* the
    heuristic's choice and training can only move it by evidence.

    Args:
        global_dim, replica_dim: widths of the global and the per-replica features.
        max_replicas: slots of the training layout (the action space size); the network itself accepts any count.
        hidden_size, proj_dim, layer_n, gru_layers: as :class:`ActorCritic`.
        prior_feature: index inside a replica's features of the prior's score (``None`` = no prior).
        prior_scale: initial ``softplus(prior_weight)``.
        zero_init_head: start the learned correction of the logits at 0 (instead of the 0.01-gain init).
    """

    def __init__(self, global_dim: int, replica_dim: int, max_replicas: int, *, hidden_size: int = 64,
                 proj_dim: int = 128, layer_n: int = 1, gru_layers: int = 1, prior_feature: int | None = None,
                 prior_scale: float = 3.0, zero_init_head: bool = True) -> None:
        super().__init__()
        self.global_dim, self.replica_dim, self.max_replicas = global_dim, replica_dim, max_replicas
        self.state_dim = global_dim + 1 + max_replicas * replica_dim
        self.action_dim = max_replicas
        self.hidden_size, self.gru_layers = hidden_size, gru_layers
        self.feature_proj = _feature_proj(replica_dim + global_dim, proj_dim, hidden_size)
        self.shared_mlp = _mlp(hidden_size, 1 + layer_n)
        self.pool = nn.Sequential(_orthogonal(nn.Linear(2 * hidden_size, hidden_size), math.sqrt(2)),
                                  nn.LayerNorm(hidden_size), nn.ReLU())
        self.actor_gru = _orthogonal(nn.GRU(hidden_size, hidden_size, num_layers=gru_layers), 1.0)
        self.actor_mlp = nn.Sequential(_orthogonal(nn.Linear(3 * hidden_size, hidden_size), math.sqrt(2)),
                                       nn.LayerNorm(hidden_size), nn.ReLU(), *_mlp(hidden_size, 1))
        self.actor_out = _orthogonal(nn.Linear(hidden_size, 1), 0.0 if zero_init_head else 0.01)
        self.prior_feature = prior_feature
        self.prior_weight = nn.Parameter(torch.tensor(math.log(math.expm1(prior_scale))))
        self.critic_mlp = _mlp(hidden_size, 2)
        self.critic_gru = _orthogonal(nn.GRU(hidden_size, hidden_size, num_layers=gru_layers), 1.0)
        self.critic_out = _orthogonal(nn.Linear(hidden_size, 1), 1.0)

    def split(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global features ``(..., G)``, replica features ``(..., slots, R)`` and the presence mask ``(..., slots)``."""
        g = s[..., : self.global_dim]
        count = s[..., self.global_dim]
        reps = s[..., self.global_dim + 1:]
        slots = reps.shape[-1] // self.replica_dim
        reps = reps.reshape(*reps.shape[:-1], slots, self.replica_dim)
        present = torch.arange(slots, dtype=s.dtype) < count.unsqueeze(-1)
        return g, reps, present

    def forward(self, s: torch.Tensor, hxs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
        """Logits (T, N, slots), values (T, N) and the final hidden state for sequences ``s`` (T, N, D)."""
        g, reps, present = self.split(s)
        x = torch.cat([reps, g.unsqueeze(-2).expand(*reps.shape[:-1], self.global_dim)], dim=-1)
        e = self.shared_mlp(self.feature_proj(x))  # (T, N, slots, H)
        p = present.unsqueeze(-1).to(e.dtype)
        mean = (e * p).sum(-2) / p.sum(-2).clamp(min=1.0)
        peak = e.masked_fill(~present.unsqueeze(-1), MASKED_LOGIT).amax(-2)
        pooled = self.pool(torch.cat([mean, peak], dim=-1))  # (T, N, H)
        actor_h, critic_h = hxs[: self.gru_layers], hxs[self.gru_layers:]
        a_out, actor_h = self._run_gru(self.actor_gru, pooled, actor_h, masks)
        ctx = torch.cat([pooled, a_out], dim=-1).unsqueeze(-2).expand(*e.shape[:-1], 2 * self.hidden_size)
        logits = self.actor_out(self.actor_mlp(torch.cat([e, ctx], dim=-1))).squeeze(-1)
        if self.prior_feature is not None:
            logits = logits - nn.functional.softplus(self.prior_weight) * reps[..., self.prior_feature]
        logits = logits.masked_fill(~present, MASKED_LOGIT)
        c_out, critic_h = self._run_gru(self.critic_gru, self.critic_mlp(pooled), critic_h, masks)
        values = self.critic_out(c_out).squeeze(-1)
        return logits, values, torch.cat([actor_h, critic_h], dim=0)
