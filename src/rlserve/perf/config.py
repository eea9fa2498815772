"""The perf-model knobs a scenario can set (its ``perf:`` sections) and the calibration file they can reference.

Every knob defaults to ``None``, meaning "the catalogue value" (docs/perf_model.md gives each default and its
source). A value set in a scenario overrides the calibration file, which overrides the catalogue::

    perf:                              # top level: defaults for every replica
      calibration: calib/tiny.json     # written by `rlserve calibrate` (relative to the scenario file)
      iteration_overhead_s: 0.004
    cluster:
      replicas:
        - {count: 2, perf: {eff_compute_linear: 0.5}}   # per replica group, over the defaults

The calibration file (JSON, ``format: rlserve-calibration/1``) holds ``perf`` (these knobs), optionally
``device`` (datasheet fields replacing the catalogue GPU's, e.g. for a CPU server: ``peak_tflops``,
``mem_bandwidth_gbps``, ``memory_bytes``), ``server`` (what the profiled server reported) and ``fit`` (per-term
errors). A file whose ``complete`` is not true is refused: a partial calibration is never used as a whole one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rlserve.errors import ConfigError
from rlserve.perf.gpus import GpuSpec

CALIBRATION_FORMAT = "rlserve-calibration/1"

# knob -> (lower bound, upper bound, what it is): efficiencies are fractions of the device's datasheet peak
_EFFICIENCY = (1e-6, 1.0)
_SECONDS = (0.0, 10.0)
KNOBS: dict[str, tuple[tuple[float, float], str]] = {
    "iteration_overhead_s": (_SECONDS, "CPU time per iteration the accelerator waits for (scheduler, sampling)"),
    "per_seq_overhead_s": (_SECONDS, "the same per sequence in the batch"),
    "frontend_latency_s": (_SECONDS, "time outside the engine per request (HTTP, tokenise, stream); added to "
                                     "TTFT and E2E, occupies no engine time"),
    "frontend_per_inflight_s": (_SECONDS, "more of that time per request already in flight at the replica "
                                          "when the request arrives (a frontend busy streaming other requests)"),
    "layer_overhead_s": (_SECONDS, "per layer and iteration: kernel launch gaps and tails"),
    "allreduce_latency_s": (_SECONDS, "per tensor-parallel all-reduce call"),
    "allreduce_bandwidth_gbps": ((1e-6, 1e6), "achieved all-reduce bandwidth per GPU and direction, GB/s"),
    "eff_compute_linear": (_EFFICIENCY, "GEMM compute efficiency in iterations with prefill"),
    "eff_compute_linear_decode": (_EFFICIENCY, "GEMM compute efficiency in decode-only iterations"),
    "eff_compute_attn": (_EFFICIENCY, "prefill attention compute efficiency"),
    "eff_compute_attn_decode": (_EFFICIENCY, "decode attention compute efficiency"),
    "eff_mem_linear": (_EFFICIENCY, "memory-bandwidth efficiency of weight streaming"),
    "eff_mem_attn": (_EFFICIENCY, "memory-bandwidth efficiency of KV-cache reads"),
    "eff_mem_elementwise": (_EFFICIENCY, "memory-bandwidth efficiency of elementwise kernels"),
}
DEVICE_FIELDS = {"name": str, "peak_tflops": float, "mem_bandwidth_gbps": float, "memory_bytes": int}
# engine and frontend knobs: ReplicaPerfModel arguments, not GpuCalibration fields
ENGINE_KNOBS = ("iteration_overhead_s", "per_seq_overhead_s", "frontend_latency_s", "frontend_per_inflight_s")


def _number(value: Any, key: str, where: str) -> float:
    (lo, hi), what = KNOBS[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key} must be a number ({what}), got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}.{key} must be in [{lo:g}, {hi:g}] ({what}), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PerfConfig:
    """Perf-model knobs of one replica (``None`` = catalogue default) plus the calibration they came from."""

    calibration: str | None = None  # path of a calibration file; its knobs sit under the explicit ones
    iteration_overhead_s: float | None = None
    per_seq_overhead_s: float | None = None
    frontend_latency_s: float | None = None
    frontend_per_inflight_s: float | None = None
    layer_overhead_s: float | None = None
    allreduce_latency_s: float | None = None
    allreduce_bandwidth_gbps: float | None = None
    eff_compute_linear: float | None = None
    eff_compute_linear_decode: float | None = None
    eff_compute_attn: float | None = None
    eff_compute_attn_decode: float | None = None
    eff_mem_linear: float | None = None
    eff_mem_attn: float | None = None
    eff_mem_elementwise: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, where: str = "perf", base_dir: Path | str = ".") -> PerfConfig:
        """Validate a ``perf:`` mapping (a relative ``calibration`` path is resolved against ``base_dir``)."""
        if d is None:
            return cls()
        if isinstance(d, PerfConfig):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a mapping of perf-model knobs; allowed: calibration, "
                              f"{', '.join(KNOBS)}")
        unknown = set(d) - set(KNOBS) - {"calibration"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: calibration, {', '.join(KNOBS)}")
        values: dict[str, Any] = {k: _number(v, k, where) for k, v in d.items() if k != "calibration" and v is not None}
        calib = d.get("calibration")
        if calib is not None:
            if not isinstance(calib, str | Path) or not str(calib):
                raise ConfigError(f"{where}.calibration must be a path to a calibration file, got {calib!r}")
            path = Path(calib)
            values["calibration"] = str(path if path.is_absolute() else Path(base_dir) / path)
        return cls(**values)

    def over(self, base: PerfConfig) -> PerfConfig:
        """These knobs where set, ``base``'s elsewhere (scenario merging: group over defaults)."""
        return dataclasses.replace(base, **{f.name: getattr(self, f.name) for f in fields(self)
                                            if getattr(self, f.name) is not None})

    def knobs(self) -> dict[str, float]:
        """The effective knobs: the calibration file's, overridden by the ones set here (``None`` left out)."""
        out = dict(load_calibration(self.calibration)["perf"]) if self.calibration else {}
        out.update({k: getattr(self, k) for k in KNOBS if getattr(self, k) is not None})
        return out

    def device(self) -> dict[str, Any]:
        """Datasheet fields the calibration file replaces on the catalogue GPU (empty without a file)."""
        return dict(load_calibration(self.calibration).get("device") or {}) if self.calibration else {}


