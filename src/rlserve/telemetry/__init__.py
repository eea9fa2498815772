"""Telemetry: monitors for vLLM ``/metrics``, GPUs (NVML) and CPUs (RAPL, psutil), time-aligned by a recorder.

Every monitor has the same small API (:class:`Monitor`): ``start()``/``stop()`` (or ``with``), ``current()``,
``trace()``, ``gaps()``, and Zeus-style ``begin_window(name)``/``end_window(name) -> Measurement``.
"""

from rlserve.telemetry.cpu import CpuMonitor, CpuSample, RaplEnergy, RaplZone, discover_rapl_zones
from rlserve.telemetry.gpu import GpuMonitor, GpuSample, NullGpuMonitor, make_gpu_monitor, nvml_probe
from rlserve.telemetry.monitor import Gap, Measurement, Monitor
from rlserve.telemetry.recorder import Recorder
from rlserve.telemetry.replay import ReplayMonitor, TelemetryLog
from rlserve.telemetry.state import STATE_DIM, StateScales, StateVector, build_energy_state
from rlserve.telemetry.vllm_metrics import VllmMetrics, VllmMetricsMonitor, VllmSample, parse_vllm_metrics

__all__ = [
    "STATE_DIM", "CpuMonitor", "CpuSample", "Gap", "GpuMonitor", "GpuSample", "Measurement", "Monitor",
    "NullGpuMonitor", "RaplEnergy", "RaplZone", "Recorder", "ReplayMonitor", "StateScales", "StateVector",
    "TelemetryLog", "VllmMetrics", "VllmMetricsMonitor", "VllmSample", "build_energy_state", "discover_rapl_zones",
    "make_gpu_monitor", "nvml_probe", "parse_vllm_metrics",
]
