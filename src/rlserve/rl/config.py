"""One YAML schema for training the PPO router: the seed's ``PPOGlobalSchedulerModularConfig`` groups, each field once.

The seed declared several fields twice with different defaults and documented options that did not exist. Here
every field lives in exactly one dataclass, has one default, and is documented where it is declared; a YAML file
overrides any subset::

    network:   {hidden_size: 64}
    ppo:       {lr: 3.0e-4, num_envs: 4}
    reward:    {mode: cost}
    warm_start: {teacher: least_expected_latency}

Unknown keys, wrongly typed values and values out of the range declared on the field (``Annotated[int, Ge1]``)
raise :class:`~rlserve.errors.ConfigError` naming the file and the field path (:mod:`rlserve.validation`, the
one validation layer of every config file), so a typo never silently falls back to a default and a value never
has a wrong effect (``max_grad_norm: -1`` would turn clipping into gradient ascent, ``hidden_size: 0`` would train
a zero-width net). Defaults that differ from the seed say why in their comment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import Field

from rlserve.errors import ConfigError
from rlserve.validation import parse_config

Ge0 = Field(ge=0)
Ge1 = Field(ge=1)
Pos = Field(gt=0)
NonNeg = Field(ge=0)
Unit = Field(ge=0, le=1)


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
    hidden_size: Annotated[int, Ge1] = 64
    """Width of hidden layers and GRUs (seed: 128; 64 learns as well here at half the CPU cost)."""
    proj_dim: Annotated[int, Ge1] = 128
    """Middle width of the feature projection LayerNorm → Linear → GELU → Linear."""
    layer_n: Annotated[int, Ge0] = 1
    """The shared MLP has 1 + layer_n layers (seed ``layer_N``: 2)."""
    gru_layers: Annotated[int, Ge1] = 1
    """Stacked GRU layers in each of the actor and the critic (seed: 2)."""
    bounded_logits: bool = False
    """The seed's LayerNorm → Tanh logit head; off because it caps the policy's confidence (defect 2)."""
    logit_scale: Annotated[float, Pos] = 5.0
    """Multiplier of the bounded head's output when it is on."""


