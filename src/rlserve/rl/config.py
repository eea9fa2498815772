"""One YAML schema for training the PPO router: the seed's ``PPOGlobalSchedulerModularConfig`` groups, each field once.

The seed declared several fields twice with different defaults and documented options that did not exist. Here
every field lives in exactly one dataclass, has one default, and is documented where it is declared; a YAML file
overrides any subset::

    network:   {hidden_size: 64}
    ppo:       {lr: 3.0e-4, num_envs: 4}
    reward:    {mode: cost}
    warm_start: {teacher: least_expected_latency}

Unknown keys and wrongly typed values raise :class:`~rlserve.errors.ConfigError` naming the field path, so a typo
never silently falls back to a default. Defaults that differ from the seed say why in their comment.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from rlserve.errors import ConfigError


@dataclass
class NetworkConfig:
    """Actor-critic architecture (see :mod:`rlserve.rl.actor_critic`)."""

    architecture: Literal["replica_set", "flat"] = "replica_set"
    """``replica_set``: the permutation-equivariant network (shared per-replica encoder, one logit per replica,
    any cluster size with one set of weights; a deviation from the seed, see docs/ppo_router.md). ``flat``: the
    seed's network over one flat vector, for exactly ``env.num_replicas`` replicas in a fixed order."""
    prior_feature: str | None = "latency_gap_s"
    """Replica-set network: the replica feature whose standardised value, times ``-prior_scale`` (learnable), is
    added to the replica's logit (the residual prior; the default is least-expected-latency's gap to the best
    replica, so the untrained policy routes like that heuristic). null = no prior."""
    prior_scale: float = 3.0
    """Initial weight of the residual prior (logits per standard deviation of the prior feature)."""
    zero_init_head: bool = True
    """Replica-set network: the learned correction of the logits starts at exactly 0 (else the 0.01-gain init)."""
    hidden_size: int = 64
    """Width of hidden layers and GRUs (seed: 128; 64 learns as well here at half the CPU cost)."""
    proj_dim: int = 128
    """Middle width of the feature projection LayerNorm → Linear → GELU → Linear."""
    layer_n: int = 1
    """The shared MLP has 1 + layer_n layers (seed ``layer_N``: 2)."""
    gru_layers: int = 1
    """Stacked GRU layers in each of the actor and the critic (seed: 2)."""
    bounded_logits: bool = False
    """The seed's LayerNorm → Tanh logit head; off because it caps the policy's confidence (defect 2)."""
    logit_scale: float = 5.0
    """Multiplier of the bounded head's output when it is on."""


