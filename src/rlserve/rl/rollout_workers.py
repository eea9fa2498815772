"""PPO rollouts collected by Ray actors that own the environments and run the policy (weights shipped per update).

Why workers run the policy rather than send observations to a batching learner: a decision of the routing
environment costs tens of microseconds, a Ray round trip about a millisecond (``benchmarks/ray_scaling.py``
measures both), so a round trip per step would cost more than the step. Here one round trip per *update* carries the
weights (~100 kB) out and a rollout segment (``num_steps`` x the worker's environments) back.

Each worker owns a contiguous slice of the ``ppo.num_envs`` environments and steps them with
:func:`rlserve.rl.ppo._step_envs`, the very code of the single-process loop, into a buffer of its own, with the
learner's frozen normalisers and the weights of this update. Actions are sampled from a torch generator seeded
by ``(seed, worker, update)``: the same seed and worker count give the same run; another worker count gives another
(equally valid) sample of actions. Environment episodes are seeded by global environment index as in one process.

Fault tolerance: after every update the learner holds each environment's episode index and the actions taken in
it (the resume bookkeeping of :class:`~rlserve.rl.ppo._EnvRunner`). A worker that dies is replaced by a new actor
that replays those actions to the same state, and the same rollout (same weights, same seed) runs again, so a
killed worker changes nothing in the result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlserve.errors import BackendError, ConfigError
from rlserve.parallel import Parallel, ensure_ray
from rlserve.rl.logger import Logger
from rlserve.rl.normalizers import ReturnScaler
from rlserve.rl.rollout_buffer import RolloutBuffer

#: Buffer fields a worker sends back, and the dimension that indexes environments in each.
SEGMENT_FIELDS = {"obs": 1, "hxs": 2, "masks": 1, "actions": 1, "log_probs": 1, "logits": 1, "temperatures": 1,
                  "values": 1, "rewards": 1, "dones": 1, "final_values": 1}
MAX_REPLACEMENTS_PER_UPDATE = 3


@dataclass(frozen=True)
class RolloutWorkers:
    """How many rollout actors, and where Ray runs (``Parallel(workers=n)``: a local Ray with ``n`` CPUs).

    ``name_prefix`` names the actors ``<prefix><worker>-<start>`` (start 0, then 1 for its first replacement...),
    so that they can be found in ``ray list actors`` or with ``ray.get_actor``.
    """

    num_workers: int
    parallel: Parallel
    name_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"rollout workers must be >= 1, got {self.num_workers}")


class _MeanRecorder(Logger):
    """A writer-less logger that remembers every ``record_mean`` call, to replay them in the learner's logger."""

    def __init__(self) -> None:
        super().__init__([])
        self.calls: list[tuple[str, float]] = []

    def record_mean(self, key: str, value: float) -> None:
        """Remember ``(key, value)``."""
        self.calls.append((key, float(value)))


class RolloutWorker:
    """A Ray actor: environments ``first .. first + len(env_fns) - 1`` of the run, and a copy of the policy."""

    def __init__(self, cfg: Any, env_fns: Sequence[Callable[[], gym.Env]], first: int, model: Any,
                 obs_dim: int, action_dim: int, info_keys: Sequence[str]) -> None:
        from rlserve.rl.ppo import _EnvRunner

        torch.set_num_threads(1)
        self.cfg, self.info_keys, self.action_dim = cfg, tuple(info_keys), action_dim
        self.runner = _EnvRunner(env_fns, cfg.seed, first_index=first)
        self.model = model  # the learner's network (a copy): the weights arrive with every rollout
        self.obs_raw = np.zeros((len(env_fns), obs_dim))

    def restore(self, episodes: list[int], actions: list[list[int]], ep_return: list[float],
                ep_len: list[int]) -> None:
        """Bring every environment to the learner's bookkeeping by replaying its episode's actions."""
        self.runner.episode = list(episodes)
        for i, acts in enumerate(actions):
            self.obs_raw[i] = self.runner.replay(i, list(acts))
        self.runner.ep_return = np.asarray(ep_return, np.float64)
        self.runner.ep_len = np.asarray(ep_len, np.int64)

    def rollout(self, weights: dict[str, torch.Tensor], obs_norm: Any, ret_scaler: dict[str, Any],
                hxs: torch.Tensor, masks: torch.Tensor, seed: int) -> dict[str, Any]:
        """``ppo.num_steps`` lockstep steps of this worker's environments under ``weights`` and the learner's frozen
        normaliser ``obs_norm`` (a copy); the segment back."""
        from rlserve.rl.ppo import _step_envs
        from rlserve.rl.temperature import TemperatureController

        cfg, p, n = self.cfg, self.cfg.ppo, len(self.runner.envs)
        self.model.load_state_dict(weights)
        self.model.eval()
        scaler = ReturnScaler(n)
        scaler.load_state_dict(ret_scaler)
        temp = TemperatureController(cfg.temperature.base_temperature)  # static temperature (checked by the pool)
        buffer = RolloutBuffer(p.num_steps, n, self.obs_raw.shape[1], self.action_dim,
                               (hxs.shape[0], hxs.shape[2]), p.gamma, p.gae_lambda)
        log = _MeanRecorder()
        torch.manual_seed(seed)
        with torch.no_grad():
            for _ in range(p.num_steps):
                self.obs_raw, hxs, masks = _step_envs(cfg, self.runner, self.model, buffer, self.obs_raw, hxs, masks,
                                                      obs_norm, scaler, temp, log, self.info_keys)
            obs_t = torch.as_tensor(obs_norm.normalize(self.obs_raw))
            _, _, last_values, _, _ = self.model.act_value(obs_t, hxs, masks)
        return {"segment": {k: getattr(buffer, k) for k in SEGMENT_FIELDS}, "last_values": last_values,
                "hxs": hxs, "masks": masks, "returns": scaler.returns, "means": log.calls,
                "episodes": list(self.runner.episode), "actions": [list(a) for a in self.runner.actions],
                "ep_return": self.runner.ep_return.tolist(), "ep_len": self.runner.ep_len.tolist()}


