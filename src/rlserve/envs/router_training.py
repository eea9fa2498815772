"""Glue between the generic PPO trainer and the routing environment: environments, demonstrator, metadata.

``train_router(cfg, out_dir)`` is what ``rlserve train router`` runs; the checkpoint it writes carries the state
layout in its metadata so that :class:`~rlserve.policies.ppo_router.PPORouter` rebuilds the exact same
observation at inference time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym

from rlserve.envs.routing_env import RoutingEnv
from rlserve.rl.config import TrainConfig, WarmStartConfig
from rlserve.rl.ppo import TrainResult, train


def router_demonstrator(cfg: WarmStartConfig) -> Callable[[gym.Env, int], tuple[int, int]]:
    """Demonstrations: behaviour routers take turns per episode; the teacher labels every visited state."""
    behaviours = list(cfg.behaviour) or [cfg.teacher]

    def demo(env: gym.Env, episode: int) -> tuple[int, int]:
        routing: RoutingEnv = env.unwrapped  # type: ignore[assignment]
        teacher = routing.heuristic_action(cfg.teacher)
        behaviour = behaviours[episode % len(behaviours)]
        return (teacher if behaviour == cfg.teacher else routing.heuristic_action(behaviour)), teacher

    return demo


def make_env(cfg: TrainConfig) -> RoutingEnv:
    """One routing environment as the config describes it."""
    return RoutingEnv(cfg.env.scenarios, num_replicas=cfg.env.num_replicas, episode_requests=cfg.env.episode_requests,
                      state=cfg.state, reward=cfg.reward)


def router_metadata(cfg: TrainConfig) -> dict[str, Any]:
    """What inference needs besides the weights: cluster size, state layout, feature names."""
    env = make_env(cfg)
    return {"num_replicas": cfg.env.num_replicas, "state": dataclasses.asdict(cfg.state),
            "feature_names": env.state_builder.feature_names()}


def train_router(cfg: TrainConfig, out_dir: str | Path | None, *, resume: bool = False,
                 stop_after_updates: int | None = None,
                 progress: Callable[[int, int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train the PPO router (stabilisation → BC from heuristics → PPO) and write ``out_dir/checkpoint.pt``."""
    env_fns = [functools.partial(make_env, cfg) for _ in range(cfg.ppo.num_envs)]
    return train(cfg, env_fns, out_dir=out_dir, resume=resume, demonstrator=router_demonstrator(cfg.warm_start),
                 metadata=router_metadata(cfg), info_keys=RoutingEnv.info_keys(cfg.reward),
                 stop_after_updates=stop_after_updates, progress=progress)