_CACHE: dict[tuple[str, float], dict[str, Any]] = {}


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read and validate a calibration file (cached per path and modification time).

    Raises:
        ConfigError: missing file, not a calibration, marked incomplete, or a knob out of range.
    """
    p = Path(path)
    try:
        key = (str(p.resolve()), p.stat().st_mtime)
    except OSError:
        raise ConfigError(f"calibration file {p} does not exist; write one with `rlserve calibrate`") from None
    if key in _CACHE:
        return _CACHE[key]
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable calibration file ({exc})".replace("\n", " ")) from None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise ConfigError(f"{p}: not a calibration file (format must be {CALIBRATION_FORMAT!r})")
    if doc.get("complete") is not True:
        raise ConfigError(f"{p}: calibration is marked incomplete (the profiling run did not finish); re-run "
                          "`rlserve calibrate`")
    PerfConfig.from_dict(doc.get("perf") or {}, where=f"{p}: perf")
    device = doc.get("device") or {}
    if not isinstance(device, dict) or set(device) - set(DEVICE_FIELDS):
        raise ConfigError(f"{p}: device must be a mapping with keys among {sorted(DEVICE_FIELDS)}")
    for k, v in device.items():
        if k != "name" and (isinstance(v, bool) or not isinstance(v, int | float) or not v > 0):
            raise ConfigError(f"{p}: device.{k} must be a positive number, got {v!r}")
    _CACHE[key] = doc
    return doc


def write_calibration(path: str | Path, *, perf: Mapping[str, float], device: Mapping[str, Any] | None,
                      server: Mapping[str, Any], fit: Mapping[str, Any], source: str, complete: bool) -> Path:
    """Write a calibration file atomically (temp file + rename); ``complete=False`` marks a partial one."""
    PerfConfig.from_dict(dict(perf), where="calibration perf")
    doc = {"format": CALIBRATION_FORMAT, "complete": bool(complete), "source": source, "perf": dict(perf),
           "device": dict(device) if device else None, "server": dict(server), "fit": dict(fit)}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(p)
    return p


def apply_knobs(gpu: GpuSpec, perf: PerfConfig) -> tuple[GpuSpec, dict[str, float]]:
    """The GPU with the calibration's device fields and calibration knobs applied, and the engine keyword
    arguments of :class:`~rlserve.perf.roofline.ReplicaPerfModel` (CPU overheads, frontend latency)."""
    return with_knobs(gpu, perf.knobs(), perf.device())


def with_knobs(gpu: GpuSpec, knobs: Mapping[str, float],
               device: Mapping[str, Any] | None = None) -> tuple[GpuSpec, dict[str, float]]:
    """``gpu`` with ``device`` fields and the calibration ``knobs`` replaced, and the engine knobs apart."""
    if device:
        gpu = dataclasses.replace(gpu, **{k: DEVICE_FIELDS[k](v) for k, v in device.items()})
    cal: dict[str, Any] = {k: v for k, v in knobs.items() if k not in ENGINE_KNOBS}
    if cal:
        gpu = dataclasses.replace(gpu, calibration=dataclasses.replace(gpu.calibration, **cal))
    return gpu, {k: v for k, v in knobs.items() if k in ENGINE_KNOBS}
