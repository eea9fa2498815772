"""GPU monitor over NVML (``nvidia-ml-py``): power, energy, utilisation, SM clock, temperature per GPU.

Energy comes from ``nvmlDeviceGetTotalEnergyConsumption`` (a millijoule counter the driver integrates on the
device since Volta), not from averaged power x duration: NVML's power reading refreshes only every ~100 ms and
is itself averaged on recent GPUs, so sampled power misses short spikes. The monitor still samples power (it is
what a controller observes) and counts how often the reading actually changed, which tells how fresh the power
signal is. GPUs without the counter fall back to integrating sampled power, and the result says so
(``energy_source = "power_integration"``).

NVML is optional: :func:`nvml_probe` checks once per process whether it can be used, and :func:`make_gpu_monitor`
returns a :class:`NullGpuMonitor` carrying the reason when it cannot, unless the caller explicitly required GPU
data (then :class:`~rlserve.errors.TelemetryUnavailable`). This monitor only reads; it never changes clocks.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from rlserve.errors import BackendError, ConfigError, TelemetryUnavailable
from rlserve.telemetry.monitor import Measurement, Monitor, finite_or_none

DEFAULT_GPU_INTERVAL_S = 0.05


@dataclass(frozen=True)
class GpuSample:
    """One reading of every monitored GPU (tuples are indexed like ``GpuMonitor.gpu_ids``).

    ``energy_j`` is cumulative since the monitor started (from the NVML counter, or integrated power when the
    counter is missing). ``power_instant_w`` is NVML's instantaneous field where the driver has it, else NaN.
    ``mem_util_pct`` is memory-*bandwidth* utilisation (NVML ``utilization.memory``, the seed's
    ``avg_mem_util``); ``mem_used_pct`` is memory *capacity* in use.
    """

    t_s: float
    power_w: tuple[float, ...]
    energy_j: tuple[float, ...]
    gpu_util_pct: tuple[float, ...]
    mem_util_pct: tuple[float, ...]
    sm_clock_mhz: tuple[float, ...]
    temperature_c: tuple[float, ...]
    power_instant_w: tuple[float, ...]
    mem_used_pct: tuple[float, ...] = ()  # memory capacity in use (empty in logs written before it existed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for the recorder log)."""
        return asdict(self)


@dataclass(frozen=True)
class NvmlStatus:
    """Outcome of the availability probe."""

    available: bool
    reason: str
    device_count: int = 0


def _load_pynvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


@functools.cache
def nvml_probe(nvml: ModuleType | None = None) -> NvmlStatus:
    """Whether NVML works here (cached per process): library importable, driver loaded, >= 1 GPU."""
    nvml = nvml or _load_pynvml()
    if nvml is None:
        return NvmlStatus(False, "nvidia-ml-py is not installed (pip install 'rlserve[gpu]')")
    try:
        nvml.nvmlInit()
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        return NvmlStatus(False, f"NVML cannot start ({exc}): no NVIDIA driver on this machine")
    if count == 0:
        return NvmlStatus(False, "NVML found no GPU on this machine")
    return NvmlStatus(True, "ok", count)


