"""The one interface every monitor shares: a background sampling thread plus Zeus-style measurement windows.

A monitor samples one source (vLLM ``/metrics``, NVML, RAPL/psutil) every ``interval_s`` on its own daemon thread,
timestamps each sample with ``time.monotonic()`` (so traces of different monitors line up on one clock) and keeps
the samples in memory (:meth:`Monitor.trace`). A failed sample never raises out of the thread: it becomes a *gap*
(:class:`Gap`), counted by reason, so a run with a flaky server still finishes and says how much data is missing.
A tick that comes too late because the previous sample was slow is a gap too (reason ``"late"``).

Windows follow Zeus: ``begin_window(name)`` / ``end_window(name) -> Measurement`` with elapsed time and energy read
from the monitor's cumulative energy counter at both ends (not from averaged power). ``None`` energy means *not
measured*, which is different from 0 J.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rlserve.errors import ConfigError

S = TypeVar("S")


@dataclass(frozen=True)
class Gap:
    """A sampling tick that produced no sample: when (monotonic seconds) and why (short reason key)."""

    t_s: float
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Measurement:
    """What happened between ``begin_window`` and ``end_window``.

    ``gpu_energy_j`` / ``cpu_energy_j`` are ``None`` when that source was not measured (no NVML, no RAPL, or the
    monitor does not measure energy at all); ``energy_by_device_j`` splits them per device (``gpu0``,
    ``package-0``, ``dram-0`` ...).
    """

    name: str
    time_s: float
    gpu_energy_j: float | None = None
    cpu_energy_j: float | None = None
    energy_by_device_j: dict[str, float] = field(default_factory=dict)

    @property
    def energy_j(self) -> float | None:
        """GPU + CPU energy over the window; ``None`` when neither was measured."""
        parts = [e for e in (self.gpu_energy_j, self.cpu_energy_j) if e is not None]
        return sum(parts) if parts else None

    def merged(self, other: Measurement) -> Measurement:
        """Combine the measurements of two monitors over the same window (time from ``self``)."""

        def add(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else a + b

        return Measurement(self.name, self.time_s, add(self.gpu_energy_j, other.gpu_energy_j),
                           add(self.cpu_energy_j, other.cpu_energy_j),
                           {**self.energy_by_device_j, **other.energy_by_device_j})


class Monitor(ABC, Generic[S]):
    """Base class: owns the thread, the trace, gap counting and windows. Subclasses implement :meth:`_sample`.

    ``energy_kind`` (``"gpu"``, ``"cpu"`` or ``None``) says which field of :class:`Measurement` a subclass'
    :meth:`_energy_counters_j` fills.
    """

    name: str = "monitor"
    energy_kind: str | None = None

    def __init__(self, interval_s: float) -> None:
        if not interval_s > 0:
            raise ConfigError(f"{type(self).__name__} interval_s must be > 0, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self._samples: list[S] = []
        self._gaps: list[Gap] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._windows: dict[str, tuple[float, dict[str, float] | None]] = {}
        self.started_s: float | None = None
        self.stopped_s: float | None = None

    # --- to implement ------------------------------------------------------------------------------------------

    @abstractmethod
    def _sample(self, t_s: float) -> S:
        """Take one sample stamped ``t_s``; raise anything to record a gap (the exception names the reason)."""

    def _energy_counters_j(self) -> dict[str, float] | None:
        """Cumulative energy per device in joules, read now; ``None`` when this monitor measures no energy."""
        return None

    def _close(self) -> None:
        """Release resources after the thread has stopped (idempotent; sampling again may reopen them)."""

    def static_info(self) -> dict[str, Any]:
        """Facts about the source that do not change during a run (device names, sources, config)."""
        return {}

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Take a first sample now, then keep sampling every ``interval_s`` on a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.started_s = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for an in-flight sample) and release resources. Idempotent; a stopped monitor
        may be started again."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stopped_s = time.monotonic()
        self._close()

    def __enter__(self) -> Monitor[S]:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None

    def sample_now(self) -> S | None:
        """Take one sample synchronously (recorded in the trace like a tick); ``None`` and a gap on failure."""
        t = time.monotonic()
        try:
            s = self._sample(t)
        except Exception as exc:  # a monitor never crashes its caller: failures are gaps
            self._record_gap(t, exc)
            return None
        with self._lock:
            self._samples.append(s)
        return s

    def _record_gap(self, t_s: float, exc: BaseException) -> None:
        reason = getattr(exc, "gap_reason", None) or type(exc).__name__
        with self._lock:
            self._gaps.append(Gap(t_s, reason, str(exc)[:200]))

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sample_now()
            next_t += self.interval_s
            now = time.monotonic()
            if now > next_t:  # the sample overran one or more ticks: those ticks are missing data
                missed = int((now - next_t) / self.interval_s) + 1
                with self._lock:
                    self._gaps.extend(Gap(next_t + i * self.interval_s, "late") for i in range(missed))
                next_t += missed * self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    # --- data --------------------------------------------------------------------------------------------------

    def current(self) -> S | None:
        """The latest sample, or ``None`` before the first successful one."""
        with self._lock:
            return self._samples[-1] if self._samples else None

    def trace(self, since_s: float | None = None, until_s: float | None = None) -> list[S]:
        """Samples (oldest first), optionally restricted to ``since_s <= t_s <= until_s`` (monotonic seconds)."""
        with self._lock:
            samples = list(self._samples)
        if since_s is not None or until_s is not None:
            lo = -float("inf") if since_s is None else since_s
            hi = float("inf") if until_s is None else until_s
            samples = [s for s in samples if lo <= s.t_s <= hi]  # type: ignore[attr-defined]
        return samples

    def gaps(self) -> list[Gap]:
        """Ticks without a sample, oldest first."""
        with self._lock:
            return list(self._gaps)

    def gap_counts(self) -> dict[str, int]:
        """Number of gaps per reason (``{}`` when nothing was missed)."""
        return dict(Counter(g.reason for g in self.gaps()))

    # --- windows -----------------------------------------------------------------------------------------------

    def begin_window(self, name: str) -> None:
        """Start a named measurement window (names are independent; windows may overlap)."""
        if name in self._windows:
            raise ConfigError(f"measurement window {name!r} is already open; end it before starting it again")
        self._windows[name] = (time.monotonic(), self._safe_energy())

    def end_window(self, name: str) -> Measurement:
        """Close a window: elapsed time and energy from the counters (``None`` where not measured)."""
        if name not in self._windows:
            raise ConfigError(f"measurement window {name!r} was never begun; call begin_window({name!r}) first")
        t0, e0 = self._windows.pop(name)
        t1, e1 = time.monotonic(), self._safe_energy()
        by_device: dict[str, float] = {}
        total: float | None = None
        if e0 is not None and e1 is not None:
            by_device = {k: e1[k] - e0[k] for k in e1 if k in e0}
            total = sum(by_device.values())
        return Measurement(name, t1 - t0, gpu_energy_j=total if self.energy_kind == "gpu" else None,
                           cpu_energy_j=total if self.energy_kind == "cpu" else None, energy_by_device_j=by_device)

    def _safe_energy(self) -> dict[str, float] | None:
        try:
            return self._energy_counters_j()
        except Exception as exc:  # an unreadable counter means "not measured", never a crash
            self._record_gap(time.monotonic(), exc)
            return None


def gap_summary(gaps: Sequence[Gap]) -> dict[str, Any]:
    """``{"count": n, "by_reason": {...}}`` for a result file."""
    return {"count": len(gaps), "by_reason": dict(Counter(g.reason for g in gaps))}


def finite_or_none(values: Any) -> list[float | None]:
    """A float array as a JSON list with ``None`` for NaN/inf (JSON has no NaN)."""
    return [float(v) if math.isfinite(v) else None for v in values]
