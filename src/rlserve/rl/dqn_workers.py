"""DQN episodes played by Ray actors that own an environment each; the learner learns from them in order.

Ape-X-style (Horgan et al., 2018) but synchronous, so that a seed gives one result: a *round* sends the current
online weights (~60 kB) to every worker, each plays one whole epsilon-greedy episode (episode ``e + k`` for worker
``k``, reset with the same episode seed one process would use, exploration drawn from a generator seeded by the
episode), and the learner then remembers the transitions episode by episode with the same
remember-then-learn step as the single-process loop (:func:`rlserve.rl.dqn.learn_step`). Epsilon follows the
single-process schedule along each episode from the step count at the round's start.

What changes against one process: every episode of a round acts with the weights of the round's start (up to one
episode staler). What stays: gradient steps per transition (``train_frequency``), replay, targets, Lagrangian
updates per episode. Gradient steps stay serial in the learner, so with one gradient step per transition the
speed-up is bounded by (step + learn) / learn time per transition (``docs/scaling.md``).

A worker that dies is replaced and its episode replayed: an episode is a function of the weights and seeds only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlserve.errors import BackendError, ConfigError
from rlserve.parallel import Parallel, ensure_ray
from rlserve.rl.dqn import DQNAgent, DQNConfig, epsilon_at, learn_step
from rlserve.rl.logger import Logger

MAX_REPLACEMENTS_PER_ROUND = 3


@dataclass(frozen=True)
class EpisodeWorkers:
    """How many episode actors, each owning an environment built by ``env_fn``, and where Ray runs.

    ``name_prefix`` names the actors ``<prefix><worker>-<start>``, as for PPO rollout workers.
    """

    num_workers: int
    env_fn: Callable[[], gym.Env]
    parallel: Parallel
    name_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"episode workers must be >= 1, got {self.num_workers}")


class EpisodeWorker:
    """A Ray actor: one environment and a copy of the Q-network."""

    def __init__(self, env_fn: Callable[[], gym.Env], q_network: nn.Module) -> None:
        torch.set_num_threads(1)
        self.env = env_fn()
        self.q = q_network

    def play(self, weights: dict[str, torch.Tensor], config: DQNConfig, steps0: int, env_seed: int,
             rng_seed: int) -> dict[str, Any]:
        """One epsilon-greedy episode; every transition back as arrays, with the last ``info``."""
        self.q.load_state_dict(weights)
        rng = np.random.default_rng(rng_seed)
        n_actions = int(self.env.action_space.n)  # type: ignore[attr-defined]
        obs, _ = self.env.reset(seed=env_seed)
        rows: list[tuple[np.ndarray, int, float, np.ndarray, bool, bool, float]] = []
        while True:
            if rng.random() < epsilon_at(config, steps0 + len(rows)):
                action = int(rng.integers(n_actions))
            else:
                with torch.no_grad():
                    q = self.q(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0]
                action = int(np.argmax(q.numpy()))
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            cost = float(info.get("cost", 0.0)) if config.lagrangian else 0.0
            rows.append((np.asarray(obs), action, float(reward), np.asarray(next_obs), bool(terminated),
                         bool(truncated), cost))
            obs = next_obs
            if terminated or truncated:
                return {"rows": rows, "info": info}


class EpisodePool:
    """The learner's side: plays rounds of episodes on the actors, replacing any that die."""

    def __init__(self, spec: EpisodeWorkers, q_network: nn.Module) -> None:
        self.ray = ensure_ray(spec.parallel)
        self.spec = spec
        self._actor_cls = self.ray.remote(num_cpus=1, max_restarts=0)(EpisodeWorker)
        self._q = copy.deepcopy(q_network)
        self.starts = [0] * spec.num_workers
        self.actors = [self._start(k) for k in range(spec.num_workers)]
        self.replacements = 0

    def _start(self, k: int) -> Any:
        options = {"name": f"{self.spec.name_prefix}{k}-{self.starts[k]}"} if self.spec.name_prefix else {}
        self.starts[k] += 1
        return self._actor_cls.options(**options).remote(self.spec.env_fn, self._q)

    def play_round(self, agent: DQNAgent, seed_of: Callable[[int], int], first_episode: int) -> list[dict[str, Any]]:
        """Episodes ``first_episode ..`` (one per worker) with the agent's current weights, in episode order."""
        ray = self.ray
        weights = ray.put({k: v.detach().clone() for k, v in agent.q.state_dict().items()})

        def submit(k: int) -> Any:
            episode = first_episode + k
            rng_seed = int(np.random.SeedSequence([agent.config.seed, episode]).generate_state(1)[0])
            return self.actors[k].play.remote(weights, agent.config, agent.steps, seed_of(episode), rng_seed)

        refs = [submit(k) for k in range(len(self.actors))]
        out = []
        for k in range(len(self.actors)):
            for attempt in range(MAX_REPLACEMENTS_PER_ROUND + 1):
                try:
                    out.append(ray.get(refs[k]))
                    break
                except ray.exceptions.RayActorError as exc:  # the worker died: a new one replays the episode
                    if attempt == MAX_REPLACEMENTS_PER_ROUND:
                        raise BackendError(f"episode worker {k} died {attempt + 1} times: {exc}".splitlines()[0]
                                           ) from None
                    self.replacements += 1
                    self.actors[k] = self._start(k)
                    refs[k] = submit(k)
        return out

    def close(self) -> None:
        """Stop every worker."""
        for actor in self.actors:
            self.ray.kill(actor)


def learn_episode(agent: DQNAgent, episode: dict[str, Any],
                  log: Logger) -> tuple[float, float, list[int], dict[str, Any]]:
    """Learn from a worker's episode step by step; returns (return, cost, actions, last info) like ``run_episode``."""
    ep_return, ep_cost, actions = 0.0, 0.0, []
    for obs, action, reward, next_obs, terminated, truncated, cost in episode["rows"]:
        learn_step(agent, obs, action, reward, next_obs, terminated, truncated, cost, log)
        ep_return += reward
        ep_cost += cost
        actions.append(action)
    return ep_return, ep_cost, actions, episode["info"]