class RolloutPool:
    """The learner's side: one actor per slice of environments, replaced when it dies."""

    def __init__(self, spec: RolloutWorkers, cfg: Any, env_fns: Sequence[Callable[[], gym.Env]], obs_dim: int,
                 action_dim: int, info_keys: Sequence[str]) -> None:
        if cfg.temperature.enable_dynamic_temperature:
            raise ConfigError("rollout workers need a static temperature (temperature.enable_dynamic_temperature: "
                              "false): the dynamic one is a single controller fed by every environment in step order")
        n = len(env_fns)
        if spec.num_workers > n:
            raise ConfigError(f"{spec.num_workers} rollout workers for {n} environments: at most one worker per "
                              "environment (raise ppo.num_envs)")
        self.ray = ensure_ray(spec.parallel)
        self.cfg, self.spec = cfg, spec
        bounds = np.linspace(0, n, spec.num_workers + 1).round().astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._args = (cfg, list(env_fns), obs_dim, action_dim, tuple(info_keys))
        self._model: Any = None  # a copy of the learner's network, for new actors
        self._actor_cls = self.ray.remote(num_cpus=1, max_restarts=0)(RolloutWorker)
        self.actors: list[Any] = [None] * spec.num_workers
        self.starts = [0] * spec.num_workers
        self.replacements = 0

    def _start(self, k: int, runner: Any) -> None:
        """(Re)start worker ``k`` and restore its environments from the learner's bookkeeping ``runner``."""
        cfg, env_fns, obs_dim, action_dim, info_keys = self._args
        s = self.slices[k]
        options = {"name": f"{self.spec.name_prefix}{k}-{self.starts[k]}"} if self.spec.name_prefix else {}
        self.starts[k] += 1
        actor = self._actor_cls.options(**options).remote(cfg, env_fns[s], s.start, self._model, obs_dim, action_dim,
                                                          info_keys)
        actor.restore.remote(runner.episode[s], [list(a) for a in runner.actions[s]], runner.ep_return[s].tolist(),
                             runner.ep_len[s].tolist())
        self.actors[k] = actor

    def collect(self, runner: Any, model: torch.nn.Module, obs_norm: Any, ret_scaler: ReturnScaler,
                buffer: RolloutBuffer, hxs: torch.Tensor, masks: torch.Tensor, update: int,
                logger: Logger) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fill ``buffer`` with one rollout of every worker; returns (last values, hidden state, masks).

        ``runner`` (the learner's :class:`~rlserve.rl.ppo._EnvRunner`) is updated with the environments'
        bookkeeping, so checkpoints and worker replacement see the state after this rollout.
        """
        ray = self.ray
        if self._model is None:
            self._model = copy.deepcopy(model)
        for k, actor in enumerate(self.actors):
            if actor is None:
                self._start(k, runner)
        weights = ray.put({k: v.detach().clone() for k, v in model.state_dict().items()})
        norm_state = ray.put(obs_norm)

        def submit(k: int) -> Any:
            s = self.slices[k]
            scaler = copy.deepcopy(ret_scaler.state_dict())
            scaler["returns"] = scaler["returns"][s]
            seed = int(np.random.SeedSequence([self.cfg.seed, k, update]).generate_state(1)[0])
            return self.actors[k].rollout.remote(weights, norm_state, scaler, hxs[:, s].clone(), masks[s].clone(),
                                                 seed)

        refs = [submit(k) for k in range(len(self.actors))]
        results: list[dict[str, Any]] = []
        for k in range(len(self.actors)):
            for attempt in range(MAX_REPLACEMENTS_PER_UPDATE + 1):
                try:
                    results.append(ray.get(refs[k]))
                    break
                except ray.exceptions.RayActorError as exc:  # the worker died: replace it, redo its rollout
                    if attempt == MAX_REPLACEMENTS_PER_UPDATE:
                        raise BackendError(f"rollout worker {k} died {attempt + 1} times in update {update}: "
                                           f"{exc}".splitlines()[0]) from None
                    self.replacements += 1
                    self._start(k, runner)
                    refs[k] = submit(k)
        new_hxs, new_masks = hxs.clone(), masks.clone()
        last_values = torch.zeros(len(runner.envs))
        for s, res in zip(self.slices, results, strict=True):
            for name, dim in SEGMENT_FIELDS.items():
                index = (slice(None),) * dim + (s,)
                getattr(buffer, name)[index] = res["segment"][name]
            new_hxs[:, s], new_masks[s], last_values[s] = res["hxs"], res["masks"], res["last_values"]
            ret_scaler.returns[s] = res["returns"]
            runner.episode[s] = res["episodes"]
            runner.actions[s] = res["actions"]
            runner.ep_return[s], runner.ep_len[s] = res["ep_return"], res["ep_len"]
            for key, value in res["means"]:
                logger.record_mean(key, value)
        buffer.pos = buffer.num_steps
        return last_values, new_hxs, new_masks

    def close(self) -> None:
        """Stop every worker."""
        for actor in self.actors:
            if actor is not None:
                self.ray.kill(actor)
        self.actors = [None] * len(self.actors)
