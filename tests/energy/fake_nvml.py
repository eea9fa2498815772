"""A fake NVML (the ``pynvml`` surface the clock actuator uses).

FAKE because there is no GPU here, and because tests must never change a real GPU's clocks. It models what the
actuator depends on: H100-like supported clocks (345-1980 MHz in 15 MHz steps), a locked-clock state per GPU,
permission errors, and a call log (optionally appended to a file, so a killed subprocess leaves evidence).
"""

from __future__ import annotations

from pathlib import Path


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


NVML_ERROR_NO_PERMISSION = 4


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, n_gpus: int = 2, *, permitted: bool = True, log_path: Path | None = None) -> None:
        self.n_gpus = n_gpus
        self.permitted = permitted
        self.log_path = log_path
        self.calls: list[tuple] = []
        self.locked: dict[int, int | None] = dict.fromkeys(range(n_gpus))

    def _log(self, *call: object) -> None:
        self.calls.append(call)
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(" ".join(map(str, call)) + "\n")

    def nvmlInit(self) -> None:
        self._log("init")

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < self.n_gpus:
            raise NVMLError(2)
        return i

    def nvmlDeviceGetSupportedMemoryClocks(self, h: int) -> list[int]:
        return [2619]

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: int, mem: int) -> list[int]:
        return list(range(1980, 344, -15))

    def nvmlDeviceSetGpuLockedClocks(self, h: int, lo: int, hi: int) -> None:
        if not self.permitted:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        self.locked[h] = hi
        self._log("set", h, lo, hi)

    def nvmlDeviceResetGpuLockedClocks(self, h: int) -> None:
        self.locked[h] = None
        self._log("reset", h)