class GpuMonitor(Monitor[GpuSample]):
    """Samples ``gpu_ids`` every ``interval_s`` (default 50 ms). Use :func:`make_gpu_monitor` to build one."""

    name = "gpu"
    energy_kind = "gpu"

    def __init__(self, gpu_ids: Sequence[int], interval_s: float = DEFAULT_GPU_INTERVAL_S,
                 nvml: ModuleType | None = None) -> None:
        super().__init__(interval_s)
        loaded = nvml or _load_pynvml()
        if loaded is None:
            raise TelemetryUnavailable(nvml_probe().reason)
        self._nvml: ModuleType = loaded
        n = loaded
        try:
            n.nvmlInit()
            count = int(n.nvmlDeviceGetCount())
            self.gpu_ids = tuple(int(g) for g in gpu_ids)
            bad = [g for g in self.gpu_ids if not 0 <= g < count]
            if bad or not self.gpu_ids:
                raise ConfigError(f"--gpu-ids {list(gpu_ids)} invalid: this machine has GPUs 0..{count - 1}")
            self._handles = [n.nvmlDeviceGetHandleByIndex(g) for g in self.gpu_ids]
            self.device_names = [_text(n.nvmlDeviceGetName(h)) for h in self._handles]
        except n.NVMLError as exc:
            raise TelemetryUnavailable(f"NVML failed while opening GPUs {list(gpu_ids)}: {exc}") from exc
        self._has_counter = [self._supported(n.nvmlDeviceGetTotalEnergyConsumption, h) for h in self._handles]
        self._has_instant = [self._instant_w(h) is not None for h in self._handles]
        self._energy_lock = threading.Lock()
        self._counter0_mj = [float(n.nvmlDeviceGetTotalEnergyConsumption(h)) if ok else 0.0
                             for h, ok in zip(self._handles, self._has_counter, strict=True)]
        self._integrated_j = [0.0] * len(self._handles)  # fallback for GPUs without the counter
        self._last_power: tuple[float, list[float]] | None = None

    @property
    def energy_source(self) -> str:
        """``nvml_energy_counter`` when every GPU has the counter, else ``power_integration`` (an estimate)."""
        return "nvml_energy_counter" if all(self._has_counter) else "power_integration"

    def _supported(self, fn: Any, handle: Any) -> bool:
        try:
            fn(handle)
        except self._nvml.NVMLError:
            return False
        return True

    def _instant_w(self, handle: Any) -> float | None:
        n = self._nvml
        field_id = getattr(n, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is None or not hasattr(n, "nvmlDeviceGetFieldValues"):
            return None
        try:
            (v,) = n.nvmlDeviceGetFieldValues(handle, [field_id])
        except n.NVMLError:
            return None
        if getattr(v, "nvmlReturn", 0) != 0:
            return None
        return float(v.value.uiVal) / 1000.0

    def _sample(self, t_s: float) -> GpuSample:
        n = self._nvml
        try:
            power = [n.nvmlDeviceGetPowerUsage(h) / 1000.0 for h in self._handles]
            util = [n.nvmlDeviceGetUtilizationRates(h) for h in self._handles]
            clock = [float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)) for h in self._handles]
            temp = [float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)) for h in self._handles]
            mem = [n.nvmlDeviceGetMemoryInfo(h) for h in self._handles]
            instant = [self._instant_w(h) if ok else None for h, ok in zip(self._handles, self._has_instant,
                                                                             strict=True)]
            energy = self._read_energy_j(t_s, power)
        except n.NVMLError as exc:
            raise BackendError(f"NVML read failed: {exc}") from exc
        return GpuSample(
            t_s=t_s, power_w=tuple(power), energy_j=tuple(energy),
            gpu_util_pct=tuple(float(u.gpu) for u in util), mem_util_pct=tuple(float(u.memory) for u in util),
            sm_clock_mhz=tuple(clock), temperature_c=tuple(temp),
            power_instant_w=tuple(float("nan") if v is None else v for v in instant),
            mem_used_pct=tuple(100.0 * m.used / m.total if m.total else float("nan") for m in mem),
        )

    def _read_energy_j(self, t_s: float, power_w: list[float] | None) -> list[float]:
        """Cumulative joules per GPU since start: counter difference, or trapezoid of sampled power."""
        n = self._nvml
        with self._energy_lock:
            if power_w is not None and not all(self._has_counter):
                if self._last_power is not None:
                    t_prev, p_prev = self._last_power
                    for i, ok in enumerate(self._has_counter):
                        if not ok:
                            self._integrated_j[i] += 0.5 * (p_prev[i] + power_w[i]) * (t_s - t_prev)
                self._last_power = (t_s, power_w)
            return [(float(n.nvmlDeviceGetTotalEnergyConsumption(h)) - c0) / 1000.0 if ok else integ
                    for h, ok, c0, integ in zip(self._handles, self._has_counter, self._counter0_mj,
                                                self._integrated_j, strict=True)]

    def _energy_counters_j(self) -> dict[str, float]:
        energy = self._read_energy_j(0.0, None)
        return {f"gpu{g}": e for g, e in zip(self.gpu_ids, energy, strict=True)}

    def static_info(self) -> dict[str, Any]:
        """GPU ids, names and where energy comes from."""
        return {"gpu_ids": list(self.gpu_ids), "device_names": self.device_names, "energy_source": self.energy_source,
                "power_instant_available": all(self._has_instant)}


