"""``EnergyEnv``: a gymnasium environment in which one decision = one (cap, clock) pair for one control interval.

An episode is one workload drawn from a scenario (one server) for the episode's seed, optionally with its load
scaled by a factor drawn from ``load_scale`` and, for the conditional block-size scheme, a KV block size drawn
from ``block_sizes``. Each step applies the action, simulates ``interval_s`` seconds (arrivals included) and
returns the observation of :class:`~rlserve.policies.energy.state.EnergyStateBuilder` and the reward of the
interval (:mod:`rlserve.envs.energy_reward`).

Serving never ends by itself, so no step is terminal: the episode is *truncated* when the workload has arrived
and the server has drained, or at ``max_episode_s``; learners bootstrap from the last observation.

``info["cost"]`` is the SLO budget overspent in the step, ``misses - (1 - slo_target) * arrivals``: a
constrained learner (``DQNConfig.lagrangian``) keeps its mean at or below 0, i.e. SLO attainment >= the target.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import gymnasium as gym
import numpy as np
from pydantic import Field

from rlserve.envs.energy_reward import RewardFn, make_reward
from rlserve.envs.energy_sim import ControlledServer
from rlserve.errors import ConfigError
from rlserve.perf import get_gpu
from rlserve.policies.energy.action_space import DEFAULT_NUM_CLOCKS, SEED_CAPS, ActionSpace
from rlserve.policies.energy.state import EnergyStateBuilder, EnergyStateConfig
from rlserve.scenario import Scenario, load_scenario
from rlserve.sim import ReplicaConfig, build_perf_model
from rlserve.validation import parse_config
from rlserve.workload.request import Workload

#: Workload seeds drawn for training episodes are >= this; evaluation uses seeds below it (held out).
TRAIN_WORKLOAD_SEED_MIN = 2**20


@dataclass(frozen=True)
class EnergyEnvConfig:
    """What an :class:`EnergyEnv` simulates, observes and rewards (the ``env:`` section of a training config)."""

    scenarios: tuple[str, ...] = ("energy_steady",)  # names or YAML paths; one is drawn per episode
    interval_s: float = 1.0
    max_episode_s: float = 900.0
    load_scale: tuple[float, float] = (1.0, 1.0)  # arrival-rate factor drawn uniformly per episode
    block_sizes: tuple[Annotated[int, Field(ge=1)], ...] = ()  # empty: the scenario's; several: drawn per episode
    caps: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = SEED_CAPS
    num_clocks: Annotated[int, Field(ge=1)] = DEFAULT_NUM_CLOCKS
    lowest_clock_mhz: float | None = None
    reward: str = "energy_per_token"
    slo_target: float = 0.99  # attainment the cost in info["cost"] is measured against
    reward_params: Mapping[str, float] = field(default_factory=dict)
    state: EnergyStateConfig = field(default_factory=EnergyStateConfig)

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ConfigError("env.scenarios needs at least one scenario")
        if not (self.interval_s > 0 and self.max_episode_s >= self.interval_s):
            raise ConfigError("env.interval_s must be > 0 and env.max_episode_s >= interval_s")
        lo, hi = self.load_scale
        if not 0 < lo <= hi:
            raise ConfigError(f"env.load_scale must be [low, high] with 0 < low <= high, got {list(self.load_scale)}")
        if not 0 < self.slo_target <= 1:
            raise ConfigError(f"env.slo_target must be in (0, 1], got {self.slo_target}")
        if len(self.block_sizes) > 1 and not self.state.block_size_feature:
            raise ConfigError("several env.block_sizes (the conditional scheme) need state.block_size_feature: true, "
                              "or the policy cannot tell the servers apart")

    @staticmethod
    def normalized(d: Mapping[str, Any]) -> dict[str, Any]:
        """``d`` with a single scenario name accepted where a list is expected (``scenarios: energy_steady``)."""
        d = dict(d)
        if isinstance(d.get("scenarios"), str):
            d["scenarios"] = [d["scenarios"]]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "env") -> EnergyEnvConfig:
        """Build from a YAML mapping, validated (:func:`rlserve.validation.parse_config`)."""
        return parse_config(cls, cls.normalized(d), source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (checkpoint metadata, result files)."""
        out = dataclasses.asdict(self)
        out["reward_params"] = dict(self.reward_params)
        return out


