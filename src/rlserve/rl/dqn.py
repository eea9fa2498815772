"""Double DQN with a replay buffer and a target network, for any gymnasium env with discrete actions.

The agent keeps the seed's verbs (``choose_action``, ``remember``, ``learn``) but fixes what made the seed's
agent a bandit (defect 11): ``remember`` stores *terminated* (a real end: no future reward), never "done", and
the TD target bootstraps from the next state unless the transition terminated. A time-limit truncation is not a
termination: the episode was cut, the state still has a future, so its target bootstraps from ``next_obs``
(which gymnasium returns as the last observation of the cut episode).

One training step, in order (``train``):

1. epsilon-greedy action (epsilon decays linearly from ``eps_start`` to ``eps_end`` over ``eps_decay_steps``);
2. ``env.step``; store ``(obs, action, reward, next_obs, terminated)``, or with ``n_step > 1`` the n-step
   transition ``(s_t, a_t, r_t + gamma r_{t+1} + ... + gamma^(k-1) r_{t+k-1}, s_{t+k})``, ``k = n`` except at an
   episode's end, where the pending steps are flushed with shorter ``k``;
3. every ``train_frequency`` steps after ``learning_starts``: sample a minibatch, double-DQN target
   ``R + gamma^k * (1 - terminated) * Q_target(s', argmax_a Q_online(s', a))`` (van Hasselt et al., 2016), Huber
   loss, gradient-norm clipping, Adam step;
4. every ``target_update_interval`` gradient steps: copy the online network into the target network.

Constraints (``lagrangian=True``): when the env reports a per-step cost in ``info["cost"]`` (for the energy
controller: SLO misses beyond the allowed fraction), the learner maximises ``reward - lambda * cost`` and adapts
the multiplier by dual ascent after every episode, ``lambda <- clip(lambda + lagrange_lr * (mean cost -
cost_limit), 0, lagrange_max)`` (Lagrangian relaxation of a constrained MDP, as in RCPO, Tessler et al. 2019).
The multiplier only moves once epsilon has reached ``eps_end``: the misses of random exploration are not the
policy's and would drive it to its maximum. Rewards and costs
are stored separately in the replay buffer and combined with the *current* lambda when sampled, so old
transitions are not judged by a stale multiplier. A fixed penalty cannot do this: the exchange rate between
joules and SLO misses that meets a 99% target depends on the load.

Training runs whole episodes (it stops at the first episode end at or after ``total_steps``) and checkpoints only
at episode ends, so that a resumed run replays exactly the episodes the straight run would have: a checkpoint
holds the networks, optimizer, replay buffer, counters and every RNG state, and resuming is bit-for-bit.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rlserve.errors import ConfigError
from rlserve.rl.checkpoints import (
    check_resume_config,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from rlserve.rl.logger import CSVWriter, Logger, TensorBoardWriter
from rlserve.validation import parse_config

if TYPE_CHECKING:
    from rlserve.rl.dqn_workers import EpisodeWorkers


@dataclass
class DQNConfig:
    """Hyper-parameters of the DQN trainer (each field once; defaults suit the energy controller)."""

    total_steps: Annotated[int, Field(ge=1)] = 60_000
    """Environment steps to train for (rounded up to the end of the episode in progress)."""
    learning_rate: Annotated[float, Field(gt=0)] = 5e-4
    """Adam step size (the seed used 1e-4 with 256-wide layers; smaller nets tolerate more)."""
    gamma: float = 0.98
    """Discount per decision; 0.98 at one decision per second looks ~50 s ahead, a few request lifetimes."""
    buffer_size: Annotated[int, Field(ge=1)] = 100_000
    """Replay capacity in transitions (older ones are overwritten)."""
    batch_size: Annotated[int, Field(ge=1)] = 64
    """Transitions per gradient step."""
    learning_starts: Annotated[int, Field(ge=0)] = 2_000
    """Steps of pure exploration before the first gradient step (fills the buffer)."""
    train_frequency: Annotated[int, Field(ge=1)] = 1
    """Environment steps between gradient steps."""
    target_update_interval: Annotated[int, Field(ge=1)] = 500
    """Gradient steps between hard copies of the online network into the target network."""
    eps_start: float = 1.0
    """Initial exploration rate."""
    eps_end: float = 0.05
    """Final exploration rate (the seed's floor was 0.1)."""
    eps_decay_steps: Annotated[int, Field(ge=1)] = 30_000
    """Steps over which epsilon decays linearly (the seed decayed by 1e-5 per step, i.e. 90,000 steps)."""
    max_grad_norm: Annotated[float, Field(gt=0)] = 10.0
    """Global gradient-norm clip."""
    huber_delta: Annotated[float, Field(gt=0)] = 1.0
    """Huber loss threshold: quadratic below it, linear above (robust to rare large TD errors)."""
    double: bool = True
    """Double DQN target (online argmax, target evaluation); False = classic max over the target network."""
    lagrangian: bool = False
    """Treat ``info["cost"]`` as a constrained quantity with an adaptive multiplier (see the module docstring)."""
    lagrange_init: Annotated[float, Field(ge=0)] = 1.0
    """Initial multiplier."""
    lagrange_lr: Annotated[float, Field(ge=0)] = 1.0
    """Dual step size per episode, applied to (episode mean cost per step - ``cost_limit``)."""
    lagrange_max: Annotated[float, Field(ge=0)] = 20.0
    """Upper bound of the multiplier (keeps one bad episode from swamping the reward)."""
    cost_limit: float = 0.0
    """Allowed mean cost per step."""
    n_step: Annotated[int, Field(ge=1)] = 1
    """Steps of real reward before bootstrapping (Sutton 1988; Rainbow uses 3): a penalty reaches the decision
    that caused it n times faster, at the price of some off-policy bias."""
    hidden_sizes: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = (128, 128)
    """Widths of the Q-network's hidden layers (used by callers that build the network from the config)."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seeds network initialisation, exploration, replay sampling and the episode seeds."""
    checkpoint_interval: Annotated[int, Field(ge=0)] = 10_000
    """Steps between checkpoints (written at the next episode end; 0 = only at the end)."""

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0 <= self.eps_end <= self.eps_start <= 1:
            raise ConfigError(f"need 0 <= eps_end <= eps_start <= 1, got {self.eps_end}, {self.eps_start}")
        for name in ("total_steps", "buffer_size", "batch_size", "train_frequency", "target_update_interval",
                     "n_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DQN {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size > self.buffer_size:
            raise ConfigError(f"batch_size {self.batch_size} exceeds buffer_size {self.buffer_size}")
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "dqn") -> DQNConfig:
        """Build from a YAML mapping, validated (:func:`rlserve.validation.parse_config`: unknown keys, types and
        the ranges declared on the fields)."""
        return parse_config(cls, dict(d), source)


class ReplayBatch(NamedTuple):
    """A minibatch of transitions as tensors."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    discount: torch.Tensor  # gamma^k of the stored k-step transition
    costs: torch.Tensor  # discounted k-step cost (0 without a constraint)


class ReplayBuffer:
    """Fixed-capacity ring buffer of transitions in preallocated numpy arrays."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.discount = np.zeros(capacity, np.float32)
        self.costs = np.zeros(capacity, np.float32)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool,
            discount: float, cost: float = 0.0) -> None:
        """Store one transition (``discount`` = gamma^k of a k-step one), overwriting the oldest when full."""
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i], self.costs[i] = obs, action, reward, cost
        self.next_obs[i], self.terminated[i], self.discount[i] = next_obs, float(terminated), discount
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> ReplayBatch:
        """Uniformly sampled transitions (with replacement)."""
        idx = rng.integers(0, self.size, size=batch_size)
        return ReplayBatch(torch.from_numpy(self.obs[idx]), torch.from_numpy(self.actions[idx]),
                           torch.from_numpy(self.rewards[idx]), torch.from_numpy(self.next_obs[idx]),
                           torch.from_numpy(self.terminated[idx]), torch.from_numpy(self.discount[idx]),
                           torch.from_numpy(self.costs[idx]))

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer plus its write position."""
        n = self.size
        return {"obs": torch.from_numpy(self.obs[:n].copy()), "next_obs": torch.from_numpy(self.next_obs[:n].copy()),
                "actions": torch.from_numpy(self.actions[:n].copy()),
                "rewards": torch.from_numpy(self.rewards[:n].copy()),
                "terminated": torch.from_numpy(self.terminated[:n].copy()),
                "discount": torch.from_numpy(self.discount[:n].copy()),
                "costs": torch.from_numpy(self.costs[:n].copy()), "pos": self.pos, "size": n}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (the capacity must be the same)."""
        n = int(state["size"])
        if n > self.capacity:
            raise ConfigError(f"checkpointed replay buffer holds {n} transitions, capacity is {self.capacity}")
        for name in ("obs", "next_obs", "actions", "rewards", "terminated", "discount", "costs"):
            getattr(self, name)[:n] = state[name].numpy()
        self.pos, self.size = int(state["pos"]), n


