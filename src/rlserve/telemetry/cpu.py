"""CPU monitor: RAPL energy (package + DRAM) where the kernel exposes it, utilisation and frequency always.

RAPL counters (``/sys/class/powercap/intel-rapl:*/energy_uj``, also used by AMD on recent kernels) are
microjoule counters that wrap at ``max_energy_range_uj`` (tens of minutes to hours at full load). The monitor
keeps a cumulative, wrap-corrected energy per zone, updated on every sample and on window boundaries, so a window
longer than one wrap period is still right as long as the sampling thread runs. Power is the energy difference
between consecutive samples. Package zones already contain their ``core``/``uncore`` subzones, and ``psys``
covers the whole platform, so only ``package-*`` and ``dram`` are summed.

Without RAPL (containers, VMs, most ARM machines, or ``energy_uj`` readable by root only since Linux 5.10) the
result says ``"cpu_power_source": "unavailable"`` and why; no power is invented.

Utilisation is computed from our own ``psutil.cpu_times()`` differences rather than ``psutil.cpu_percent()``,
whose module-global state any other caller in the process would disturb.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from rlserve.errors import TelemetryUnavailable
from rlserve.telemetry.monitor import Gap, Monitor, finite_or_none, gap_summary

DEFAULT_CPU_INTERVAL_S = 0.05
POWERCAP_ROOT = Path("/sys/class/powercap")
_SUMMED_ZONES = ("package", "dram")


@dataclass(frozen=True)
class RaplZone:
    """One RAPL counter: a label like ``package-0`` or ``dram-0``, its file and its wrap range."""

    label: str
    energy_file: Path
    max_energy_range_uj: int


def discover_rapl_zones(root: Path = POWERCAP_ROOT) -> list[RaplZone]:
    """Package and DRAM zones under ``root``; raises :class:`TelemetryUnavailable` saying why there are none."""
    if not root.is_dir():
        raise TelemetryUnavailable(f"no RAPL: {root} does not exist (VM/container or non-x86 CPU)")
    zones = []
    for d in sorted(root.glob("intel-rapl:*")):
        try:
            name = (d / "name").read_text().strip()
            max_range = int((d / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        kind = name.split("-")[0]
        if kind not in _SUMMED_ZONES:
            continue
        package = d.name.split(":")[1]
        label = name if "-" in name else f"{name}-{package}"
        zones.append(RaplZone(label, d / "energy_uj", max_range))
    if not zones:
        raise TelemetryUnavailable(f"no RAPL package/dram zones under {root}")
    try:
        for z in zones:
            int(z.energy_file.read_text())
    except PermissionError as exc:
        raise TelemetryUnavailable(f"RAPL counters exist but are not readable ({exc.filename}); since Linux 5.10 "
                                   "energy_uj is root-only: run as root or grant read access") from exc
    return zones


class RaplEnergy:
    """Cumulative, wrap-corrected joules per zone since construction (thread-safe)."""

    def __init__(self, zones: Sequence[RaplZone]) -> None:
        self.zones = list(zones)
        self._lock = threading.Lock()
        self._last_uj = self._read_raw()
        self._total_j = dict.fromkeys((z.label for z in self.zones), 0.0)

    def _read_raw(self) -> dict[str, int]:
        return {z.label: int(z.energy_file.read_text()) for z in self.zones}

    def read_j(self) -> dict[str, float]:
        """Read the counters now and return cumulative joules per zone."""
        with self._lock:
            raw = self._read_raw()
            for z in self.zones:
                delta = raw[z.label] - self._last_uj[z.label]
                if delta < 0:  # the counter wrapped (at most once between reads at our sampling rates)
                    delta += z.max_energy_range_uj
                self._total_j[z.label] += delta / 1e6
            self._last_uj = raw
            return dict(self._total_j)


@dataclass(frozen=True)
class CpuSample:
    """One CPU reading. ``power_w``/``energy_j`` are NaN without RAPL; ``freq_mhz`` NaN when unknown."""

    t_s: float
    util_pct: float
    freq_mhz: float
    power_w: float
    energy_j: float  # cumulative since the monitor started (package + DRAM)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for the recorder log)."""
        return asdict(self)