class NullGpuMonitor(Monitor[GpuSample]):
    """Stands in when NVML is unavailable: never samples, windows measure time only. ``reason`` says why."""

    name = "gpu"
    energy_kind = "gpu"

    def __init__(self, reason: str, interval_s: float = DEFAULT_GPU_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.reason = reason
        self.gpu_ids: tuple[int, ...] = ()

    def start(self) -> None:
        """Nothing to sample."""

    def _sample(self, t_s: float) -> GpuSample:
        raise TelemetryUnavailable(self.reason)

    def end_window(self, name: str) -> Measurement:
        """Elapsed time only (``gpu_energy_j`` is ``None``: not measured)."""
        m = super().end_window(name)
        return Measurement(m.name, m.time_s)

    def static_info(self) -> dict[str, Any]:
        """Why there is no GPU data."""
        return {"reason": self.reason}


def make_gpu_monitor(gpu_ids: Sequence[int] | None = None, interval_s: float = DEFAULT_GPU_INTERVAL_S,
                     required: bool = False, nvml: ModuleType | None = None) -> GpuMonitor | NullGpuMonitor:
    """A :class:`GpuMonitor` for ``gpu_ids`` (default: all GPUs), or a :class:`NullGpuMonitor` when NVML is
    unavailable. With ``required=True`` a missing NVML raises :class:`TelemetryUnavailable` instead."""
    status = nvml_probe(nvml)
    if not status.available:
        if required:
            raise TelemetryUnavailable(f"GPU telemetry was required but {status.reason}; drop the GPU requirement "
                                       "to run without GPU data")
        return NullGpuMonitor(f"no GPU data: {status.reason}", interval_s)
    ids = list(range(status.device_count)) if gpu_ids is None else list(gpu_ids)
    return GpuMonitor(ids, interval_s, nvml)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_power_stats(samples: Sequence[GpuSample], gpu_ids: Sequence[int], t0_s: float,
                    energy_source: str) -> dict[str, dict[str, Any]]:
    """The seed's ``gpu_power_stats`` block: one entry per GPU id (string keys, as JSON needs).

    Seed keys keep the seed's units (``avg_power`` and ``power_trace`` in **mW**, utilisations in %); added keys
    carry units in their names. ``energy_j`` is the counter difference over the samples;
    ``power_integrated_energy_j`` integrates sampled power over the same span, for comparison.
    ``power_changes`` counts samples whose power differed from the previous one: with 50 ms sampling and a
    100 ms NVML refresh about half the samples change.
    """
    out: dict[str, dict[str, Any]] = {}
    t = np.array([s.t_s for s in samples], dtype=np.float64)
    for i, gid in enumerate(gpu_ids):
        p = np.array([s.power_w[i] for s in samples], dtype=np.float64)
        e = np.array([s.energy_j[i] for s in samples], dtype=np.float64)
        util = np.array([s.gpu_util_pct[i] for s in samples], dtype=np.float64)
        mem = np.array([s.mem_util_pct[i] for s in samples], dtype=np.float64)
        clock = np.array([s.sm_clock_mhz[i] for s in samples], dtype=np.float64)
        changes = int(np.count_nonzero(np.diff(p))) if p.size > 1 else 0
        span = float(t[-1] - t[0]) if t.size > 1 else 0.0
        has = p.size > 0
        out[str(gid)] = {
            "avg_power": float(p.mean() * 1000.0) if has else None,
            "avg_gpu_util": float(util.mean()) if has else None,
            "avg_mem_util": float(mem.mean()) if has else None,
            "power_trace": (p * 1000.0).round(1).tolist(),
            "avg_power_w": float(p.mean()) if has else None,
            "max_power_w": float(p.max()) if has else None,
            "avg_sm_clock_mhz": float(clock.mean()) if has else None,
            "energy_j": float(e[-1] - e[0]) if p.size > 1 else None,
            "energy_source": energy_source,
            "power_integrated_energy_j": float(np.trapezoid(p, t)) if p.size > 1 else None,
            "power_changes": changes,
            "power_change_rate_hz": changes / span if span > 0 else None,
            "samples": int(p.size),
            "trace_t_s": [round(x - t0_s, 6) for x in t.tolist()],
            "gpu_util_trace": util.tolist(),
            "sm_clock_trace_mhz": clock.tolist(),
            "energy_trace_j": finite_or_none(e),
        }
    return out

