"""Fixtures for the telemetry tests.

``fake_nvml`` is a stand-in for the ``pynvml`` module: this machine has no NVIDIA GPU or driver, so the GPU monitor
is exercised against an object whose counters the test sets explicitly. The real NVML path was run on an H100
(see tests/fixtures/telemetry/ and docs/telemetry.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest


class FakeNvmlError(Exception):
    pass


class FakeNvmlNotSupported(FakeNvmlError):
    pass


@dataclass
class FakeNvml:
    """Module-like fake of pynvml with settable per-GPU readings."""

    count: int = 2
    power_mw: list[float] = field(default_factory=lambda: [100_000.0, 200_000.0])
    energy_mj: list[float] = field(default_factory=lambda: [5_000_000.0, 7_000_000.0])
    has_counter: bool = True
    fail_reads: bool = False
    init_error: bool = False
    NVMLError = FakeNvmlError
    NVMLError_NotSupported = FakeNvmlNotSupported
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_FI_DEV_POWER_INSTANT = 186

    def __hash__(self) -> int:  # nvml_probe caches per module object
        return id(self)

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNvmlError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Fake H100"

    def _check(self) -> None:
        if self.fail_reads:
            raise FakeNvmlError("GPU is lost")

    def nvmlDeviceGetPowerUsage(self, h: int) -> float:
        self._check()
        return self.power_mw[h]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> float:
        self._check()
        if not self.has_counter:
            raise FakeNvmlNotSupported("Not Supported")
        return self.energy_mj[h]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        self._check()
        return SimpleNamespace(gpu=50 + h, memory=20 + h)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(used=30 * 2**30, total=80 * 2**30, free=50 * 2**30)

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1980

    def nvmlDeviceGetTemperature(self, h: int, kind: int) -> int:
        return 40

    def nvmlDeviceGetFieldValues(self, h: int, ids: list[int]) -> list[SimpleNamespace]:
        return [SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=int(self.power_mw[h]) + 1000))]


@pytest.fixture
def fake_nvml() -> FakeNvml:
    return FakeNvml()
