"""Training the DQN energy controller: one YAML config (``env:`` + ``dqn:``) -> a checkpoint directory.

The checkpoint's metadata carries the action space, the observation config and the network widths, which is all
:class:`~rlserve.policies.energy.dqn_controller.DQNController` needs to rebuild the policy anywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import yaml
from pydantic import Field

from rlserve.envs.energy_env import EnergyEnv, EnergyEnvConfig, build_action_space, with_block_size
from rlserve.envs.energy_eval import control_context, run_metrics
from rlserve.envs.energy_sim import run_controller
from rlserve.errors import ConfigError, InputError
from rlserve.outputs import check_output_dir, write_text_atomic
from rlserve.parallel import Parallel
from rlserve.policies.energy import make_controller
from rlserve.policies.energy.dqn_controller import CHECKPOINT_KIND
from rlserve.policies.energy.qnet import DuelingQNetwork
from rlserve.rl.dqn import DQNConfig, DQNTrainResult, train
from rlserve.rl.dqn_workers import EpisodeWorkers
from rlserve.scenario import load_scenario
from rlserve.validation import parse_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "train"
VALIDATION_SEED_BASE = 700_000


@dataclass
class EnergyTrainConfig:
    """A training run: the environment and the DQN hyper-parameters."""

    env: EnergyEnvConfig = field(default_factory=EnergyEnvConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    factored_advantage: bool = False  # advantage = A_cap + A_clock (see rlserve.policies.energy.qnet)
    validation_seeds: Annotated[int, Field(ge=0)] = 2  # workloads per scenario scoring each checkpoint (0: none)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "energy training config") -> EnergyTrainConfig:
        """Build from ``{"env": {...}, "dqn": {...}}``, validated (:func:`rlserve.validation.parse_config`)."""
        d = dict(d)
        if isinstance(d.get("env"), Mapping):
            d["env"] = EnergyEnvConfig.normalized(d["env"])
        return parse_config(cls, d, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (written beside the checkpoint as ``config.yaml``)."""
        from dataclasses import asdict

        env = self.env.to_dict()
        return {"env": _plain(env), "dqn": _plain(asdict(self.dqn)), "factored_advantage": self.factored_advantage,
                "validation_seeds": self.validation_seeds}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def load_train_config(name_or_path: str | Path) -> EnergyTrainConfig:
    """A training config by path, or by name from the built-in ``configs/train/`` (``energy``)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"training config {name_or_path} not found (give a .yaml path or one of: "
                          f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('energy*.yaml')))})")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with env: and dqn: sections")
    return EnergyTrainConfig.from_dict(doc, str(path))


def train_energy(config: EnergyTrainConfig, out_dir: str | Path, *, resume: bool = False,
                 on_episode_end: Callable[[int, Mapping[str, Any]], None] | None = None,
                 workers: int | None = None, parallel: Parallel | None = None,
                 allow_config_change: bool = False) -> DQNTrainResult:
    """Train a DQN energy controller; writes ``checkpoint.pt``, ``policy.pt``, ``config.yaml``, logs to ``out_dir``.

    A directory that already holds a run is refused unless ``resume`` (a finished run's files are never
    overwritten); on resume the checkpoint's config is the source of truth (see :func:`stored_train_config`).
    Uses one CPU thread (torch): the networks are small, and the machines this runs on are shared. ``workers``:
    play the episodes on that many Ray actors (:mod:`rlserve.rl.dqn_workers`), on ``parallel``'s Ray (default: a
    local Ray with one CPU per worker).

    Raises:
        ConfigError: ``out_dir`` holds a run and ``resume`` is off, or is not a directory.
    """
    torch.set_num_threads(1)
    out = Path(out_dir)
    check_output_dir(out, resume=resume, run_files=RUN_FILES)
    env = EnergyEnv(config.env)  # before anything is written: a bad scenario or reward leaves no files behind
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # on resume the stored config.yaml stays (the checkpoint's config is the truth)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    obs_dim = env.config.state.dim
    space = env.action_space_def
    factors = (len(space.concurrency_caps), len(space.sm_clocks_mhz)) if config.factored_advantage else None
    q = DuelingQNetwork(obs_dim, space.n_actions, config.dqn.hidden_sizes, factors)
    metadata = {"action_space": space.to_dict(), "state_config": config.env.state.to_dict(),
                "hidden_sizes": list(config.dqn.hidden_sizes), "factored_advantage": config.factored_advantage,
                "env": _plain(config.env.to_dict()), "validation_seeds": config.validation_seeds}
    validate = Validator(config.env, config.validation_seeds) if config.validation_seeds > 0 else None
    episode_workers = None
    if workers is not None:
        episode_workers = EpisodeWorkers(workers, functools.partial(EnergyEnv, config.env),
                                         parallel or Parallel(workers=workers))
    return train(env, q, config.dqn, kind=CHECKPOINT_KIND, out_dir=out, resume=resume, metadata=metadata,
                 metric_names=EnergyEnv.episode_metric_names, on_episode_end=on_episode_end, validate=validate,
                 episode_workers=episode_workers, allow_config_change=allow_config_change)


def train_energy_cell(job: tuple[EnergyTrainConfig, Path],
                      on_episode_end: Callable[[int, Mapping[str, Any]], None] | None = None) -> Path:
    """One training run of a sweep (a Ray task body, or a plain call): trains ``job = (config, out_dir)``; a run
    killed before its policy was chosen continues from its checkpoint.

    Returns ``out_dir``; on a Ray cluster it must be on storage every node sees.
    """
    config, out_dir = job
    train_energy(config, out_dir, on_episode_end=on_episode_end, resume=(Path(out_dir) / "checkpoint.pt").is_file())
    return Path(out_dir)


RUN_FILES = ("checkpoint.pt", "policy.pt", "best.pt", "progress.csv")
"""Files whose presence means ``out_dir`` holds a training run."""


def stored_train_config(out: Path) -> EnergyTrainConfig:
    """The training config a run in ``out`` was started with, from its checkpoint (the source of truth)."""
    from rlserve.rl.checkpoints import load_checkpoint

    ck = load_checkpoint(out / "checkpoint.pt", kind=CHECKPOINT_KIND)
    meta = ck["metadata"]
    doc = {"env": meta["env"], "dqn": ck["config"], "factored_advantage": meta["factored_advantage"]}
    if "validation_seeds" in meta:
        doc["validation_seeds"] = meta["validation_seeds"]
    return EnergyTrainConfig.from_dict(doc, str(out / "checkpoint.pt"))


class Validator:
    """Scores a checkpoint on held-out validation workloads (seeds ``VALIDATION_SEED_BASE + k`` of every training
    scenario, disjoint from training (>= 2**20), evaluation (0..N-1) and grid-search (500000+) seeds).

    Score = mean fractional energy-per-token saving vs static max clock, minus 10 x the mean shortfall of SLO
    attainment below ``slo_target``: a checkpoint that saves more by missing the SLO does not win.
    """

    def __init__(self, env: EnergyEnvConfig, seeds: int, slo_target: float = 0.99) -> None:
        self.env = env
        self.slo_target = slo_target
        scenarios = [load_scenario(s) for s in env.scenarios]
        if len(env.block_sizes) == 1:  # a controller for one block size is validated on servers with that size
            scenarios = [with_block_size(s, env.block_sizes[0]) for s in scenarios]
        self.cases = [(s, VALIDATION_SEED_BASE + k) for s in scenarios for k in range(seeds)]
        self._baseline: dict[int, float] = {}

    def _run(self, spec: str, i: int) -> dict[str, float]:
        scn, seed = self.cases[i]
        space = build_action_space(scn, self.env)
        controller = make_controller(spec, control_context(scn, space, self.env.interval_s), seed=seed)
        return run_metrics(run_controller(controller, scn.cluster, scn.build_workload(seed), scn.slo,
                                            interval_s=self.env.interval_s, seed=seed,
                                            transition=scn.clock_transition))

    def __call__(self, policy: Path) -> float:
        """The score of the policy file ``policy`` (higher is better)."""
        savings, shortfalls = [], []
        for i in range(len(self.cases)):
            if i not in self._baseline:
                self._baseline[i] = self._run("static", i)["energy_per_token_j"]
            m = self._run(f"dqn:{policy}", i)
            savings.append(1.0 - m["energy_per_token_j"] / self._baseline[i])
            shortfalls.append(max(0.0, self.slo_target - m["slo_attainment"]))
        return float(sum(savings) / len(savings) - 10.0 * sum(shortfalls) / len(shortfalls))
