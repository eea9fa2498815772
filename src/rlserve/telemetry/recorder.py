"""Run several monitors as one: shared start time, merged windows, aligned traces, one log, seed-schema stats.

All monitors stamp samples with ``time.monotonic()``, so their traces are already on one clock; the recorder
fixes the origin (``t0``, the moment it started) and can resample every trace onto a common grid
(:meth:`Recorder.aligned`, zero-order hold: each grid point carries the latest sample at or before it, which is
what a controller acting at that instant would have seen).

The log (:meth:`Recorder.save_log`) is JSON Lines: one ``header`` line (monitors, intervals, static info, the
wall-clock time of ``t0``), then ``sample``, ``gap`` and ``window`` lines with times relative to ``t0``.
:class:`rlserve.telemetry.replay.ReplayMonitor` reads the same file back, so one format serves tests,
calibration and post-mortems.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlserve.telemetry.cpu import CpuMonitor, cpu_power_stats
from rlserve.telemetry.gpu import GpuMonitor, NullGpuMonitor, gpu_power_stats
from rlserve.telemetry.monitor import Measurement, Monitor, gap_summary
from rlserve.telemetry.vllm_metrics import VllmMetricsMonitor, kv_cache_stats

LOG_FORMAT = "rlserve-telemetry-log"
LOG_VERSION = 1


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


class Recorder:
    """Starts, stops and windows a set of monitors together. Any of them may be omitted."""

    def __init__(self, vllm: VllmMetricsMonitor | None = None, gpu: GpuMonitor | NullGpuMonitor | None = None,
                 cpu: CpuMonitor | None = None) -> None:
        self.vllm, self.gpu, self.cpu = vllm, gpu, cpu
        self.monitors: dict[str, Monitor[Any]] = {m.name: m for m in (vllm, gpu, cpu) if m is not None}
        self.t0_s: float | None = None
        self.t0_unix_s: float | None = None
        self._windows: list[tuple[float, float, Measurement]] = []
        self._open: dict[str, float] = {}

    def start(self) -> None:
        """Fix ``t0`` and start every monitor."""
        self.t0_s, self.t0_unix_s = time.monotonic(), time.time()
        for m in self.monitors.values():
            m.start()

    def stop(self) -> None:
        """Stop every monitor (idempotent)."""
        for m in self.monitors.values():
            m.stop()

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def begin_window(self, name: str) -> None:
        """Begin ``name`` on every monitor."""
        self._open[name] = time.monotonic()
        for m in self.monitors.values():
            m.begin_window(name)

    def end_window(self, name: str) -> Measurement:
        """End ``name`` everywhere; GPU and CPU energy merged into one :class:`Measurement`."""
        begun = self._open.pop(name, time.monotonic())
        result: Measurement | None = None
        for m in self.monitors.values():
            part = m.end_window(name)
            result = part if result is None else result.merged(part)
        if result is None:
            result = Measurement(name, time.monotonic() - begun)
        self._windows.append((begun, begun + result.time_s, result))
        return result

    def current(self) -> dict[str, Any]:
        """Latest sample of each monitor by name (``None`` before its first sample)."""
        return {name: m.current() for name, m in self.monitors.items()}

    def aligned(self, step_s: float, fields: dict[str, Sequence[str]]) -> dict[str, np.ndarray]:
        """Resample ``fields`` (``{"gpu": ["power_w"], "vllm": ["kv_cache_usage"]}``) onto one grid.

        Returns ``{"t_s": grid, "gpu.power_w": ..., ...}`` with ``t_s`` relative to ``t0``; tuple-valued fields
        (per-GPU) become 2-D ``(len(grid), n_gpus)``. Grid points before a monitor's first sample are NaN.
        """
        traces = {name: self.monitors[name].trace() for name in fields}
        t0 = self.t0_s or 0.0
        end = max((tr[-1].t_s for tr in traces.values() if tr), default=t0)
        grid = np.arange(0.0, end - t0 + 1e-9, step_s)
        out: dict[str, np.ndarray] = {"t_s": grid}
        for name, names in fields.items():
            tr = traces[name]
            times = np.array([s.t_s - t0 for s in tr], dtype=np.float64)
            idx = np.searchsorted(times, grid, side="right") - 1
            for f in names:
                col = np.array([getattr(s, f) for s in tr], dtype=np.float64)
                if col.size == 0:
                    out[f"{name}.{f}"] = np.full(grid.shape, np.nan)
                    continue
                vals = col[np.clip(idx, 0, None)]
                vals[idx < 0] = np.nan
                out[f"{name}.{f}"] = vals
        return out

    def result_sections(self, kv_percentiles: Sequence[float] = (25.0, 75.0, 95.0)) -> dict[str, Any]:
        """The seed's telemetry blocks: ``gpu_power_stats``, ``cpu_power_stats``, ``kv_cache_monitoring_stats``
        plus ``telemetry`` (sources, availability, gaps). Absent monitors give ``None`` blocks."""
        t0 = self.t0_s or 0.0
        out: dict[str, Any] = {"gpu_power_stats": None, "cpu_power_stats": None, "kv_cache_monitoring_stats": None}
        info: dict[str, Any] = {}
        if self.gpu is not None:
            info["gpu"] = {**self.gpu.static_info(), "available": isinstance(self.gpu, GpuMonitor),
                           "monitoring_interval_seconds": self.gpu.interval_s, "gaps": gap_summary(self.gpu.gaps())}
            if isinstance(self.gpu, GpuMonitor):
                out["gpu_power_stats"] = gpu_power_stats(self.gpu.trace(), self.gpu.gpu_ids, t0,
                                                         self.gpu.energy_source)
        if self.cpu is not None:
            out["cpu_power_stats"] = cpu_power_stats(self.cpu.trace(), self.cpu.gaps(), self.cpu.interval_s, t0,
                                                     self.cpu.static_info())
        if self.vllm is not None:
            out["kv_cache_monitoring_stats"] = kv_cache_stats(self.vllm.trace(), self.vllm.gaps(),
                                                              self.vllm.interval_s, t0, kv_percentiles)
            info["vllm"] = {**self.vllm.static_info(), "gaps": gap_summary(self.vllm.gaps())}
        out["telemetry"] = info
        return _json_safe(out)

    def save_log(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the JSON Lines log (see module docstring); returns the path."""
        path = Path(path)
        t0 = self.t0_s or 0.0
        header = {"type": "header", "format": LOG_FORMAT, "version": LOG_VERSION, "t0_unix_s": self.t0_unix_s,
                  "monitors": {n: {"interval_s": m.interval_s, "static": m.static_info()}
                               for n, m in self.monitors.items()},
                  "meta": meta or {}}
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(_json_safe(header)) + "\n")
            for name, m in self.monitors.items():
                for s in m.trace():
                    d = s.to_dict()
                    d["t_s"] = d["t_s"] - t0
                    f.write(json.dumps(_json_safe({"type": "sample", "monitor": name, **d})) + "\n")
                for g in m.gaps():
                    f.write(json.dumps({"type": "gap", "monitor": name, "t_s": g.t_s - t0, "reason": g.reason,
                                        "detail": g.detail}) + "\n")
            for begun, ended, meas in self._windows:
                f.write(json.dumps(_json_safe({
                    "type": "window", "name": meas.name, "t_begin_s": begun - t0, "t_end_s": ended - t0,
                    "time_s": meas.time_s, "gpu_energy_j": meas.gpu_energy_j, "cpu_energy_j": meas.cpu_energy_j,
                    "energy_by_device_j": meas.energy_by_device_j})) + "\n")
        tmp.replace(path)
        return path
