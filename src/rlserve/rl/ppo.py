"""Recurrent PPO for discrete actions: the update (:class:`PPOTrainer`) and the whole training run (:func:`train`).

Read top to bottom, CleanRL-style: statistics stabilisation → behaviour cloning → rollouts → GAE → epochs of
sequence minibatches → logging and checkpoints. Every implementation detail and where it lives:

=====================================  ============================================================
detail                                 where
=====================================  ============================================================
orthogonal init, 0.01 policy gain      ``actor_critic._orthogonal``
Adam eps 1e-5, linear LR annealing     :func:`train` (``optimizer``, ``# anneal the learning rate``)
GAE, truncation bootstrap V(final)     ``rollout_buffer.RolloutBuffer.compute_gae``; final values in ``_step_envs``
advantage normalisation (minibatch)    ``RolloutBuffer.sequences``
clipped surrogate, clipped value loss  ``PPOTrainer.update`` (``# policy loss``, ``# value loss``)
entropy bonus, KL penalty, target KL   ``PPOTrainer.update``
KL to the frozen BC policy, decaying   ``PPOTrainer.update`` (``# KL to the reference``), ``kl_ref_coef``
global grad-norm clipping              ``PPOTrainer.update``
recurrent minibatches of whole chunks  ``RolloutBuffer.sequences`` + ``RecurrentPolicy.evaluate_actions``
same distribution for old/new logp     temperature stored per step and reused in ``evaluate_actions``
observation / reward normalisation     ``normalizers``; fitted in the stabilisation phase, then frozen
bit-for-bit resume                     ``_checkpoint_payload`` / ``_restore``; environments replayed by seed+actions
rollouts on Ray actors (optional)      ``rollout_workers.RolloutPool.collect`` (``rollout_workers=`` of :func:`train`)
=====================================  ============================================================

Environments must be deterministic for a seed: resume re-creates each environment's current episode from its
seed and the actions taken so far (the simulator needs no pickling, and the checkpoint stays small).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.distributions import Categorical, kl_divergence

from rlserve.errors import ConfigError, InputError
from rlserve.rl.actor_critic import ActorCritic, RecurrentPolicy, ReplicaSetActorCritic
from rlserve.rl.bc import Demonstrations, behaviour_clone
from rlserve.rl.checkpoints import (
    check_resume_config,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from rlserve.rl.config import TrainConfig
from rlserve.rl.logger import CSVWriter, Logger, ParquetWriter, StdoutWriter, TensorBoardWriter, Writer
from rlserve.rl.normalizers import ObsNormalizer, ReplicaSetNormalizer, ReturnScaler, RunningNormalizer
from rlserve.rl.rollout_buffer import RolloutBuffer
from rlserve.rl.rollout_workers import RolloutPool, RolloutWorkers
from rlserve.rl.temperature import TemperatureController

CHECKPOINT_KIND = "ppo"
TB_RENAME = {"train/": "PPO/", "rollout/reward/": "Reward/", "system/": "System/", "rollout/action/": "Actions/"}


# Warm-start actions for an environment's current state, given the environment and its episode index:
# (the action that drives the environment now, the teacher's label for the same state).
Demonstrator = Callable[[gym.Env, int], tuple[int, int]]


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint_path: Path | None
    updates: int
    env_steps: int
    wall_s: float
    decisions_per_s: float  # environment steps per second of wall time over the PPO phase
    history: list[dict[str, float]] = field(default_factory=list)  # the scalars dumped after each update
    bc_stats: dict[str, float] = field(default_factory=dict)  # behaviour cloning's final loss and accuracy
    model: RecurrentPolicy | None = None
    best_path: Path | None = None  # the best validated checkpoint (with a validate callback)
    best_score: float = -float("inf")
    worker_replacements: int = 0  # rollout workers that died and were replaced (with rollout workers)


class PPOTrainer:
    """The PPO update over one rollout; knows nothing about environments."""

    def __init__(self, model: RecurrentPolicy, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 reference: RecurrentPolicy | None = None) -> None:
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.reference = reference
        if reference is not None:
            reference.eval()
            reference.requires_grad_(False)

    def kl_ref_coef(self, update: int) -> float:
        """Weight of KL(current || reference) at ``update``: linear from the initial to the final value."""
        w = self.cfg.warm_start
        frac = min(1.0, update / max(1, w.kl_ref_decay_updates))
        return w.kl_ref_initial_coef * (1.0 - frac) + w.kl_ref_final_coef * frac

    def update(self, buffer: RolloutBuffer, update: int, rng: np.random.Generator) -> dict[str, float]:
        """Epochs of minibatch gradient steps on ``buffer``; returns averaged statistics (``train/*`` keys)."""
        p = self.cfg.ppo
        stats: dict[str, list[float]] = {}
        kl_ref_coef = self.kl_ref_coef(update) if self.reference is not None else 0.0
        policy_on = update >= p.critic_warmup_updates
        first_ratio_dev = float("nan")
        stop = False
        for epoch in range(p.epochs):
            for mb_i, mb in enumerate(buffer.sequences(p.chunk_len, p.num_minibatches, rng, p.norm_adv)):
                log_probs, entropy, values, _, logits = self.model.evaluate_actions(
                    mb.obs, mb.hxs, mb.masks, mb.actions, mb.temperatures)
                log_ratio = log_probs - mb.old_log_probs
                ratio = log_ratio.exp()
                if epoch == 0 and mb_i == 0:
                    first_ratio_dev = float((ratio.detach() - 1).abs().max())
                # policy loss: clipped surrogate
                pg1 = -mb.advantages * ratio
                pg2 = -mb.advantages * ratio.clamp(1 - p.clip_ratio, 1 + p.clip_ratio)
                policy_loss = torch.max(pg1, pg2).mean()
                # value loss: clipped around the rollout's value estimate
                v_loss = (values - mb.returns) ** 2
                if p.value_clip is not None:
                    v_clipped = mb.old_values + (values - mb.old_values).clamp(-p.value_clip, p.value_clip)
                    v_loss = torch.max(v_loss, (v_clipped - mb.returns) ** 2)
                value_loss = 0.5 * v_loss.mean()
                # exact KL(rollout policy || current policy), both at the step's temperature
                kl = kl_divergence(Categorical(logits=mb.old_logits), Categorical(logits=logits)).mean()
                loss = p.value_coef * value_loss
                if policy_on:
                    loss = loss + policy_loss - p.entropy_coef * entropy.mean() + p.kl_coef * kl
                # KL to the reference (frozen BC) policy, untempered, weight decaying linearly
                kl_ref = torch.zeros(())
                if self.reference is not None and kl_ref_coef > 0:
                    with torch.no_grad():
                        ref_logits, _ = self.reference.get_logits(mb.obs, mb.hxs, mb.masks)
                    cur_logits, _ = self.model.get_logits(mb.obs, mb.hxs, mb.masks)
                    kl_ref = kl_divergence(Categorical(logits=cur_logits), Categorical(logits=ref_logits)).mean()
                    loss = loss + kl_ref_coef * kl_ref
                self.optimizer.zero_grad()
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()
                    clip_frac = ((ratio - 1).abs() > p.clip_ratio).float().mean()
                for k, v in (("policy_loss", policy_loss), ("value_loss", value_loss), ("entropy", entropy.mean()),
                             ("kl", kl), ("approx_kl", approx_kl), ("clip_fraction", clip_frac),
                             ("grad_norm", grad_norm), ("kl_ref", kl_ref)):
                    stats.setdefault(k, []).append(float(v.detach()))
                if p.target_kl is not None and policy_on and float(kl.detach()) > p.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {f"train/{k}": float(np.mean(v)) for k, v in stats.items()}
        y, v_pred = buffer.returns.flatten(), buffer.values.flatten()
        var_y = float(y.var())
        out["train/explained_variance"] = float("nan") if var_y == 0 else 1.0 - float((y - v_pred).var()) / var_y
        out["train/first_minibatch_ratio_dev"] = first_ratio_dev
        out["train/epochs_done"] = float(epoch + 1)
        out["train/kl_ref_coef"] = kl_ref_coef
        return out


# ----------------------------------------------------------------------------------------------- environments
class _EnvRunner:
    """Steps ``num_envs`` environments in lockstep, remembering each episode's seed and actions for resume.

    ``first_index``: the run-wide index of the first environment (a rollout worker owns a slice of them).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], seed: int, first_index: int = 0) -> None:
        self.envs = [fn() for fn in env_fns]
        self.seed, self.first_index = seed, first_index
        self.episode = [0] * len(self.envs)  # episode index per environment
        self.actions: list[list[int]] = [[] for _ in self.envs]  # actions so far in the current episode
        self.ep_return = np.zeros(len(self.envs))
        self.ep_len = np.zeros(len(self.envs), np.int64)
        for env in self.envs:
            if not isinstance(env.action_space, gym.spaces.Discrete):
                raise ConfigError("PPO here needs a Discrete action space")

    def episode_seed(self, i: int) -> int:
        """Seed of environment ``i``'s current episode: distinct per (run seed, env, episode)."""
        ss = np.random.SeedSequence([self.seed, self.first_index + i, self.episode[i]])
        return int(ss.generate_state(1)[0])

    def reset(self, i: int) -> np.ndarray:
        """Start environment ``i``'s current episode and return its first observation."""
        obs, _ = self.envs[i].reset(seed=self.episode_seed(i))
        self.actions[i] = []
        return np.asarray(obs, np.float64)

    def replay(self, i: int, actions: list[int]) -> np.ndarray:
        """Re-create environment ``i``'s current episode by replaying ``actions`` (resume)."""
        obs = self.reset(i)
        for a in actions:
            obs, *_ = self.envs[i].step(a)
            self.actions[i].append(a)
        return np.asarray(obs, np.float64)

    def step(self, i: int, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step environment ``i``; on episode end returns the final observation (the caller resets)."""
        obs, reward, terminated, truncated, info = self.envs[i].step(action)
        self.actions[i].append(action)
        self.ep_return[i] += reward
        self.ep_len[i] += 1
        return np.asarray(obs, np.float64), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        """Close every environment."""
        for env in self.envs:
            env.close()


def _make_logger(cfg: TrainConfig, out_dir: Path | None, action_dim: int, info_keys: Sequence[str]) -> Logger:
    writers: list[Writer] = []
    if cfg.monitoring.stdout:
        writers.append(StdoutWriter())
    if out_dir is not None:
        if cfg.monitoring.enable_tensorboard:
            writers.append(TensorBoardWriter(out_dir / "tb", rename=TB_RENAME))
        fields = metric_fields(action_dim, info_keys)
        if cfg.monitoring.metrics_export == "csv":
            writers.append(CSVWriter(out_dir / "metrics.csv", fields))
        elif cfg.monitoring.metrics_export == "parquet":
            writers.append(ParquetWriter(out_dir / "metrics.parquet", fields))
    return Logger(writers)


def metric_fields(action_dim: int, info_keys: Sequence[str]) -> list[str]:
    """The fixed schema of the per-update metrics file (everything :func:`train` records)."""
    train = ["policy_loss", "value_loss", "entropy", "kl", "approx_kl", "clip_fraction", "grad_norm", "kl_ref",
             "explained_variance", "first_minibatch_ratio_dev", "epochs_done", "kl_ref_coef", "learning_rate"]
    return ([f"train/{k}" for k in train]
            + ["rollout/ep_return_mean", "rollout/ep_len_mean", "rollout/episodes", "rollout/temperature",
               "rollout/reward/scaled_mean"]
            + [f"rollout/action/frac_{a}" for a in range(action_dim)]
            + sorted(info_keys)
            + ["validation/score", "validation/best_score"]
            + ["time/updates", "time/env_steps", "time/decisions_per_s", "time/wall_s"])


# ----------------------------------------------------------------------------------------------- training run
def train(cfg: TrainConfig, env_fns: Sequence[Callable[[], gym.Env]], *, out_dir: str | Path | None = None,
          resume: bool = False, demonstrator: Demonstrator | None = None, metadata: dict[str, Any] | None = None,
          info_keys: Sequence[str] = (), stop_after_updates: int | None = None,
          progress: Callable[[int, int, dict[str, float]], None] | None = None,
          validate: Callable[[Path], float] | None = None,
          rollout_workers: RolloutWorkers | None = None, allow_config_change: bool = False) -> TrainResult:
    """Train a recurrent actor-critic with PPO on ``len(env_fns)`` lockstep environments.

    Args:
        cfg: the whole configuration (``cfg.ppo.num_envs`` must equal ``len(env_fns)``).
        env_fns: constructors of deterministic environments with flat Box observations and Discrete actions.
        out_dir: where ``checkpoint.pt``, metrics and TensorBoard files go; ``None`` writes nothing.
        resume: continue from ``out_dir/checkpoint.pt`` bit-for-bit. ``cfg`` must equal the stored config except
            for a larger ``total_updates`` (only without ``ppo.anneal_lr``, whose schedule is relative to the total),
            unless ``allow_config_change``.
        demonstrator: warm-start actions; without one, stabilisation acts at random and BC is skipped.
        metadata: stored in the checkpoint as is (the router stores its state layout here).
        info_keys: numeric ``info`` entries (``rollout/...`` / ``system/...``) averaged and logged per update.
        stop_after_updates: stop (with a checkpoint) after this many updates in total, as if killed; tests use it.
        progress: called after every update with (update, total_updates, scalars).
        validate: scores a checkpoint file (higher = better) after behaviour cloning and every
            ``checkpoints.validation_interval`` updates; the best one is copied to ``out_dir/best.pt``.
        rollout_workers: collect the PPO rollouts with Ray actors (:mod:`rlserve.rl.rollout_workers`); statistics
            stabilisation and behaviour cloning stay in this process. ``None``: everything in this process.
    """
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    p = cfg.ppo
    if len(env_fns) != p.num_envs:
        raise ConfigError(f"ppo.num_envs is {p.num_envs} but {len(env_fns)} environment constructors were given")
    out = Path(out_dir) if out_dir is not None else None
    ck_path = out / "checkpoint.pt" if out is not None else None
    if resume and (ck_path is None or not ck_path.is_file()):
        raise InputError(f"cannot resume: no checkpoint at {ck_path}; train without --resume first")
    if not resume and ck_path is not None and ck_path.exists():
        raise ConfigError(f"{ck_path} exists; pass --resume to continue it or choose another output directory")

    runner = _EnvRunner(env_fns, cfg.seed)
    obs_shape = runner.envs[0].observation_space.shape
    if obs_shape is None or len(obs_shape) != 1:
        raise ConfigError(f"PPO here needs flat Box observations, got shape {obs_shape}")
    obs_dim = int(obs_shape[0])
    action_dim = int(runner.envs[0].action_space.n)  # type: ignore[attr-defined]
    rng = np.random.default_rng(cfg.seed)  # minibatch order and stabilisation actions
    torch.manual_seed(cfg.seed)
    layout = getattr(runner.envs[0].unwrapped, "replica_set_layout", None)
    obs_norm = build_normalizer(cfg, obs_dim, layout)
    ret_scaler = ReturnScaler(p.num_envs, gamma=p.gamma)
    temp_ctl = TemperatureController(
        cfg.temperature.base_temperature, cfg.temperature.min_temperature, cfg.temperature.max_temperature,
        cfg.temperature.qps_sensitivity, cfg.temperature.latency_sensitivity, cfg.temperature.balance_sensitivity,
        cfg.temperature.smoothing)
    model = build_model(cfg, obs_dim, action_dim, layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, eps=p.adam_eps)
    reference: RecurrentPolicy | None = None
    update, env_steps, wall_before = 0, 0, 0.0
    bc_stats: dict[str, float] = {}
    best_score = -float("inf")

    if resume:
        assert ck_path is not None
        data = load_checkpoint(ck_path, kind=CHECKPOINT_KIND)
        check_resume_config(ck_path, data["config"], cfg.to_dict(), total_key="total_updates",
                            schedule_depends_on_total=p.anneal_lr, allow_change=allow_config_change)
        check_compatible(data, obs_dim, action_dim)
        model.load_state_dict(data["model"])
        optimizer.load_state_dict(data["optimizer"])
        if data["reference"] is not None:
            reference = build_model(cfg, obs_dim, action_dim, layout)
            reference.load_state_dict(data["reference"])
        obs_norm.load_state_dict(data["obs_normalizer"])
        ret_scaler.load_state_dict(data["return_scaler"])
        temp_ctl.load_state_dict(data["temperature"])
        update, env_steps, wall_before = data["update"], data["env_steps"], data["wall_s"]
        bc_stats = dict(data["bc_stats"])
        best_score = float(data["best_score"])
        runner.episode = list(data["episodes"])
        obs_raw = np.stack([runner.replay(i, list(a)) for i, a in enumerate(data["episode_actions"])])
        runner.ep_return = np.asarray(data["ep_return"], np.float64)
        runner.ep_len = np.asarray(data["ep_len"], np.int64)
        hxs, masks = data["hxs"], data["masks"]
        restore_rng_state(data["rng"], {"trainer": rng})
    else:
        obs_raw = np.stack([runner.reset(i) for i in range(p.num_envs)])
        # statistics stabilisation: only the normalisers learn (and demonstrations are recorded)
        obs_raw, demos = _stabilise(cfg, runner, obs_raw, obs_norm, ret_scaler, demonstrator, rng)
        obs_norm.frozen = ret_scaler.frozen = True
        if demos is not None and cfg.warm_start.enabled:
            w = cfg.warm_start
            bc_stats = behaviour_clone(model, demos.normalized(obs_norm), chunk_len=p.chunk_len, epochs=w.bc_epochs,
                                       lr=w.bc_lr, minibatch_chunks=w.bc_minibatch_chunks, rng=rng)
            reference = copy.deepcopy(model)
        hxs = model.initial_state(p.num_envs)
        masks = torch.zeros(p.num_envs)  # every environment is at an episode start (hidden state from zero)

    logger = _make_logger(cfg, out, action_dim, info_keys)
    if resume:
        logger.discard_after(update)  # rows the interrupted run logged after its last checkpoint come again

    def save(best: float) -> None:
        """Write the training state as it is now (``best``: the best validation score so far)."""
        save_checkpoint(ck_path, _checkpoint_payload(  # type: ignore[arg-type]
            cfg, model, optimizer, reference, obs_norm, ret_scaler, temp_ctl, rng, update, env_steps,
            wall_before + time.perf_counter() - t_start, runner, hxs, masks, obs_dim, action_dim, metadata, bc_stats,
            best), kind=CHECKPOINT_KIND)

    if not resume and validate is not None and ck_path is not None:
        save(best_score)  # the behaviour-cloned policy is the first candidate for best.pt
        best_score = _validate(validate, ck_path, best_score, logger, save)
    trainer = PPOTrainer(model, optimizer, cfg, reference)
    buffer = RolloutBuffer(p.num_steps, p.num_envs, obs_dim, action_dim, (hxs.shape[0], hxs.shape[2]),
                           p.gamma, p.gae_lambda)
    history: list[dict[str, float]] = []
    last = stop_after_updates if stop_after_updates is not None else cfg.total_updates
    pool = None if rollout_workers is None else RolloutPool(rollout_workers, cfg, env_fns, obs_dim, action_dim,
                                                            info_keys)
    ppo_steps, ppo_wall = 0, 0.0
    while update < min(last, cfg.total_updates):
        t_iter = time.perf_counter()
        if p.anneal_lr:  # anneal the learning rate linearly to 0 over the run
            for group in optimizer.param_groups:
                group["lr"] = p.lr * (1.0 - update / cfg.total_updates)
        # rollout
        buffer.reset()
        model.eval()
        if pool is not None:
            last_values, hxs, masks = pool.collect(runner, model, obs_norm, ret_scaler, buffer, hxs, masks, update,
                                                   logger)
        else:
            with torch.no_grad():
                for _ in range(p.num_steps):
                    obs_raw, hxs, masks = _step_envs(cfg, runner, model, buffer, obs_raw, hxs, masks, obs_norm,
                                                     ret_scaler, temp_ctl, logger, info_keys)
                obs_t = torch.as_tensor(obs_norm.normalize(obs_raw))
                _, _, last_values, _, _ = model.act_value(obs_t, hxs, masks)
        buffer.compute_gae(last_values)
        # learn
        model.train()
        stats = trainer.update(buffer, update, rng)
        update += 1
        env_steps += p.num_steps * p.num_envs
        ppo_steps += p.num_steps * p.num_envs
        ppo_wall += time.perf_counter() - t_iter
        for k, v in stats.items():
            logger.record(k, v)
        logger.record("train/learning_rate", optimizer.param_groups[0]["lr"])
        counts = np.bincount(buffer.actions.flatten().numpy(), minlength=action_dim) / buffer.actions.numel()
        for a, frac in enumerate(counts):
            logger.record(f"rollout/action/frac_{a}", frac)
        logger.record_histogram("rollout/action/hist", buffer.actions.flatten().numpy())
        logger.record("rollout/reward/scaled_mean", float(buffer.rewards.mean()))
        logger.record("time/updates", update)
        logger.record("time/env_steps", env_steps)
        logger.record("time/decisions_per_s", ppo_steps / ppo_wall)
        logger.record("time/wall_s", wall_before + time.perf_counter() - t_start)
        is_last = update >= min(last, cfg.total_updates)
        validate_now = validate is not None and ck_path is not None and (
            is_last or update % cfg.checkpoints.validation_interval == 0)
        if ck_path is not None and cfg.checkpoints.enable_checkpoints and (
                is_last or validate_now or update % cfg.checkpoints.checkpoint_interval == 0):
            save(best_score)
        if validate_now:
            best_score = _validate(validate, ck_path, best_score, logger, save)  # type: ignore[arg-type]
        scalars = logger.dump(update)
        history.append(scalars)
        if progress is not None:
            progress(update, cfg.total_updates, scalars)
    logger.close()
    runner.close()
    if pool is not None:
        pool.close()
    wall = time.perf_counter() - t_start
    best_path = ck_path.with_name("best.pt") if ck_path is not None else None
    return TrainResult(ck_path if ck_path is not None and ck_path.exists() else None, update, env_steps,
                       wall_before + wall, ppo_steps / ppo_wall if ppo_wall else float("nan"), history, bc_stats,
                       model, best_path if best_path is not None and best_path.exists() else None, best_score,
                       pool.replacements if pool is not None else 0)


def _validate(validate: Callable[[Path], float], ck_path: Path, best_score: float, logger: Logger,
              save: Callable[[float], None]) -> float:
    """Score the checkpoint just written; when it beats every earlier one, rewrite it with its score and copy it
    to ``best.pt``. Returns the best score so far.

    Runs inside ``torch.random.fork_rng`` so that validation never shifts the training's random streams (a resumed
    run, which does not repeat earlier validations, must continue with the same numbers).
    """
    with torch.random.fork_rng():
        score = float(validate(ck_path))
    logger.record("validation/score", score)
    if score > best_score:
        best_score = score
        save(best_score)
        shutil.copyfile(ck_path, ck_path.with_name(".best.pt.tmp"))
        os.replace(ck_path.with_name(".best.pt.tmp"), ck_path.with_name("best.pt"))
    logger.record("validation/best_score", best_score)
    return best_score


def build_model(cfg: TrainConfig, obs_dim: int, action_dim: int,
                layout: dict[str, Any] | None = None) -> RecurrentPolicy:
    """The network ``cfg.network`` describes; ``layout``: the environment's ``replica_set_layout`` (global and
    replica widths, slots, replica feature names), required by the replica-set architecture."""
    n = cfg.network
    if n.architecture == "replica_set":
        if layout is None:
            raise ConfigError("network.architecture 'replica_set' needs an environment with a replica-set "
                              "observation layout (the routing environment); use 'flat' for flat observations")
        names = list(layout["replica_features"])
        if n.prior_feature is not None and n.prior_feature not in names:
            raise ConfigError(f"network.prior_feature {n.prior_feature!r} is not a replica feature of this state "
                              f"layout; known: {names}")
        return ReplicaSetActorCritic(
            int(layout["global_dim"]), int(layout["replica_dim"]), int(layout["slots"]), hidden_size=n.hidden_size,
            proj_dim=n.proj_dim, layer_n=n.layer_n, gru_layers=n.gru_layers,
            prior_feature=None if n.prior_feature is None else names.index(n.prior_feature),
            prior_scale=n.prior_scale, zero_init_head=n.zero_init_head)
    return ActorCritic(obs_dim, action_dim, hidden_size=n.hidden_size, proj_dim=n.proj_dim, layer_n=n.layer_n,
                       gru_layers=n.gru_layers, bounded_logits=n.bounded_logits, logit_scale=n.logit_scale)


def build_normalizer(cfg: TrainConfig, obs_dim: int,
                     layout: dict[str, Any] | None = None) -> ObsNormalizer:
    """The observation normaliser of the architecture: per position (flat) or shared by every replica."""
    s = cfg.state
    if cfg.network.architecture == "replica_set" and layout is not None:
        return ReplicaSetNormalizer(int(layout["global_dim"]), int(layout["replica_dim"]), s.norm_clip, s.norm_eps)
    return RunningNormalizer(obs_dim, clip=s.norm_clip, eps=s.norm_eps)


def _stabilise(cfg: TrainConfig, runner: _EnvRunner, obs_raw: np.ndarray, obs_norm: ObsNormalizer,
               ret_scaler: ReturnScaler, demonstrator: Demonstrator | None,
               rng: np.random.Generator) -> tuple[np.ndarray, Demonstrations | None]:
    """Drive the environments with the demonstrator's behaviour (or at random), fitting only the normalisers.

    Returns the current observations and, with a demonstrator, the recorded (observation, teacher action) pairs.
    """
    steps, n = cfg.warm_start.stabilization_steps, len(runner.envs)
    if steps == 0:
        return obs_raw, None
    obs_log = np.zeros((steps, n, obs_raw.shape[1]))
    labels = np.zeros((steps, n), np.int64)
    starts = np.zeros((steps, n), bool)
    starts[0] = True
    for t in range(steps):
        obs_log[t] = obs_raw
        obs_norm.update(obs_raw)
        rewards, dones = np.zeros(n), np.zeros(n, bool)
        for i, env in enumerate(runner.envs):
            if demonstrator is not None:
                act, labels[t, i] = demonstrator(env, runner.episode[i])
            else:
                act = labels[t, i] = int(rng.integers(env.action_space.n))  # type: ignore[attr-defined]
            obs, rewards[i], term, trunc, _ = runner.step(i, act)
            dones[i] = term or trunc
            if dones[i]:
                runner.episode[i] += 1
                runner.ep_return[i], runner.ep_len[i] = 0.0, 0
                obs = runner.reset(i)
                if t + 1 < steps:
                    starts[t + 1, i] = True
            obs_raw[i] = obs
        ret_scaler.update(rewards, dones)
    demos = Demonstrations(obs_log, labels, starts) if demonstrator is not None else None
    return obs_raw, demos


def _step_envs(cfg: TrainConfig, runner: _EnvRunner, model: RecurrentPolicy, buffer: RolloutBuffer,
               obs_raw: np.ndarray, hxs: torch.Tensor, masks: torch.Tensor, obs_norm: ObsNormalizer,
               ret_scaler: ReturnScaler, temp_ctl: TemperatureController, logger: Logger,
               info_keys: Sequence[str]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """One lockstep step of every environment, stored in ``buffer``; returns the next obs, hidden state, masks."""
    n = len(runner.envs)
    obs_t = torch.as_tensor(obs_norm.normalize(obs_raw))
    temperature = temp_ctl.temperature if cfg.temperature.enable_dynamic_temperature else \
        cfg.temperature.base_temperature
    actions, log_probs, values, new_hxs, logits = model.act_value(obs_t, hxs, masks, temperature)
    next_obs = np.empty_like(obs_raw)
    rewards = np.zeros(n)
    terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
    final_values = torch.zeros(n)
    next_masks = torch.ones(n)
    for i in range(n):
        obs, rewards[i], terminated[i], truncated[i], info = runner.step(i, int(actions[i]))
        for k in info_keys:
            if k in info:
                logger.record_mean(k, info[k])
        if cfg.temperature.enable_dynamic_temperature and "pressure" in info:
            temp_ctl.compute_temperature(**info["pressure"])
        if terminated[i] or truncated[i]:
            if truncated[i] and not terminated[i]:
                # bootstrap value if truncated: V(final obs) from the hidden state the episode ended with
                fin = torch.as_tensor(obs_norm.normalize(obs)).unsqueeze(0)
                _, _, v, _, _ = model.act_value(fin, new_hxs[:, i:i + 1], torch.ones(1))
                final_values[i] = v[0]
            logger.record_mean("rollout/ep_return_mean", runner.ep_return[i])
            logger.record_mean("rollout/ep_len_mean", float(runner.ep_len[i]))
            logger.record_mean("rollout/episodes", 1.0)
            runner.episode[i] += 1
            runner.ep_return[i], runner.ep_len[i] = 0.0, 0
            obs = runner.reset(i)
            next_masks[i] = 0.0
        next_obs[i] = obs
    logger.record_mean("rollout/temperature", temperature)
    ret_scaler.update(rewards, terminated | truncated)
    scaled = ret_scaler.scale(rewards)
    buffer.add(obs_t, hxs, masks, actions, log_probs, logits, temperature, values, scaled, terminated, truncated,
               final_values)
    return next_obs, new_hxs, next_masks


INFERENCE_KEYS = ("model", "obs_normalizer", "obs_dim", "action_dim", "config", "metadata", "update", "env_steps",
                  "wall_s", "best_score", "bc_stats")


def export_for_inference(src: str | Path, dst: str | Path) -> Path:
    """Copy of a training checkpoint without what only resuming needs (optimiser, BC reference, RNG and episode
    states): the small file a router ships with. Loads like any checkpoint of this kind."""
    data = load_checkpoint(src, kind=CHECKPOINT_KIND)
    return save_checkpoint(dst, {k: data[k] for k in INFERENCE_KEYS}, kind=CHECKPOINT_KIND)


def check_compatible(data: dict[str, Any], obs_dim: int, action_dim: int) -> None:
    """Fail loudly when a checkpoint's network does not fit this environment (never fall back to random weights).

    Raises:
        InputError: state or action dimension differ.
    """
    if (data["obs_dim"], data["action_dim"]) != (obs_dim, action_dim):
        raise InputError(f"checkpoint was trained for state_dim={data['obs_dim']}, actions={data['action_dim']}; "
                         f"this environment has state_dim={obs_dim}, actions={action_dim}. Use a matching "
                         "state config and cluster size, or train a new checkpoint")


def _checkpoint_payload(cfg: TrainConfig, model: RecurrentPolicy, optimizer: torch.optim.Optimizer,
                        reference: RecurrentPolicy | None, obs_norm: ObsNormalizer,
                        ret_scaler: ReturnScaler,
                        temp_ctl: TemperatureController, rng: np.random.Generator, update: int, env_steps: int,
                        wall_s: float, runner: _EnvRunner, hxs: torch.Tensor, masks: torch.Tensor, obs_dim: int,
                        action_dim: int, metadata: dict[str, Any] | None, bc_stats: dict[str, float],
                        best_score: float) -> dict[str, Any]:
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "reference": reference.state_dict() if reference is not None else None,
        "obs_normalizer": obs_norm.state_dict(), "return_scaler": ret_scaler.state_dict(),
        "temperature": temp_ctl.state_dict(), "rng": rng_state({"trainer": rng}),
        "update": update, "env_steps": env_steps, "wall_s": wall_s,
        "episodes": list(runner.episode), "episode_actions": [list(a) for a in runner.actions],
        "ep_return": runner.ep_return.tolist(), "ep_len": runner.ep_len.tolist(),
        "hxs": hxs.clone(), "masks": masks.clone(), "obs_dim": obs_dim, "action_dim": action_dim,
        "config": cfg.to_dict(), "bc_stats": bc_stats, "best_score": best_score,
        "metadata": metadata or {},
    }
