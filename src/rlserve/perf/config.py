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
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import annotated_types
from pydantic import Field

from rlserve.errors import ConfigError
from rlserve.perf.gpus import GpuSpec
from rlserve.validation import parse_config

CALIBRATION_FORMAT = "rlserve-calibration/1"

_Seconds = Annotated[float, Field(ge=0.0, le=10.0)]
_Efficiency = Annotated[float, Field(ge=1e-6, le=1.0)]  # a fraction of the device's datasheet peak


@dataclass(frozen=True)
class PerfConfig:
    """Perf-model knobs of one replica (``None`` = catalogue default) plus the calibration they came from.

    A knob's type and range are declared here once; :meth:`from_dict` validates against them with
    :func:`rlserve.validation.parse_config` and :data:`KNOBS` reads the bounds from here (the fitter's box).
    """

    calibration: Annotated[str, Field(min_length=1)] | None = None  # calibration file; under the explicit knobs
    iteration_overhead_s: _Seconds | None = None  # CPU time per iteration the accelerator waits for (scheduler,
    #                                               sampling)
    per_seq_overhead_s: _Seconds | None = None  # the same per sequence in the batch
    frontend_latency_s: _Seconds | None = None  # time outside the engine per request (HTTP, tokenise, stream);
    #                                             added to TTFT and E2E, occupies no engine time
    frontend_per_inflight_s: _Seconds | None = None  # more of that time per request already in flight at the
    #                                                  replica when it arrives (a frontend busy streaming others)
    layer_overhead_s: _Seconds | None = None  # per layer and iteration: kernel launch gaps and tails
    allreduce_latency_s: _Seconds | None = None  # per tensor-parallel all-reduce call
    allreduce_bandwidth_gbps: Annotated[float, Field(ge=1e-6, le=1e6)] | None = None  # achieved all-reduce
    #                                                                                  bandwidth per GPU, GB/s
    eff_compute_linear: _Efficiency | None = None  # GEMM compute efficiency in iterations with prefill
    eff_compute_linear_decode: _Efficiency | None = None  # GEMM compute efficiency in decode-only iterations
    eff_compute_attn: _Efficiency | None = None  # prefill attention compute efficiency
    eff_compute_attn_decode: _Efficiency | None = None  # decode attention compute efficiency
    eff_mem_linear: _Efficiency | None = None  # memory-bandwidth efficiency of weight streaming
    eff_mem_attn: _Efficiency | None = None  # memory-bandwidth efficiency of KV-cache reads
    eff_mem_elementwise: _Efficiency | None = None  # memory-bandwidth efficiency of elementwise kernels

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, where: str = "perf", base_dir: Path | str = ".") -> PerfConfig:
        """Validate a ``perf:`` mapping (a relative ``calibration`` path is resolved against ``base_dir``)."""
        if isinstance(d, PerfConfig):
            return d
        cfg = parse_config(cls, dict(d) if isinstance(d, Mapping) else d, where)
        if cfg.calibration is None or Path(cfg.calibration).is_absolute():
            return cfg
        return dataclasses.replace(cfg, calibration=str(Path(base_dir) / cfg.calibration))

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


def _bounds(name: str) -> tuple[float, float]:
    """The ``[ge, le]`` range declared on the knob ``name`` of :class:`PerfConfig`."""
    hint = typing.get_type_hints(PerfConfig, include_extras=True)[name]
    inner = next(a for a in typing.get_args(hint) if typing.get_origin(a) is Annotated)
    meta = [m for info in typing.get_args(inner)[1:] for m in info.metadata]
    return (float(next(m.ge for m in meta if isinstance(m, annotated_types.Ge))),  # type: ignore[arg-type]
            float(next(m.le for m in meta if isinstance(m, annotated_types.Le))))  # type: ignore[arg-type]


KNOBS: dict[str, tuple[float, float]] = {f.name: _bounds(f.name) for f in fields(PerfConfig) if f.name != "calibration"}
"""Every perf-model knob and its allowed range (read from the declarations on :class:`PerfConfig`)."""
# engine and frontend knobs: ReplicaPerfModel arguments, not GpuCalibration fields
ENGINE_KNOBS = ("iteration_overhead_s", "per_seq_overhead_s", "frontend_latency_s", "frontend_per_inflight_s")


@dataclass(frozen=True)
class CalibratedDevice:
    """The ``device:`` of a calibration file: datasheet fields replacing the catalogue GPU's (e.g. for a CPU
    server); ``None`` keeps the catalogue value."""

    name: str | None = None
    peak_tflops: Annotated[float, Field(gt=0)] | None = None
    mem_bandwidth_gbps: Annotated[float, Field(gt=0)] | None = None
    memory_bytes: Annotated[int, Field(gt=0)] | None = None


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
    device = parse_config(CalibratedDevice, doc.get("device"), f"{p}: device")
    doc["device"] = {k: v for k, v in dataclasses.asdict(device).items() if v is not None}
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
        gpu = dataclasses.replace(gpu, **device)
    cal: dict[str, Any] = {k: v for k, v in knobs.items() if k not in ENGINE_KNOBS}
    if cal:
        gpu = dataclasses.replace(gpu, calibration=dataclasses.replace(gpu.calibration, **cal))
    return gpu, {k: v for k, v in knobs.items() if k in ENGINE_KNOBS}