def build_action_space(scenario: Scenario, cfg: EnergyEnvConfig) -> ActionSpace:
    """The action space for the scenario's GPU: the config's caps x clocks spread over the GPU's range."""
    gpu = get_gpu(scenario.cluster.replicas[0].gpu)
    return ActionSpace.for_gpu(gpu.sm_clock_min_mhz, gpu.sm_clock_max_mhz, gpu.sm_clock_step_mhz,
                               num_clocks=cfg.num_clocks, lowest_clock_mhz=cfg.lowest_clock_mhz,
                               concurrency_caps=cfg.caps)


def with_block_size(scenario: Scenario, block_size: int) -> Scenario:
    """The scenario with its server's KV block size changed (vLLM fixes it at start-up: one server per size).

    A fixed ``num_gpu_blocks`` is rescaled so the KV memory in tokens stays the same, as in vLLM, where the
    memory budget is fixed and the block count follows from the block size.
    """
    def one(r: ReplicaConfig) -> ReplicaConfig:
        blocks = None if r.num_gpu_blocks is None else max(1, r.num_gpu_blocks * r.block_size // int(block_size))
        return dataclasses.replace(r, block_size=int(block_size), num_gpu_blocks=blocks)

    replicas = tuple(one(r) for r in scenario.cluster.replicas)
    return dataclasses.replace(scenario, cluster=dataclasses.replace(scenario.cluster, replicas=replicas),
                               name=f"{scenario.name}@bs{block_size}")


def replica_max_power_w(replica: ReplicaConfig) -> float:
    """The replica's power limit: its GPUs' TDP times the tensor-parallel degree."""
    return get_gpu(replica.gpu).max_power_w * replica.tp


def scale_load(workload: Workload, factor: float) -> Workload:
    """The same requests arriving ``factor`` times as fast (inter-arrival gaps divided by ``factor``)."""
    if factor == 1.0:
        return workload
    return dataclasses.replace(workload, arrival_s=workload.arrival_s / factor)


def default_reward_params(name: str, scenario: Scenario, interval_s: float) -> dict[str, float]:
    """Reward parameters derived from the scenario when the config leaves them out.

    ``energy_per_token``: ``energy_scale_j`` = the replica's max power x interval; ``ept_ref_j`` = the energy of
    a generated token in a 32-sequence decode step at 1k context at the maximum clock (a typical operating
    point, so rewards centre near 0). ``greendls``: ``slo_delay_s`` = the E2E SLO, else TTFT + 200 x TPOT.
    """
    if name == "energy_per_token":
        replica = scenario.cluster.replicas[0]
        _, _, e0, e1 = build_perf_model(replica).decode_coeffs(32)
        return {"energy_scale_j": replica_max_power_w(replica) * interval_s, "ept_ref_j": (e0 + e1 * 32 * 1024) / 32}
    if name == "greendls":
        slo = scenario.slo
        if slo.e2e_s is not None:
            return {"slo_delay_s": slo.e2e_s}
        return {"slo_delay_s": (slo.ttft_s or 1.0) + 200 * (slo.tpot_s or 0.05)}
    return {}


class EnergyEnv(gym.Env[np.ndarray, np.int64]):
    """One simulated server; the agent picks a (cap, clock) action every ``interval_s`` seconds."""

    metadata = {"render_modes": []}
    episode_metric_names = ("energy_per_output_token_j", "slo_miss_rate", "mean_sm_clock_mhz",
                            "mean_concurrency_cap", "load_scale", "decisions")

    def __init__(self, config: EnergyEnvConfig | None = None) -> None:
        self.config = cfg = config or EnergyEnvConfig()
        self.scenarios = [load_scenario(s) for s in cfg.scenarios]
        gpus = {s.cluster.replicas[0].gpu for s in self.scenarios}
        if len(gpus) > 1:
            raise ConfigError(f"env.scenarios must share one GPU type (one action space), got {sorted(gpus)}")
        if cfg.state.kv_block_features and any(s.cluster.replicas[0].enable_prefix_caching for s in self.scenarios):
            warnings.warn("state.kv_block_features with prefix caching on: cached blocks keep usage near 0 (the "
                          "seed's finding), so these features carry little; they are meant for servers without it",
                          stacklevel=2)
        self.action_space_def = build_action_space(self.scenarios[0], cfg)
        self.action_space = gym.spaces.Discrete(self.action_space_def.n_actions)
        max_power_w = max(replica_max_power_w(s.cluster.replicas[0]) for s in self.scenarios)
        self._low, self._high = observation_bounds(cfg.state, max_power_w)
        self.observation_space = gym.spaces.Box(self._low, self._high, dtype=np.float32)
        self.reward_fns: list[RewardFn] = [
            make_reward(cfg.reward, **{**default_reward_params(cfg.reward, s, cfg.interval_s), **cfg.reward_params})
            for s in self.scenarios]
        self._server: ControlledServer | None = None
        self._state: EnergyStateBuilder | None = None
        self._reward: RewardFn = self.reward_fns[0]
        self._episode: dict[str, float] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Draw a scenario, load factor and block size from ``seed``, build its workload, start at time 0."""
        super().reset(seed=seed)
        rng = self.np_random
        cfg = self.config
        k = int(rng.integers(len(self.scenarios)))
        scenario = self.scenarios[k]
        self._reward = self.reward_fns[k]
        factor = float(rng.uniform(*cfg.load_scale))
        if cfg.block_sizes:
            scenario = with_block_size(scenario, int(cfg.block_sizes[int(rng.integers(len(cfg.block_sizes)))]))
        cluster = scenario.cluster
        # training workload seeds come from [2**20, 2**31): evaluation seeds below 2**20 are never trained on
        workload = scale_load(scenario.build_workload(int(rng.integers(TRAIN_WORKLOAD_SEED_MIN, 2**31))), factor)
        self._server = ControlledServer(cluster, workload, scenario.slo, interval_s=cfg.interval_s,
                                        transition=scenario.clock_transition)
        self._state = EnergyStateBuilder(cfg.state, scenario.slo, self.action_space_def)
        self._episode = {"energy_j": 0.0, "tokens": 0.0, "misses": 0.0, "clock": 0.0, "cap": 0.0, "steps": 0.0,
                         "load_scale": factor}
        obs = self._observe(self._server.snapshot())
        return obs, {"scenario": scenario.name, "load_scale": factor}

    def _observe(self, snapshot: Any) -> np.ndarray:
        assert self._state is not None  # internal: reset() creates it
        obs = self._state.build(snapshot, 0)
        return np.clip(obs, self._low, self._high)

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the action for one interval; reward and observation describe that interval."""
        if self._server is None:
            raise ConfigError("call reset() before step()")
        server = self._server
        applied = server.apply(self.action_space_def.decode_action(int(action)))
        snap, outcome = server.step()
        obs = self._observe(snap)
        parts = self._reward(outcome)
        ep = self._episode
        ep["energy_j"] += outcome.energy_j
        ep["tokens"] += outcome.tokens
        ep["misses"] += outcome.slo_misses
        ep["clock"] += applied.sm_clock_mhz
        ep["cap"] += applied.concurrency_cap
        ep["steps"] += 1
        truncated = server.drained or server.now_s >= self.config.max_episode_s
        cost = outcome.slo_misses - (1.0 - self.config.slo_target) * outcome.arrivals
        info: dict[str, Any] = {"reward_components": parts.components, "sm_clock_mhz": applied.sm_clock_mhz,
                                "concurrency_cap": applied.concurrency_cap, "outcome": outcome, "cost": cost}
        if truncated:
            info["episode_metrics"] = self.episode_metrics()
        return obs, float(parts.total), False, truncated, info

    def episode_metrics(self) -> dict[str, float]:
        """Energy per generated token, SLO miss rate (of the requests arrived) and mean settings so far."""
        ep = self._episode
        steps = max(ep["steps"], 1.0)
        return {"energy_per_output_token_j": ep["energy_j"] / ep["tokens"] if ep["tokens"] else math.nan,
                "slo_miss_rate": ep["misses"] / max(self._server.arrived if self._server else 0, 1),
                "mean_sm_clock_mhz": ep["clock"] / steps, "mean_concurrency_cap": ep["cap"] / steps,
                "load_scale": ep["load_scale"], "decisions": ep["steps"]}


def observation_bounds(cfg: EnergyStateConfig, max_power_w: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature bounds of the observation (see :mod:`rlserve.policies.energy.state` for each feature)."""
    low = np.zeros(cfg.dim, np.float32)
    high = np.ones(cfg.dim, np.float32)
    high[0] = max(1.0, max_power_w / 1000.0)  # GPU power / 1000 W: several GPUs can exceed 1 kW
    if cfg.extras:
        low[10:12] = -1.0  # TTFT and TPOT slack
        high[12] = 2.0  # oldest wait / TTFT SLO
    if cfg.history:
        h = cfg.history_offset
        low[h + 3] = low[h + 4] = low[h + 5] = -1.0  # queue growth, TTFT and TPOT slack averages
        high[h + 6] = 2.0  # prefill backlog / TTFT SLO
    if cfg.block_size_feature:
        high[cfg.dim - 1 - 2 * cfg.kv_block_features] = 1024 / 64  # vLLM's largest block size / 64
    return low, high
