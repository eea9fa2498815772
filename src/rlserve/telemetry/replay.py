"""Replay a recorder log as if its monitors were live: same samples, gaps, windows; time is set by the caller.

Tests and calibration use this instead of hardware: ``ReplayMonitor.from_log(path, "gpu")`` gives an object with
the live monitor's data API (``current()``, ``trace()``, ``gaps()``) plus :meth:`ReplayMonitor.seek` to move the
replay clock and :meth:`ReplayMonitor.measure` to compute a window's energy between two log times from the
recorded cumulative energy (linear interpolation between samples).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from rlserve.errors import InputError
from rlserve.telemetry.cpu import CpuSample
from rlserve.telemetry.gpu import GpuSample
from rlserve.telemetry.monitor import Gap, Measurement
from rlserve.telemetry.recorder import LOG_FORMAT
from rlserve.telemetry.vllm_metrics import VllmSample

SAMPLE_TYPES: dict[str, type] = {"vllm": VllmSample, "gpu": GpuSample, "cpu": CpuSample}


@dataclass(frozen=True)
class RecordedWindow:
    """A window the recorder measured live, as logged."""

    name: str
    t_begin_s: float
    t_end_s: float
    measurement: Measurement


@dataclass
class TelemetryLog:
    """A parsed recorder log: header plus per-monitor samples and gaps, and windows."""

    header: dict[str, Any]
    samples: dict[str, list[Any]]
    gaps: dict[str, list[Gap]]
    windows: list[RecordedWindow]

    @classmethod
    def load(cls, path: str | Path) -> TelemetryLog:
        """Parse a log written by :meth:`rlserve.telemetry.recorder.Recorder.save_log`."""
        path = Path(path)
        samples: dict[str, list[Any]] = {}
        gaps: dict[str, list[Gap]] = {}
        windows: list[RecordedWindow] = []
        header: dict[str, Any] | None = None
        with path.open() as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    kind = rec.pop("type")
                    if kind == "header":
                        header = rec
                    elif kind == "sample":
                        name = rec.pop("monitor")
                        samples.setdefault(name, []).append(_sample(SAMPLE_TYPES[name], rec))
                    elif kind == "gap":
                        gaps.setdefault(rec["monitor"], []).append(Gap(rec["t_s"], rec["reason"],
                                                                       rec.get("detail", "")))
                    elif kind == "window":
                        m = Measurement(rec["name"], rec["time_s"], rec["gpu_energy_j"], rec["cpu_energy_j"],
                                        rec.get("energy_by_device_j") or {})
                        windows.append(RecordedWindow(rec["name"], rec["t_begin_s"], rec["t_end_s"], m))
                except (KeyError, TypeError, ValueError) as exc:
                    raise InputError(f"{path}:{lineno}: not a telemetry log line ({exc})") from exc
        if header is None or header.get("format") != LOG_FORMAT:
            raise InputError(f"{path} is not an rlserve telemetry log (no '{LOG_FORMAT}' header line)")
        return cls(header, samples, gaps, windows)


def _sample(cls: type, rec: dict[str, Any]) -> Any:
    """Rebuild a sample dataclass: lists back to tuples, ``None`` (JSON's NaN) back to NaN in float fields."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in rec:
            continue
        v = rec[f.name]
        if isinstance(v, list):
            v = tuple(math.nan if x is None else x for x in v)
        elif v is None and f.type in ("float", float):
            v = math.nan
        kwargs[f.name] = v
    return cls(**kwargs)


class ReplayMonitor:
    """One monitor's recorded data, replayed on a caller-controlled clock (seconds since the log's ``t0``)."""

    def __init__(self, name: str, samples: list[Any], gaps: list[Gap], interval_s: float,
                 static: dict[str, Any]) -> None:
        self.name = name
        self.interval_s = interval_s
        self._samples = samples
        self._times = [s.t_s for s in samples]
        self._gaps = gaps
        self._static = static
        self.now_s = self._times[-1] if self._times else 0.0

    @classmethod
    def from_log(cls, log: TelemetryLog | str | Path, name: str) -> ReplayMonitor:
        """The replay of monitor ``name`` (``vllm``, ``gpu`` or ``cpu``) from a log or its path."""
        if not isinstance(log, TelemetryLog):
            log = TelemetryLog.load(log)
        mon = log.header.get("monitors", {}).get(name)
        if mon is None:
            raise InputError(f"the log has no {name!r} monitor (it has {sorted(log.header.get('monitors', {}))})")
        return cls(name, log.samples.get(name, []), log.gaps.get(name, []), mon["interval_s"], mon["static"])

    def static_info(self) -> dict[str, Any]:
        """The live monitor's static info, as logged."""
        return dict(self._static)

    def seek(self, t_s: float) -> None:
        """Move the replay clock; :meth:`current` then returns the latest sample at or before ``t_s``."""
        self.now_s = t_s

    def current(self) -> Any:
        """Latest sample at or before the replay clock (``None`` before the first)."""
        i = bisect_right(self._times, self.now_s)
        return self._samples[i - 1] if i else None

    def trace(self, since_s: float | None = None, until_s: float | None = None) -> list[Any]:
        """Recorded samples in ``[since_s, until_s]``."""
        lo = -math.inf if since_s is None else since_s
        hi = math.inf if until_s is None else until_s
        return [s for s in self._samples if lo <= s.t_s <= hi]

    def gaps(self) -> list[Gap]:
        """Recorded gaps."""
        return list(self._gaps)

    def measure(self, t_begin_s: float, t_end_s: float) -> Measurement:
        """Energy between two log times from the recorded cumulative energy, per device and in total.

        ``None`` energy when the monitor recorded none (vLLM, CPU without RAPL) or the span lies outside the trace.
        """
        name = f"replay[{t_begin_s:g},{t_end_s:g}]"
        if self.name not in ("gpu", "cpu") or len(self._samples) < 2:
            return Measurement(name, t_end_s - t_begin_s)
        t = np.asarray(self._times)
        if t_begin_s < t[0] or t_end_s > t[-1]:
            return Measurement(name, t_end_s - t_begin_s)
        e = np.array([s.energy_j for s in self._samples], dtype=np.float64)
        e = e.reshape(len(t), -1)
        labels = ([f"gpu{g}" for g in self._static.get("gpu_ids", [])] if self.name == "gpu"
                  else [self.name])
        by_device = {lab: float(np.interp(t_end_s, t, e[:, i]) - np.interp(t_begin_s, t, e[:, i]))
                     for i, lab in enumerate(labels)}
        if not all(math.isfinite(v) for v in by_device.values()):
            return Measurement(name, t_end_s - t_begin_s)
        total = sum(by_device.values())
        return Measurement(name, t_end_s - t_begin_s, gpu_energy_j=total if self.name == "gpu" else None,
                           cpu_energy_j=total if self.name == "cpu" else None, energy_by_device_j=by_device)
