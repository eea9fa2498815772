"""Scenarios: one YAML file fully describes a cluster, a workload and the SLOs it is judged by.

Built-in scenarios live in ``rlserve/configs/scenarios/`` (the repository's ``configs/`` links there) and are
selected by name; any other path to a YAML file works too::

    name: heterogeneous
    description: two fast and two slow replicas behind one router
    cluster:
      defaults: {model: llama-2-7b, batching: chunked}
      replicas:
        - {gpu: h100-sxm, count: 2}
        - {gpu: a40, count: 2}
    workload:        # rlserve.workload.WorkloadConfig keys
      num_requests: 2000
      arrival: {kind: poisson, qps: 20}
      lengths: {kind: lognormal, prompt_mean: 1155, prompt_median: 1020, output_mean: 211, output_median: 129}
    slo: {ttft_s: 2.0, tpot_s: 0.1}
    clock_transition: {latency_s: 0.05, stall_s: 0.05, energy_j: 0}   # optional; "off": clock changes are free

``clock_transition`` (:mod:`rlserve.sim.clock_transition`) is what an SM-clock change costs when an energy
controller drives the scenario; left out, the documented default applies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlserve.errors import ConfigError, InputError
from rlserve.metrics import Slo
from rlserve.perf.config import PerfConfig
from rlserve.sim.clock_transition import DEFAULT_TRANSITION, ClockTransition
from rlserve.sim.config import ClusterConfig
from rlserve.workload import WorkloadConfig, build_workload
from rlserve.workload.request import Workload

SCENARIO_DIR = Path(__file__).parent / "configs" / "scenarios"
_KEYS = {"name", "description", "cluster", "workload", "slo", "clock_transition", "perf"}


@dataclass(frozen=True)
class Scenario:
    """A named cluster + workload + SLO."""

    name: str
    description: str
    cluster: ClusterConfig
    workload: WorkloadConfig
    slo: Slo
    clock_transition: ClockTransition = DEFAULT_TRANSITION

    def build_workload(self, seed: int) -> Workload:
        """The scenario's requests for ``seed`` (deterministic); declared ``max_tokens`` are capped by the
        cluster's smallest ``max_model_len``."""
        return build_workload(self.workload, seed, min(r.max_model_len for r in self.cluster.replicas))

    def with_num_requests(self, n: int) -> Scenario:
        """The same scenario with ``n`` requests."""
        if n < 1:
            raise ConfigError(f"num_requests must be >= 1, got {n}")
        return dataclasses.replace(self, workload=dataclasses.replace(self.workload, num_requests=n))

    def with_qps(self, qps: float) -> Scenario:
        """The same scenario at another mean arrival rate (Poisson/gamma/constant arrivals; trace arrivals are
        rescaled in time so that their mean rate is ``qps``)."""
        arrival = self.workload.arrival
        if arrival.kind == "trace":
            arrival = dataclasses.replace(arrival, qps=float(qps), time_scale=None)
            return dataclasses.replace(self, workload=dataclasses.replace(self.workload, arrival=arrival))
        if not hasattr(arrival, "qps") or arrival.qps is None:
            raise ConfigError(f"scenario {self.name!r}: arrival kind {arrival.kind!r} has no qps to change")
        return dataclasses.replace(self, workload=dataclasses.replace(
            self.workload, arrival=dataclasses.replace(arrival, qps=float(qps))))


def list_scenarios() -> list[str]:
    """Names of the built-in scenarios."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a built-in scenario by name, or any scenario YAML file by path.

    Raises:
        ConfigError: unknown name, or invalid content (the message names the file and the field).
        InputError: the file is not valid YAML.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown scenario {str(name_or_path)!r}; built-in: {', '.join(list_scenarios())} "
                              "(or give a path to a .yaml file)")
    if not path.exists():
        raise ConfigError(f"scenario file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read scenario file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return scenario_from_dict(doc, where=str(path), base_dir=path.parent, default_name=path.stem)


def scenario_from_dict(doc: Any, *, where: str = "scenario", base_dir: Path | str = ".",
                       default_name: str = "scenario") -> Scenario:
    """Validate a parsed scenario document."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a scenario must be a mapping with keys {sorted(_KEYS)}")
    unknown = set(doc) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    for key in ("name", "description"):  # checked first: a YAML alias bomb here must not be expanded into text
        if key in doc and not isinstance(doc[key], str):
            raise ConfigError(f"{where}: '{key}' must be a string, got a {type(doc[key]).__name__}")
    for key in ("cluster", "workload"):
        if not isinstance(doc.get(key), dict):
            raise ConfigError(f"{where}: missing or invalid '{key}' section (a mapping)")
    slo = Slo.from_dict(doc.get("slo"), f"{where}: slo")
    try:
        perf = PerfConfig.from_dict(doc.get("perf"), where=f"{where}: perf", base_dir=base_dir)
        cluster = ClusterConfig.from_dict(doc["cluster"], where=f"{where}: cluster", base_dir=base_dir, perf=perf)
    except TypeError as exc:
        raise ConfigError(f"{where}: cluster: {exc}") from exc
    workload = WorkloadConfig.from_dict(doc["workload"], where=f"{where}: workload", base_dir=Path(base_dir))
    transition = ClockTransition.from_dict(doc.get("clock_transition"), where=f"{where}: clock_transition")
    return Scenario(name=str(doc.get("name", default_name)), description=str(doc.get("description", "")),
                    cluster=cluster, workload=workload, slo=slo, clock_transition=transition)
