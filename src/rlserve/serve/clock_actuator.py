"""The SM-clock actuator of the real energy loop: NVML locked clocks, dry-run unless explicitly applied.

Changing a GPU's clock affects everyone on the machine, so the default is a **dry run**: every decision is
logged (and snapped to a supported clock when NVML can be read) but nothing is changed. With ``apply=True``
(the CLI's ``--apply-clocks``) each change is ``nvmlDeviceSetGpuLockedClocks(handle, mhz, mhz)``, which needs
root or ``nvidia-smi -acp UNRESTRICTED``; a permission error says so.

Restoring is not optional: every GPU whose clock was locked is reset with ``nvmlDeviceResetGpuLockedClocks`` on
``restore()``, which runs on context exit (normal or exception), on SIGTERM/SIGINT/SIGHUP (the handler
restores, then raises ``SystemExit`` so the program unwinds) and at interpreter exit as a last resort. NVML
cannot report a lock set by someone else before us, so "restore" means "back to the driver's default
(unlocked) clocks" — documented in docs/energy.md.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from rlserve.errors import BackendError, ConfigError, TelemetryUnavailable

log = logging.getLogger(__name__)

_RESTORE_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s)
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NO_PERMISSION = 4


@dataclass(frozen=True, slots=True)
class ClockChange:
    """One clock decision as it was carried out (``applied=False``: dry run, logged only)."""

    time_s: float
    gpu_id: int
    requested_mhz: float
    sm_clock_mhz: float  # the supported clock actually used (== requested when clocks cannot be read)
    applied: bool


def _load_pynvml() -> Any | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class ClockActuator:
    """Locks the SM clock of each GPU in ``gpu_ids``, or only logs what it would do (``apply=False``).

    Args:
        gpu_ids: NVML indices of the GPUs this actuator controls (one replica's TP group, usually).
        apply: really change clocks. Without it the actuator never calls a setter.
        nvml: the NVML module (``pynvml``); tests pass a fake. ``None`` imports ``pynvml`` if installed.
        on_change: called with every :class:`ClockChange` (the real loop prints them).
    """

    def __init__(self, gpu_ids: Sequence[int], *, apply: bool = False, nvml: Any | None = None,
                 on_change: Callable[[ClockChange], None] | None = None) -> None:
        if not gpu_ids:
            raise ConfigError("the clock actuator needs at least one GPU id (--gpu-ids)")
        self.gpu_ids = tuple(int(g) for g in gpu_ids)
        self.apply = apply
        self.on_change = on_change
        self.changes: list[ClockChange] = []
        self._nvml: Any = nvml if nvml is not None else _load_pynvml()
        self._handles: dict[int, Any] = {}
        self._supported: dict[int, tuple[float, ...]] = {}
        self._locked: set[int] = set()
        self._previous_handlers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._started = False

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> ClockActuator:
        """Open the GPUs (read-only unless ``apply``) and install the restore hooks. Idempotent."""
        if self._started:
            return self
        n = self._nvml
        if n is None:
            if self.apply:
                raise TelemetryUnavailable("--apply-clocks needs NVML: install nvidia-ml-py "
                                           "(pip install 'rlserve[gpu]') on a machine with an NVIDIA driver")
            log.info("NVML is not available: clock decisions are logged only (dry run), not snapped")
        else:
            try:
                n.nvmlInit()
                for g in self.gpu_ids:
                    h = n.nvmlDeviceGetHandleByIndex(g)
                    self._handles[g] = h
                    self._supported[g] = self._supported_clocks(h)
            except n.NVMLError as exc:
                if self.apply:
                    raise BackendError(f"NVML failed opening GPUs {list(self.gpu_ids)} ({exc}); "
                                       "check --gpu-ids and the driver") from exc
                log.info("NVML cannot open GPUs %s (%s): dry run without snapping", self.gpu_ids, exc)
                self._handles.clear()
                self._supported.clear()
        if self.apply:
            self._install_restore_hooks()
        self._started = True
        return self

    def __enter__(self) -> ClockActuator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    # ---- decisions ------------------------------------------------------------------------------------------
    def set_sm_clock(self, mhz: float) -> float:
        """Set (or, in a dry run, log) the SM clock of every controlled GPU; returns the clock used."""
        used = mhz
        for g in self.gpu_ids:
            used = self._set_one(g, mhz)
        return used

    def _set_one(self, gpu_id: int, mhz: float) -> float:
        if not self._started:
            self.start()
        clock = self.snap(gpu_id, mhz)
        if self.apply:
            n, h = self._nvml, self._handles[gpu_id]
            try:
                with self._lock:
                    n.nvmlDeviceSetGpuLockedClocks(h, int(clock), int(clock))
                    self._locked.add(gpu_id)
            except n.NVMLError as exc:
                raise BackendError(_set_error_message(exc, gpu_id)) from exc
        change = ClockChange(time.monotonic(), gpu_id, float(mhz), float(clock), self.apply)
        self.changes.append(change)
        if self.on_change is not None:
            self.on_change(change)
        return float(clock)

    def snap(self, gpu_id: int, mhz: float) -> float:
        """The highest supported clock <= ``mhz`` (the lowest supported one if ``mhz`` is below all)."""
        supported = self._supported.get(gpu_id)
        if not supported:
            return float(mhz)
        below = [c for c in supported if c <= mhz]
        return max(below) if below else min(supported)

    # ---- restore --------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Reset every GPU this actuator locked to the driver's default clocks; safe to call many times."""
        with self._lock:
            locked, self._locked = sorted(self._locked), set()
        failures = []
        for g in locked:
            try:
                self._nvml.nvmlDeviceResetGpuLockedClocks(self._handles[g])
            except Exception as exc:  # keep resetting the others; report all at the end
                failures.append(f"GPU {g}: {exc}")
        if locked:
            log.info("restored default SM clocks on GPUs %s", locked)
        self._uninstall_restore_hooks()
        if failures:
            raise BackendError("could not reset locked clocks (" + "; ".join(failures)
                               + "); run `nvidia-smi -rgc` as root")

    def _install_restore_hooks(self) -> None:
        atexit.register(self._restore_quietly)
        if threading.current_thread() is not threading.main_thread():
            log.warning("clock actuator started outside the main thread: SIGTERM cannot be hooked, only atexit")
            return
        for sig in _RESTORE_SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _uninstall_restore_hooks(self) -> None:
        atexit.unregister(self._restore_quietly)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._restore_quietly()
        raise SystemExit(128 + signum)

    def _restore_quietly(self) -> None:
        try:
            self.restore()
        except BackendError as exc:
            log.error("%s", exc)

    def _supported_clocks(self, handle: Any) -> tuple[float, ...]:
        n = self._nvml
        clocks: set[float] = set()
        for mem in n.nvmlDeviceGetSupportedMemoryClocks(handle):
            clocks.update(float(c) for c in n.nvmlDeviceGetSupportedGraphicsClocks(handle, mem))
        return tuple(sorted(clocks))


def _set_error_message(exc: Any, gpu_id: int) -> str:
    code = getattr(exc, "value", None)
    if code == _NVML_ERROR_NO_PERMISSION:
        return (f"no permission to lock clocks on GPU {gpu_id}: run as root or after `nvidia-smi -acp UNRESTRICTED`, "
                "or drop --apply-clocks for a dry run")
    if code == _NVML_ERROR_NOT_SUPPORTED:
        return f"GPU {gpu_id} does not support locked clocks (needs Volta or newer); drop --apply-clocks"
    return f"NVML failed to lock the clock of GPU {gpu_id}: {exc}"