class CpuMonitor(Monitor[CpuSample]):
    """Samples CPU utilisation/frequency and, when RAPL is readable, energy and power (default every 50 ms)."""

    name = "cpu"
    energy_kind = "cpu"

    def __init__(self, interval_s: float = DEFAULT_CPU_INTERVAL_S, powercap_root: Path = POWERCAP_ROOT) -> None:
        super().__init__(interval_s)
        try:
            self._rapl: RaplEnergy | None = RaplEnergy(discover_rapl_zones(powercap_root))
            self.unavailable_reason = ""
        except TelemetryUnavailable as exc:
            self._rapl = None
            self.unavailable_reason = str(exc)
        self._last_times = psutil.cpu_times()
        self._last_energy: tuple[float, float] | None = None  # (t_s, cumulative J) of the previous sample

    @property
    def power_source(self) -> str:
        """``rapl`` or ``unavailable``."""
        return "rapl" if self._rapl is not None else "unavailable"

    def _utilisation_pct(self) -> float:
        now = psutil.cpu_times()
        last, self._last_times = self._last_times, now
        total = sum(now) - sum(last)
        idle = (now.idle - last.idle) + (getattr(now, "iowait", 0.0) - getattr(last, "iowait", 0.0))
        return 100.0 * (1.0 - idle / total) if total > 0 else math.nan

    def _sample(self, t_s: float) -> CpuSample:
        util = self._utilisation_pct()
        freq = psutil.cpu_freq()
        power, energy = math.nan, math.nan
        if self._rapl is not None:
            energy = sum(self._rapl.read_j().values())
            if self._last_energy is not None and t_s > self._last_energy[0]:
                power = (energy - self._last_energy[1]) / (t_s - self._last_energy[0])
            self._last_energy = (t_s, energy)
        return CpuSample(t_s, util, float(freq.current) if freq else math.nan, power, energy)

    def _energy_counters_j(self) -> dict[str, float] | None:
        return None if self._rapl is None else self._rapl.read_j()

    def static_info(self) -> dict[str, Any]:
        """Power source, RAPL zones (or why there are none) and the logical CPU count."""
        info: dict[str, Any] = {"cpu_power_source": self.power_source, "logical_cpus": psutil.cpu_count()}
        if self._rapl is None:
            info["unavailable_reason"] = self.unavailable_reason
        else:
            info["rapl_zones"] = [z.label for z in self._rapl.zones]
        return info


def cpu_power_stats(samples: Sequence[CpuSample], gaps: Sequence[Gap], interval_s: float, t0_s: float,
                    static_info: dict[str, Any]) -> dict[str, Any]:
    """The seed's ``cpu_power_stats`` block (``avg_power_w`` ...) plus utilisation, traces and gaps.

    Power fields are ``None`` when ``cpu_power_source`` is ``"unavailable"``.
    """
    t = np.array([s.t_s for s in samples], dtype=np.float64)
    p = np.array([s.power_w for s in samples], dtype=np.float64)
    e = np.array([s.energy_j for s in samples], dtype=np.float64)
    u = np.array([s.util_pct for s in samples], dtype=np.float64)
    f = np.array([s.freq_mhz for s in samples], dtype=np.float64)

    def mean(x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else None

    finite_p = p[np.isfinite(p)]
    return {
        **static_info,
        "avg_power_w": mean(p),
        "max_power_w": float(finite_p.max()) if finite_p.size else None,
        "energy_j": float(e[-1] - e[0]) if e.size > 1 and np.isfinite(e[[0, -1]]).all() else None,
        "avg_cpu_util": mean(u),
        "avg_freq_mhz": mean(f),
        "samples": int(t.size),
        "monitoring_interval_seconds": interval_s,
        "gaps": gap_summary(gaps),
        "trace_t_s": [round(x - t0_s, 6) for x in t.tolist()],
        "power_trace_w": finite_or_none(p),
        "util_trace": finite_or_none(u),
    }