@dataclass
class PPOConfig:
    """PPO hyper-parameters (CleanRL/SB3 names where the seed had none)."""

    lr: float = 3e-4
    """Adam learning rate (seed: 5e-3, far too large for a fine-tune from behaviour cloning)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    adam_eps: float = 1e-5
    """Adam epsilon (PPO implementation-details value, not torch's 1e-8)."""
    gamma: float = 0.99
    """Discount (seed: 0.95). Routing effects last as long as the queue they create: tens of decisions."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_ratio: float = 0.2
    """Policy ratio clip (seed: 0.15)."""
    value_clip: float | None = 0.2
    """Clip value updates to old_value ± value_clip; null disables value clipping."""
    entropy_coef: float = 0.003
    """Entropy bonus weight (seed: 0.25, which holds the policy near uniform)."""
    value_coef: float = 0.5
    """Value loss weight."""
    kl_coef: float = 0.0
    """Penalty weight on KL(rollout policy || current policy), exact over the categorical."""
    target_kl: float | None = 0.03
    """Stop the epoch loop of an update once the mean KL to the rollout policy exceeds this; null = never."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    epochs: int = 4
    """Passes over each rollout (seed: 8)."""
    num_envs: int = 8
    """Environments stepped in lockstep (batched forward passes; more environments = more scenarios per update)."""
    num_steps: int = 128
    """Steps per environment per rollout (seed ``rollout_len``: 32, too short for a stable advantage estimate)."""
    chunk_len: int = 32
    """Length of the sequence chunks recurrent minibatches are made of; must divide num_steps."""
    num_minibatches: int = 4
    """Minibatches per epoch (each holds num_envs * num_steps / chunk_len / num_minibatches whole chunks)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    critic_warmup_updates: int = 0
    """First updates that train only the value function (policy loss off), so a warm-started actor is not
    pushed around by a critic that has not yet learned the task's returns."""


@dataclass
class RewardConfig:
    """Reward of each routing decision (see :mod:`rlserve.envs.router_reward`; modes are documented there)."""

    mode: Literal["cost", "hybrid", "instant", "delta"] = "hybrid"
    """``hybrid`` (the seed's recommended mode, on per-interval metrics; its run validated best, narrowly),
    ``cost`` (Little's-law latency cost: the exact benchmark objective), ``instant`` or ``delta``."""
    ttft_weight: float = 1.0
    """Cost mode: weight of request-seconds spent waiting for the first token, added to request-seconds in
    the system (their sums over an episode are total TTFT and total E2E latency)."""
    cost_scale_s: float = 1.0
    """Cost mode: request-seconds per unit of (negative) reward."""
    throughput_target: float = 0.05
    """Seed modes: completions per second that count as score 1 in ``throughput / target``."""
    absolute_weight: float = 0.8
    """Hybrid mode: weight of the absolute score."""
    delta_weight: float = 0.2
    """Hybrid mode: weight of the change-of-metrics score."""
    alpha: float = 0.1
    """Hybrid mode: latency weight inside the absolute score."""
    beta: float = 1.0
    """Hybrid mode: weight of the normalised throughput change."""
    delta_latency_weight: float = 1.0
    """Hybrid mode: weight of the normalised latency change (the seed's second ``gamma``, renamed: one name per
    meaning)."""
    latency_weight: float = 1.0
    """Instant/delta modes: weight of the latency term."""
    latency_threshold_s: float = 6.0
    """Soft latency threshold (seconds) of the threshold and logistic penalties."""
    threshold_penalty_scale: float = 1.0
    """Instant/delta modes: scale of ``scale * (1 - exp(-(latency - threshold)))`` above the threshold."""
    kappa: float = 1.0
    """Hybrid mode: height of the logistic penalty ``kappa / (1 + exp(-(latency - threshold) / sigma))``."""
    sigma: float = 1.0
    """Hybrid mode: width (seconds) of the logistic penalty."""
    balance_weight: float = 0.0
    """Weight of the load-balance penalty (coefficient of variation of outstanding requests, all modes). Off by
    default: on heterogeneous clusters the best routing is deliberately unbalanced in request counts."""


@dataclass
class StateConfig:
    """Observation layout (see :mod:`rlserve.envs.router_state`; every feature is documented there)."""

    enable_enhanced_features: bool = True
    """Add the 8 temporal features per replica and the 7 global ones."""
    max_queue_requests_per_replica: int = 0
    """K: requests per replica whose 7 features are included (oldest first, zero-padded). Seed: 4. Off by default:
    a router only sees queue entries when its world fills the snapshot's queue view (proxy ``--queue-k``), and the
    per-replica work features already summarise the queue; turn on for worlds that provide them."""
    state_history_window: int = 5
    """Snapshots kept for trend/variance/peak features."""
    qps_window: int = 10
    """Arrivals over which the current QPS is measured."""
    ema_alpha: float = 0.3
    """Weight of the newest value in the exponential moving averages."""
    include_capability: bool = True
    """Per-replica relative decode/prefill speed and KV capacity (what a router needs on heterogeneous clusters)."""
    include_request: bool = True
    """The incoming request's prompt and output length."""
    include_work: bool = True
    """Per-replica seconds of queued work (pending prefill and decode tokens over the replica's speed), the
    request's own decode time there, the least-expected-latency estimate and its gap to the best replica."""
    include_prefix_kv: bool = False
    """Per replica: the expected prefix-cache hit as a fraction of the prompt and the KV demand over capacity (as
    least_expected_latency computes them), and the work features' latency estimate becomes that router's full one
    (expected output, prefix hit, KV demand). Off by default so that layouts trained before it keep their meaning;
    the shipped recipe turns it on."""
    norm_clip: float = 10.0
    """Standardised features are clipped to [-norm_clip, norm_clip]."""
    norm_eps: float = 1e-2
    """Variance floor of the running normaliser: a feature that barely varied during stabilisation (e.g. a
    capacity ratio that happened to be constant) maps to a bounded value instead of an outlier of 1/std."""


@dataclass
class TemperatureConfig:
    """Exploration temperature during training rollouts (never at inference)."""

    enable_dynamic_temperature: bool = False
    """Drive the rollout temperature by load pressure; off by default (fixed ``base_temperature``)."""
    base_temperature: float = 1.0
    """Temperature when there is no pressure (seed: 1.5, which flattens a BC-initialised policy)."""
    min_temperature: float = 0.8
    """Lower clamp."""
    max_temperature: float = 3.0
    """Upper clamp."""
    qps_sensitivity: float = 0.3
    """Weight of the QPS pressure."""
    latency_sensitivity: float = 0.5
    """Weight of the latency pressure."""
    balance_sensitivity: float = 0.0
    """Weight of the load imbalance."""
    smoothing: float = 0.1
    """EMA weight of each new target temperature (damps the seed's pulsing)."""


@dataclass
class WarmStartConfig:
    """Statistics stabilisation, demonstrations, behaviour cloning, and the KL term to the BC policy."""

    stabilization_steps: int = 4096
    """Decisions (per environment) that only update the observation/reward normalisers before any learning."""
    enabled: bool = True
    """Behaviour-clone the teacher before PPO (demonstrations are recorded during stabilisation)."""
    behaviour: list[str] = field(default_factory=lambda: ["teacher", "random", "teacher", "round_robin"])
    """Routers that drive the cluster while demonstrations are recorded, one per episode in turn (``teacher`` =
    the episode's teacher); random and round robin create the imbalanced situations a good router never visits."""
    teacher: list[str] = field(default_factory=lambda: ["least_expected_latency", "least_outstanding",
                                                        "join_shortest_queue", "least_kv", "power_of_two"])
    """Candidate teachers. Each episode is labelled by the first one unless another serves that episode's workload
    better (in hindsight, mean E2E + mean TTFT) by more than ``teacher_margin``. One name = always that router.
    Besides router names, ``lookahead`` is the clairvoyant planner of ``rlserve.sim.lookahead`` (it sees true output
    lengths, so it can teach in simulation but never route for real; docs/ppo_router.md has its results)."""
    lookahead_ttft_weight: float = 1.0
    """Weight of first-token times in the ``lookahead`` teacher's cost (completion times + weight x first-token
    times); larger values make its demonstrations protect the TTFT tail more."""
    teacher_margin: float = 0.0
    """Relative cost advantage another candidate needs to replace the first teacher for an episode (0 = plain
    hindsight best). A 5% margin (fewer teacher switches on near-ties) scored worse in our validation runs."""
    bc_epochs: int = 10
    """Epochs of behaviour cloning over the demonstrations."""
    bc_lr: float = 1e-3
    """Adam learning rate of behaviour cloning."""
    bc_minibatch_chunks: int = 8
    """Sequence chunks (of ``ppo.chunk_len`` steps) per BC minibatch."""
    kl_ref_initial_coef: float = 0.5
    """Initial weight of KL(current || frozen BC policy) in the PPO loss."""
    kl_ref_final_coef: float = 0.2
    """Weight after the decay (kept above 0: with a weak anchor the policy drifted and got worse on homogeneous
    clusters in our runs)."""
    kl_ref_decay_updates: int = 60
    """Updates over which the weight decays linearly from initial to final."""


@dataclass
class MonitoringConfig:
    """TensorBoard and metrics export."""

    enable_tensorboard: bool = True
    """Write TensorBoard event files under ``OUT/tb``."""
    metrics_export: Literal["csv", "parquet", "none"] = "csv"
    """Per-update metrics file with a fixed schema (``OUT/metrics.csv`` or ``.parquet``)."""
    stdout: bool = False
    """Print every update's metrics (the CLI shows a progress bar instead)."""


@dataclass
class CheckpointConfig:
    """Checkpoint writing."""

    enable_checkpoints: bool = True
    """Write ``OUT/checkpoint.pt`` (atomically) during training and at the end."""
    checkpoint_interval: int = 10
    """Updates between checkpoints (seed: 100)."""
    validation_interval: int = 10
    """Updates between validations (scores on fixed validation scenarios; the best checkpoint becomes
    ``best.pt``). The behaviour-cloned policy is validated too, so PPO must beat it to be kept; 0 = never."""
    validation_scenarios: int = 12
    """Randomised scenarios (drawn once from a fixed seed, never the benchmark's) in the validation set."""
    validation_requests: int = 800
    """Requests per validation scenario."""


@dataclass
class EnvConfig:
    """The routing environment and the scenarios it samples."""

    episode_requests: int = 512
    """M: requests per episode (one decision each)."""
    scenarios: list[str] = field(default_factory=lambda: ["randomized"])
    """Scenario names or YAML paths sampled per episode; ``randomized`` draws a random 4-replica cluster and
    workload (see :mod:`rlserve.envs.scenario_sampler`)."""
    num_replicas: int = 4
    """Flat network: the cluster size of ``randomized`` scenarios (the action space size)."""
    min_replicas: int = 2
    """Replica-set network: the smallest cluster drawn by ``randomized`` (sizes are uniform in [min, max])."""
    max_replicas: int = 16
    """Replica-set network: the largest cluster drawn, and the padded width of training observations (the trained
    network routes any size; this only bounds what it was trained on)."""
    holdout: list[str] = field(default_factory=lambda: ["code", "summarisation", "two_tier", "one_fast"])
    """Randomised scenario families never drawn in training (``envs.scenario_sampler.FAMILIES``): the benchmark
    reports on them separately, as the generalisation figure."""


@dataclass
class TrainConfig:
    """Everything ``rlserve train router`` needs, one group per concern."""

    total_updates: int = 120
    """PPO updates (each collects ppo.num_envs * ppo.num_steps decisions)."""
    seed: int = 0
    """Seed of every random stream (networks, environments, minibatch order)."""
    torch_threads: int = 1
    """CPU threads for torch (small networks gain nothing from more; the machine is shared)."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    state: StateConfig = field(default_factory=StateConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    env: EnvConfig = field(default_factory=EnvConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)


T = TypeVar("T")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping of fields, got {value!r}")
        return from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")  # a schema bug, reported like a config error


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys and bad types raise ConfigError with the path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or "config"
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check cross-field constraints that single types cannot express."""
    p = cfg.ppo
    if p.num_steps % p.chunk_len:
        raise ConfigError(f"ppo.num_steps ({p.num_steps}) must be a multiple of ppo.chunk_len ({p.chunk_len})")
    chunks = p.num_envs * p.num_steps // p.chunk_len
    if not 1 <= p.num_minibatches <= chunks:
        raise ConfigError(f"ppo.num_minibatches must be in [1, {chunks}] (sequence chunks per rollout)")
    for name in ("lr", "gamma", "gae_lambda", "clip_ratio"):
        if not 0 < getattr(p, name) <= 1:
            raise ConfigError(f"ppo.{name} must be in (0, 1], got {getattr(p, name)}")
    t = cfg.temperature
    if not 0 < t.min_temperature <= t.base_temperature <= t.max_temperature:
        raise ConfigError("temperature: need 0 < min_temperature <= base_temperature <= max_temperature")
    if not 1 <= cfg.env.min_replicas <= cfg.env.max_replicas:
        raise ConfigError("env: need 1 <= min_replicas <= max_replicas")
    if cfg.total_updates < 1 or cfg.env.episode_requests < 2:
        raise ConfigError("total_updates must be >= 1 and env.episode_requests >= 2")
    return cfg


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, overridden by a YAML file, overridden by ``overrides`` (same nesting); validated.

    Raises:
        ConfigError: unreadable YAML, unknown keys, wrong types, inconsistent values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"training config {path} must be a mapping of groups")
        data = loaded or {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return validate(from_dict(TrainConfig, data))
