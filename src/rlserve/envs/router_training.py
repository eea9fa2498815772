"""Glue between the generic PPO trainer and the routing environment: environments, demonstrator, metadata.

``train_router(cfg, out_dir)`` is what ``rlserve train router`` runs; the checkpoint it writes carries the state
layout in its metadata so that :class:`~rlserve.policies.ppo_router.PPORouter` rebuilds the exact same
observation at inference time. Model selection: the behaviour-cloned policy and every
``checkpoints.validation_interval``-th PPO policy are scored on a fixed set of randomised validation scenarios
(:func:`router_validator`); the best becomes ``best.pt``, the one to ship.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlserve.envs.routing_env import RoutingEnv
from rlserve.envs.scenario_sampler import RANDOMIZED, ScenarioSampler
from rlserve.experiments import HEURISTICS
from rlserve.policies import Router, make_router
from rlserve.policies.ppo_router import PPORouter
from rlserve.rl.config import TrainConfig, WarmStartConfig
from rlserve.rl.ppo import TrainResult, train
from rlserve.rl.rollout_workers import RolloutWorkers
from rlserve.sim import ClusterConfig, simulate
from rlserve.workload.request import Workload


def router_demonstrator(cfg: WarmStartConfig) -> Callable[[gym.Env, int], tuple[int, int]]:
    """Demonstrations: behaviour routers take turns per episode; the teacher labels every visited state.

    With several teacher candidates, the teacher of an episode is the one that serves that episode's workload best
    by more than ``teacher_margin`` over the first (:meth:`RoutingEnv.best_heuristic`); ``"teacher"`` in the
    behaviour list means "let the teacher drive".
    """
    behaviours = list(cfg.behaviour) or ["teacher"]

    def demo(env: gym.Env, episode: int) -> tuple[int, int]:
        routing: RoutingEnv = env.unwrapped  # type: ignore[assignment]
        teacher = cfg.teacher[0] if len(cfg.teacher) == 1 else routing.best_heuristic(cfg.teacher,
                                                                                        cfg.teacher_margin)
        label = routing.heuristic_action(teacher)
        behaviour = behaviours[episode % len(behaviours)]
        return (label if behaviour in ("teacher", teacher) else routing.heuristic_action(behaviour)), label

    return demo


def replica_sizes(cfg: TrainConfig) -> tuple[int, int] | None:
    """``(min, max)`` cluster sizes of the replica-set network; ``None`` for the flat one (fixed size)."""
    if cfg.network.architecture == "replica_set":
        return cfg.env.min_replicas, cfg.env.max_replicas
    return None


def make_env(cfg: TrainConfig) -> RoutingEnv:
    """One routing environment as the config describes it."""
    return RoutingEnv(cfg.env.scenarios, num_replicas=cfg.env.num_replicas, episode_requests=cfg.env.episode_requests,
                      state=cfg.state, reward=cfg.reward, replica_set=replica_sizes(cfg), holdout=cfg.env.holdout,
                      lookahead_ttft_weight=cfg.warm_start.lookahead_ttft_weight)


def router_metadata(cfg: TrainConfig) -> dict[str, Any]:
    """What inference needs besides the weights: architecture, cluster size(s), state layout, feature names."""
    env = make_env(cfg)
    return {"architecture": cfg.network.architecture, "num_replicas": env.num_replicas,
            "replica_set_layout": env.replica_set_layout, "state": dataclasses.asdict(cfg.state),
            "feature_names": env.state_builder.feature_names()}


VALIDATION_SEED = 20_240_601  # fixed: the validation set is the same for every run and config
VALIDATION_BASELINES = tuple(h for h in HEURISTICS if h not in ("random", "round_robin"))
"""The heuristics validation compares with: every shipped one (random and round robin are never the best)."""


def router_validator(cfg: TrainConfig) -> Callable[[Path], float]:
    """Score of a checkpoint on fixed randomised scenarios: mean relative gain over the best heuristic per scenario.

    Per scenario the gain is the average of ``max(1 - ppo / best, -1)`` for mean E2E and for P99 TTFT, where
    ``best`` is the best of :data:`VALIDATION_BASELINES` on that metric (so 0 = as good as the best heuristic).
    Baselines are simulated once, on first use.
    """
    sizes = replica_sizes(cfg) or cfg.env.num_replicas
    sampler = ScenarioSampler([RANDOMIZED], sizes, holdout=cfg.env.holdout)
    rng = np.random.default_rng(VALIDATION_SEED)
    cases = []
    for _ in range(cfg.checkpoints.validation_scenarios):
        scenario = sampler.sample(rng, cfg.checkpoints.validation_requests).scenario
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="token caps shortened")
            warnings.filterwarnings("ignore", message="prefix.prefix_tokens")
            cases.append((scenario.cluster, scenario.build_workload(int(rng.integers(2**31 - 1)))))
    baselines: list[tuple[float, float]] = []

    def metrics(cluster: ClusterConfig, workload: Workload, router: Router) -> tuple[float, float]:
        s = simulate(cluster, workload, router).summary()
        return s.e2e_s["mean"], s.ttft_s["p99"]

    def score(checkpoint: Path) -> float:
        if not baselines:
            for cluster, workload in cases:
                runs = [metrics(cluster, workload, make_router(b, seed=0)) for b in VALIDATION_BASELINES]
                baselines.append((min(r[0] for r in runs), min(r[1] for r in runs)))
        gains = []
        for (cluster, workload), (best_e2e, best_ttft) in zip(cases, baselines, strict=True):
            e2e, ttft = metrics(cluster, workload, PPORouter(checkpoint))
            # each metric's gain clipped at -1 (twice as slow): one pathological case must not decide alone
            gains.append((max(1 - e2e / best_e2e, -1.0) + max(1 - ttft / best_ttft, -1.0)) / 2)
        return float(np.mean(gains))

    return score


def train_router(cfg: TrainConfig, out_dir: str | Path | None, *, resume: bool = False,
                 stop_after_updates: int | None = None,
                 progress: Callable[[int, int, dict[str, float]], None] | None = None,
                 rollout_workers: RolloutWorkers | None = None, allow_config_change: bool = False) -> TrainResult:
    """Train the PPO router (stabilisation → BC from heuristics → PPO) and write ``out_dir/checkpoint.pt``.

    ``rollout_workers``: collect PPO rollouts on Ray actors (see :mod:`rlserve.rl.rollout_workers`).
    """
    env_fns = [functools.partial(make_env, cfg) for _ in range(cfg.ppo.num_envs)]
    validate = router_validator(cfg) if cfg.checkpoints.validation_interval > 0 else None
    return train(cfg, env_fns, out_dir=out_dir, resume=resume, demonstrator=router_demonstrator(cfg.warm_start),
                 metadata=router_metadata(cfg), info_keys=RoutingEnv.info_keys(cfg.reward),
                 stop_after_updates=stop_after_updates, progress=progress, validate=validate,
                 rollout_workers=rollout_workers, allow_config_change=allow_config_change)