def epsilon_at(c: DQNConfig, steps: int) -> float:
    """Exploration rate after ``steps`` remembered steps (linear decay, then flat)."""
    if steps >= c.eps_decay_steps:
        return c.eps_end
    return c.eps_start + steps / c.eps_decay_steps * (c.eps_end - c.eps_start)


class DQNAgent:
    """Online and target Q-networks, replay buffer and epsilon schedule, with the seed's three verbs.

    ``q_network`` maps a batch of observations to one Q-value per action; the agent owns a deep copy of it as
    the target network. ``rng`` drives exploration and replay sampling.
    """

    def __init__(self, q_network: nn.Module, obs_dim: int, n_actions: int, config: DQNConfig,
                 rng: np.random.Generator) -> None:
        self.config = config
        self.n_actions = n_actions
        self.q = q_network
        self.q_target = copy.deepcopy(q_network).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.learning_rate)
        self.buffer = ReplayBuffer(config.buffer_size, obs_dim)
        self.rng = rng
        self.steps = 0  # transitions remembered
        self.updates = 0  # gradient steps taken
        self._pending: deque[tuple[np.ndarray, int, float, float]] = deque()  # steps not yet stored (n-step)
        self.lagrange = config.lagrange_init if config.lagrangian else 0.0

    @property
    def epsilon(self) -> float:
        """Exploration rate at the current step (linear decay, then flat)."""
        return epsilon_at(self.config, self.steps)

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Online Q-values of one observation."""
        return self.q(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()

    def choose_action(self, obs: np.ndarray, greedy: bool = False) -> int:
        """Epsilon-greedy action (``greedy=True``: always the argmax, as at evaluation time)."""
        if not greedy and self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n_actions))
        return int(np.argmax(self.q_values(obs)))

    def remember(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool,
                 truncated: bool = False, cost: float = 0.0) -> None:
        """Store a transition (n-step: once ``n`` are pending, or all at the episode's end).

        ``terminated`` only for a real end (no bootstrap); ``truncated`` (a time limit) ends the episode too but
        the stored transitions still bootstrap from ``next_obs``.
        """
        self._pending.append((obs, action, reward, cost))
        self.steps += 1
        if len(self._pending) == self.config.n_step:
            self._store_pending(next_obs, terminated)
        if terminated or truncated:
            while self._pending:
                self._store_pending(next_obs, terminated)

    def _store_pending(self, next_obs: np.ndarray, terminated: bool) -> None:
        """Store the oldest pending step as a k-step transition ending in ``next_obs`` (k = steps pending)."""
        gamma = self.config.gamma
        ret = sum(gamma**i * r for i, (_, _, r, _) in enumerate(self._pending))
        cost = sum(gamma**i * c for i, (_, _, _, c) in enumerate(self._pending))
        obs, action, _, _ = self._pending.popleft()
        self.buffer.add(obs, action, ret, next_obs, terminated, gamma ** (len(self._pending) + 1), cost)

    def update_lagrange(self, mean_cost: float) -> float:
        """Dual ascent on the multiplier after an episode with ``mean_cost`` per step; returns the new value."""
        c = self.config
        if c.lagrangian and self.epsilon <= c.eps_end:
            self.lagrange = min(c.lagrange_max, max(0.0, self.lagrange + c.lagrange_lr * (mean_cost - c.cost_limit)))
        return self.lagrange

    @torch.no_grad()
    def td_target(self, batch: ReplayBatch) -> torch.Tensor:
        """``R - lambda C + gamma^k (1 - terminated) Q_target(s', a*)``, ``a*`` from the online net (double DQN)."""
        q_next_target = self.q_target(batch.next_obs)
        if self.config.double:
            best = self.q(batch.next_obs).argmax(dim=1, keepdim=True)
            q_next = q_next_target.gather(1, best).squeeze(1)
        else:
            q_next = q_next_target.max(dim=1).values
        return batch.rewards - self.lagrange * batch.costs + batch.discount * (1.0 - batch.terminated) * q_next

    def learn(self) -> dict[str, float] | None:
        """One gradient step when due (after ``learning_starts``, every ``train_frequency`` steps), else None."""
        c = self.config
        if self.steps < c.learning_starts or len(self.buffer) < c.batch_size or self.steps % c.train_frequency:
            return None
        batch = self.buffer.sample(c.batch_size, self.rng)
        target = self.td_target(batch)
        q_taken = self.q(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
        loss = F.huber_loss(q_taken, target, delta=c.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.q.parameters(), c.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        # hard target update
        if self.updates % c.target_update_interval == 0:
            self.q_target.load_state_dict(self.q.state_dict())
        return {"loss": loss.item(), "q_mean": q_taken.detach().mean().item(), "grad_norm": float(grad_norm)}

    def state_dict(self, with_buffer: bool = True) -> dict[str, Any]:
        """Everything needed to continue training (the buffer is optional: deployment needs only ``q``)."""
        state: dict[str, Any] = {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                                 "optimizer": self.optimizer.state_dict(), "steps": self.steps,
                                 "updates": self.updates, "lagrange": self.lagrange}
        if with_buffer:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (a shape mismatch raises: never silently start from random weights)."""
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.lagrange = float(state.get("lagrange", self.lagrange))
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])


@dataclass
class DQNTrainResult:
    """What a training run did."""

    steps: int
    episodes: int
    episode_returns: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    checkpoint: Path | None = None
    worker_replacements: int = 0  # episode workers that died and were replaced (with episode workers)


CHECKPOINT_NAME = "checkpoint.pt"  # full training state (resume)
POLICY_NAME = "policy.pt"  # network + metadata only (deployment)
BEST_NAME = "best.pt"  # the policy.pt that scored best in validation (when a validate function is given)
LOG_KEYS = ("rollout/episode_return", "rollout/episode_length", "rollout/epsilon", "rollout/distinct_actions",
            "train/loss", "train/q_mean", "train/grad_norm", "train/mean_cost", "train/lagrange",
            "train/validation_score", "time/episodes",
            "time/steps_per_s", "time/wall_s")


def default_logger(out_dir: Path, metric_names: Sequence[str] = ()) -> Logger:
    """CSV (fixed schema: :data:`LOG_KEYS` plus ``system/<metric>``) and TensorBoard writers under ``out_dir``."""
    keys = [*LOG_KEYS, *(f"system/{m}" for m in metric_names)]
    return Logger([CSVWriter(out_dir / "progress.csv", keys),
                   TensorBoardWriter(out_dir / "tb", rename={"train/": "DQN/", "rollout/": "Reward/",
                                                             "system/": "System/"})])


def train(env: gym.Env, q_network: nn.Module, config: DQNConfig, *, kind: str, out_dir: str | Path | None = None,
          logger: Logger | None = None, resume: bool = False, metadata: Mapping[str, Any] | None = None,
          metric_names: Sequence[str] = (),
          episode_seed: Callable[[int], int] | None = None,
          on_episode_end: Callable[[int, Mapping[str, Any]], None] | None = None,
          validate: Callable[[Path], float] | None = None,
          episode_workers: EpisodeWorkers | None = None, allow_config_change: bool = False) -> DQNTrainResult:
    """Train ``q_network`` on ``env`` and write checkpoints to ``out_dir``.

    Args:
        kind: checkpoint kind tag (``"dqn_energy"``), checked when loading.
        resume: continue from ``out_dir/checkpoint.pt`` bit-for-bit. ``config`` and ``metadata`` must equal the
            stored ones except for ``total_steps``, unless ``allow_config_change``.
        logger: where statistics go (default: :func:`default_logger` under ``out_dir``, nothing without it).
        metadata: stored in every checkpoint beside the weights (observation/action/reward config), so the
            deployed controller rebuilds exactly what it was trained with.
        metric_names: the keys of ``info["episode_metrics"]`` the env reports (the CSV schema is fixed up front).
        episode_seed: seed of ``env.reset`` for episode ``i`` (default: ``config.seed * 100_003 + i``).
        on_episode_end: called with (episode index, the final step's ``info``), e.g. for a progress bar.
        validate: called with the path of each ``policy.pt`` written (every checkpoint and at the end); the
            highest-scoring one is kept as ``best.pt``. Greedy DQN policies fluctuate between checkpoints, so the
            policy to deploy is chosen on held-out validation runs, not taken from wherever training stopped.
        episode_workers: play the episodes on Ray actors, a round of one episode per worker at a time
            (:mod:`rlserve.rl.dqn_workers`); the learner learns from them in episode order. ``None``: one process.

    At each episode end ``info["episode_metrics"]`` (if the env provides it) is logged under ``system/``.
    """
    started = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(config.seed)
    q_network.apply(_reset_parameters)  # initialise from config.seed, whatever the caller's RNG did
    rng = np.random.default_rng(config.seed)
    obs_dim = int(np.prod(env.observation_space.shape or ()))
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ConfigError(f"DQN needs a Discrete action space, got {env.action_space}")
    agent = DQNAgent(q_network, obs_dim, int(env.action_space.n), config, rng)
    seed_of = episode_seed or (lambda i: config.seed * 100_003 + i)
    episode, returns, best_score = 0, [], -math.inf
    if resume:
        if out is None:
            raise ConfigError("resume needs the output directory of the run to continue")
        ck = load_checkpoint(out / CHECKPOINT_NAME, kind=kind)
        check_resume_config(out / CHECKPOINT_NAME, {"dqn": ck["config"], "metadata": ck["metadata"]},
                            {"dqn": asdict(config), "metadata": dict(metadata or {})}, total_key="dqn.total_steps",
                            schedule_depends_on_total=False, allow_change=allow_config_change)
        agent.load_state_dict(ck["agent"])
        restore_rng_state(ck["rng"], {"agent": rng})
        episode, returns = int(ck["episode"]), list(ck["episode_returns"])
        best_score = float(ck.get("best_score", -math.inf))
    log = logger if logger is not None else (default_logger(out, metric_names) if out is not None else Logger())
    if resume:
        log.discard_after(agent.steps)  # rows the interrupted run logged after its last checkpoint come again
    next_ckpt = agent.steps + config.checkpoint_interval if config.checkpoint_interval else None
    ck_path = None
    pool = None
    if episode_workers is not None:
        from rlserve.rl.dqn_workers import EpisodePool, learn_episode

        pool = EpisodePool(episode_workers, q_network)
    played: list[dict[str, Any]] = []  # a round's episodes not learned from yet

    def save() -> Path | None:
        nonlocal best_score
        if out is None:
            return None
        meta = {"config": asdict(config), "metadata": dict(metadata or {}), "episode": episode,
                "episode_returns": returns}
        policy = {"agent": {"q": agent.q.state_dict(), "steps": agent.steps}, **meta}
        save_checkpoint(out / POLICY_NAME, policy, kind=kind)
        if validate is not None:
            score = float(validate(out / POLICY_NAME))
            log.record("train/validation_score", score)
            if score > best_score:
                best_score = score
                save_checkpoint(out / BEST_NAME, {**policy, "validation_score": score}, kind=kind)
        return save_checkpoint(out / CHECKPOINT_NAME, {"agent": agent.state_dict(), "rng": rng_state({"agent": rng}),
                                                       "best_score": best_score, **meta}, kind=kind)

    try:
        while agent.steps < config.total_steps:
            t0 = time.perf_counter()
            if pool is None:
                ep_return, ep_cost, actions, info = run_episode(env, agent, seed_of(episode), log)
            else:
                if not played:  # a round: one episode per worker, all with the current weights
                    played = pool.play_round(agent, seed_of, episode)
                ep_return, ep_cost, actions, info = learn_episode(agent, played.pop(0), log)
            returns.append(ep_return)
            if config.lagrangian:
                log.record("train/mean_cost", ep_cost / len(actions))
                log.record("train/lagrange", agent.update_lagrange(ep_cost / len(actions)))
            log.record("rollout/episode_return", ep_return)
            log.record("rollout/episode_length", len(actions))
            log.record("rollout/epsilon", agent.epsilon)
            log.record("rollout/distinct_actions", len(set(actions)))
            log.record_histogram("rollout/actions", actions)
            for k, v in info.get("episode_metrics", {}).items():
                log.record(f"system/{k}", v)
            log.record("time/episodes", episode + 1)
            log.record("time/steps_per_s", len(actions) / max(time.perf_counter() - t0, 1e-9))
            log.record("time/wall_s", time.perf_counter() - started)
            log.dump(agent.steps)
            episode += 1
            if on_episode_end is not None:
                on_episode_end(episode - 1, info)
            if next_ckpt is not None and agent.steps >= next_ckpt and not played:  # at a round's end
                ck_path = save()
                next_ckpt = agent.steps + config.checkpoint_interval
        ck_path = save() or ck_path
        if validate is not None:
            log.dump(agent.steps)  # the final validation score
    finally:
        log.close()
        if pool is not None:
            pool.close()
    return DQNTrainResult(agent.steps, episode, returns, time.perf_counter() - started, ck_path,
                          pool.replacements if pool is not None else 0)


def run_episode(env: gym.Env, agent: DQNAgent, seed: int,
                log: Logger) -> tuple[float, float, list[int], dict[str, Any]]:
    """Play one epsilon-greedy episode, learning after every step; returns (return, cost, actions, last info)."""
    obs, _ = env.reset(seed=seed)
    ep_return, ep_cost, actions = 0.0, 0.0, []
    while True:
        action = agent.choose_action(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        cost = float(info.get("cost", 0.0)) if agent.config.lagrangian else 0.0
        learn_step(agent, obs, action, float(reward), next_obs, bool(terminated), bool(truncated), cost, log)
        ep_return += float(reward)
        ep_cost += cost
        actions.append(action)
        obs = next_obs
        if terminated or truncated:
            return ep_return, ep_cost, actions, info


def learn_step(agent: DQNAgent, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool,
               truncated: bool, cost: float, log: Logger) -> None:
    """Remember one transition and take the gradient step that is due (in this process or from a worker's episode).

    Truncation is not termination: the stored transition bootstraps from ``next_obs``.
    """
    agent.remember(obs, action, reward, next_obs, terminated, truncated, cost)
    stats = agent.learn()
    if stats is not None:
        for k, v in stats.items():
            log.record_mean(f"train/{k}", v)


def _reset_parameters(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