@dataclass
class PPOConfig:
    """PPO hyper-parameters (CleanRL/SB3 names where the seed had none)."""

    lr: float = 3e-4
    """Adam learning rate (seed: 5e-3, far too large for a fine-tune from behaviour cloning)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    adam_eps: Annotated[float, Pos] = 1e-5
    """Adam epsilon (PPO implementation-details value, not torch's 1e-8)."""
    gamma: float = 0.99
    """Discount (seed: 0.95). Routing effects last as long as the queue they create: tens of decisions."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_ratio: float = 0.2
    """Policy ratio clip (seed: 0.15)."""
    value_clip: Annotated[float, Pos] | None = 0.2
    """Clip value updates to old_value ± value_clip; null disables value clipping."""
    entropy_coef: Annotated[float, NonNeg] = 0.003
    """Entropy bonus weight (seed: 0.25, which holds the policy near uniform)."""
    value_coef: Annotated[float, NonNeg] = 0.5
    """Value loss weight."""
    kl_coef: Annotated[float, NonNeg] = 0.0
    """Penalty weight on KL(rollout policy || current policy), exact over the categorical."""
    target_kl: Annotated[float, Pos] | None = 0.03
    """Stop the epoch loop of an update once the mean KL to the rollout policy exceeds this; null = never."""
    max_grad_norm: Annotated[float, Pos] = 0.5
    """Global gradient-norm clip."""
    epochs: Annotated[int, Ge1] = 4
    """Passes over each rollout (seed: 8)."""
    num_envs: Annotated[int, Ge1] = 8
    """Environments stepped in lockstep (batched forward passes; more environments = more scenarios per update)."""
    num_steps: Annotated[int, Ge1] = 128
    """Steps per environment per rollout (seed ``rollout_len``: 32, too short for a stable advantage estimate)."""
    chunk_len: Annotated[int, Ge1] = 32
    """Length of the sequence chunks recurrent minibatches are made of; must divide num_steps."""
    num_minibatches: Annotated[int, Ge1] = 4
    """Minibatches per epoch (each holds num_envs * num_steps / chunk_len / num_minibatches whole chunks)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    critic_warmup_updates: Annotated[int, Ge0] = 0
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
    cost_scale_s: Annotated[float, Pos] = 1.0
    """Cost mode: request-seconds per unit of (negative) reward."""
    throughput_target: Annotated[float, Pos] = 0.05
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
    sigma: Annotated[float, Pos] = 1.0
    """Hybrid mode: width (seconds) of the logistic penalty."""
    balance_weight: float = 0.0
    """Weight of the load-balance penalty (coefficient of variation of outstanding requests, all modes). Off by
    default: on heterogeneous clusters the best routing is deliberately unbalanced in request counts."""


@dataclass
class StateConfig:
    """Observation layout (see :mod:`rlserve.envs.router_state`; every feature is documented there)."""

    enable_enhanced_features: bool = True
    """Add the 8 temporal features per replica and the 7 global ones."""
    max_queue_requests_per_replica: Annotated[int, Ge0] = 0
    """K: requests per replica whose 7 features are included (oldest first, zero-padded). Seed: 4. Off by default:
    a router only sees queue entries when its world fills the snapshot's queue view (proxy ``--queue-k``), and the
    per-replica work features already summarise the queue; turn on for worlds that provide them."""
    state_history_window: Annotated[int, Ge1] = 5
    """Snapshots kept for trend/variance/peak features."""
    qps_window: Annotated[int, Ge1] = 10
    """Arrivals over which the current QPS is measured."""
    ema_alpha: Annotated[float, Field(gt=0, le=1)] = 0.3
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
    norm_clip: Annotated[float, Pos] = 10.0
    """Standardised features are clipped to [-norm_clip, norm_clip]."""
    norm_eps: Annotated[float, Pos] = 1e-2
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
    smoothing: Annotated[float, Field(gt=0, le=1)] = 0.1
    """EMA weight of each new target temperature (damps the seed's pulsing)."""


@dataclass
class WarmStartConfig:
    """Statistics stabilisation, demonstrations, behaviour cloning, and the KL term to the BC policy."""

    stabilization_steps: Annotated[int, Ge0] = 4096
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
    lookahead_ttft_weight: Annotated[float, NonNeg] = 1.0
    """Weight of first-token times in the ``lookahead`` teacher's cost (completion times + weight x first-token
    times); larger values make its demonstrations protect the TTFT tail more."""
    teacher_margin: Annotated[float, NonNeg] = 0.0
    """Relative cost advantage another candidate needs to replace the first teacher for an episode (0 = plain
    hindsight best). A 5% margin (fewer teacher switches on near-ties) scored worse in our validation runs."""
    bc_epochs: Annotated[int, Ge0] = 10
    """Epochs of behaviour cloning over the demonstrations."""
    bc_lr: Annotated[float, Pos] = 1e-3
    """Adam learning rate of behaviour cloning."""
    bc_minibatch_chunks: Annotated[int, Ge1] = 8
    """Sequence chunks (of ``ppo.chunk_len`` steps) per BC minibatch."""
    kl_ref_initial_coef: Annotated[float, NonNeg] = 0.5
    """Initial weight of KL(current || frozen BC policy) in the PPO loss."""
    kl_ref_final_coef: Annotated[float, NonNeg] = 0.2
    """Weight after the decay (kept above 0: with a weak anchor the policy drifted and got worse on homogeneous
    clusters in our runs)."""
    kl_ref_decay_updates: Annotated[int, Ge1] = 60
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
    checkpoint_interval: Annotated[int, Ge1] = 10
    """Updates between checkpoints (seed: 100)."""
    validation_interval: Annotated[int, Ge0] = 10
    """Updates between validations (scores on fixed validation scenarios; the best checkpoint becomes
    ``best.pt``). The behaviour-cloned policy is validated too, so PPO must beat it to be kept; 0 = never."""
    validation_scenarios: Annotated[int, Ge1] = 12
    """Randomised scenarios (drawn once from a fixed seed, never the benchmark's) in the validation set."""
    validation_requests: Annotated[int, Ge1] = 800
    """Requests per validation scenario."""


@dataclass
class EnvConfig:
    """The routing environment and the scenarios it samples."""

    episode_requests: Annotated[int, Field(ge=2)] = 512
    """M: requests per episode (one decision each)."""
    scenarios: Annotated[list[str], Field(min_length=1)] = field(default_factory=lambda: ["randomized"])
    """Scenario names or YAML paths sampled per episode; ``randomized`` draws a random 4-replica cluster and
    workload (see :mod:`rlserve.envs.scenario_sampler`)."""
    num_replicas: Annotated[int, Ge1] = 4
    """Flat network: the cluster size of ``randomized`` scenarios (the action space size)."""
    min_replicas: Annotated[int, Ge1] = 2
    """Replica-set network: the smallest cluster drawn by ``randomized`` (sizes are uniform in [min, max])."""
    max_replicas: Annotated[int, Ge1] = 16
    """Replica-set network: the largest cluster drawn, and the padded width of training observations (the trained
    network routes any size; this only bounds what it was trained on)."""
    holdout: list[str] = field(default_factory=lambda: ["code", "summarisation", "two_tier", "one_fast"])
    """Randomised scenario families never drawn in training (``envs.scenario_sampler.FAMILIES``): the benchmark
    reports on them separately, as the generalisation figure."""


@dataclass
class TrainConfig:
    """Everything ``rlserve train router`` needs, one group per concern."""

    total_updates: Annotated[int, Ge1] = 120
    """PPO updates (each collects ppo.num_envs * ppo.num_steps decisions)."""
    seed: Annotated[int, Ge0] = 0
    """Seed of every random stream (networks, environments, minibatch order)."""
    torch_threads: Annotated[int, Ge1] = 1
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


def from_dict(cls: type[T], data: dict[str, Any], source: str = "training config") -> T:
    """Build dataclass ``cls`` from a nested dict, validated (:func:`rlserve.validation.parse_config`)."""
    return parse_config(cls, data, source)


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
    if cfg.env.min_replicas > cfg.env.max_replicas:
        raise ConfigError("env: need min_replicas <= max_replicas")
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
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            why = str(exc).replace("\n", " ")
            raise ConfigError(f"cannot read training config {path}: {why}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"training config {path} must be a mapping of groups")
        data = loaded or {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return validate(from_dict(TrainConfig, data, str(path) if path is not None else "training config"))
