"""The energy controller's 10-dimensional observation, built from monitor samples.

Dimensions and default normalisation follow the seed (section 4.1), each value divided by its scale and clipped
to [0, 1] (a value beyond its scale saturates rather than leaving the network's input range):

====  ==========================  ============================  =====================================
dim   feature                     source                        default scale
====  ==========================  ============================  =====================================
0     GPU power, sum over GPUs    NVML power (W)                ``gpu_power_w = 1000`` W
1     GPU utilisation, mean       NVML utilization.gpu (%)      100 %
2     GPU memory utilisation      NVML memory used / total (%)  100 %
3     CPU power                   RAPL package + DRAM (W)       ``cpu_power_w = 200`` W
4     CPU utilisation             psutil cpu_times (%)          100 %
5     requests running            vllm:num_requests_running     ``requests = 50``
6     requests waiting            vllm:num_requests_waiting     ``requests = 50``
7     KV cache usage              vllm:kv_cache_usage_perc      1 (already a fraction in [0, 1])
8     request throughput          d request_success_total / dt  ``request_rate_per_s = 20`` req/s
9     token throughput            d generation_tokens_total/dt  ``token_rate_per_s = 2000`` tok/s
====  ==========================  ============================  =====================================

GPU memory utilisation is the memory *capacity* in use, as the seed's "显存利用率" says; under vLLM it sits near
``--gpu-memory-utilization`` (the snapshot-based builder in ``rlserve.policies.energy.state``, which the deployed
controller uses, puts that constant there, so both agree). Token throughput counts generated (output) tokens,
the unit of energy per token. A source that was not measured (no NVML, no RAPL, no sample yet) contributes 0, as
in the seed, and :attr:`StateVector.measured` says which features were real so a caller can tell 0 W from
"no data".
Scale the constants per deployment with :class:`StateScales` (e.g. ``gpu_power_w = n_gpus * TDP``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from rlserve.errors import ConfigError
from rlserve.telemetry.cpu import CpuSample
from rlserve.telemetry.gpu import GpuSample
from rlserve.telemetry.vllm_metrics import VllmSample

STATE_DIM = 10


@dataclass(frozen=True)
class StateScales:
    """Normalisation constants (the value that maps to 1.0); defaults are the seed's."""

    gpu_power_w: float = 1000.0
    cpu_power_w: float = 200.0
    requests: float = 50.0
    request_rate_per_s: float = 20.0
    token_rate_per_s: float = 2000.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ConfigError(f"state scale {f.name} must be > 0, got {getattr(self, f.name)!r}")


@dataclass(frozen=True)
class StateVector:
    """The 10 features in physical units (NaN = not measured); :meth:`normalized` gives the network input."""

    gpu_power_w: float
    gpu_util_pct: float
    gpu_mem_util_pct: float
    cpu_power_w: float
    cpu_util_pct: float
    requests_running: float
    requests_waiting: float
    kv_cache_usage: float
    request_throughput_per_s: float
    token_throughput_per_s: float

    @staticmethod
    def feature_names() -> tuple[str, ...]:
        """Names of the 10 dimensions, in order."""
        return tuple(f.name for f in fields(StateVector))

    def values(self) -> np.ndarray:
        """Raw values in physical units (float64, NaN where not measured)."""
        return np.array([getattr(self, n) for n in self.feature_names()], dtype=np.float64)

    @property
    def measured(self) -> np.ndarray:
        """Boolean mask: which features came from a real measurement."""
        return np.isfinite(self.values())

    def normalized(self, scales: StateScales | None = None) -> np.ndarray:
        """The observation: float32 ``(10,)`` in [0, 1], unmeasured features as 0 (the seed's convention)."""
        s = scales or StateScales()
        divisors = np.array([s.gpu_power_w, 100.0, 100.0, s.cpu_power_w, 100.0, s.requests, s.requests, 1.0,
                             s.request_rate_per_s, s.token_rate_per_s], dtype=np.float64)
        v = np.nan_to_num(self.values(), nan=0.0, posinf=0.0, neginf=0.0) / divisors
        return np.clip(v, 0.0, 1.0).astype(np.float32)


def _mean(values: tuple[float, ...]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def build_energy_state(gpu: GpuSample | None = None, cpu: CpuSample | None = None,
                       vllm: VllmSample | None = None) -> StateVector:
    """Assemble the state from the latest sample of each monitor (any may be ``None``: not measured)."""
    nan = math.nan
    return StateVector(
        gpu_power_w=float(sum(gpu.power_w)) if gpu is not None and gpu.power_w else nan,
        gpu_util_pct=_mean(gpu.gpu_util_pct) if gpu is not None else nan,
        gpu_mem_util_pct=_mean(gpu.mem_used_pct) if gpu is not None else nan,
        cpu_power_w=cpu.power_w if cpu is not None else nan,
        cpu_util_pct=cpu.util_pct if cpu is not None else nan,
        requests_running=vllm.num_requests_running if vllm is not None else nan,
        requests_waiting=vllm.num_requests_waiting if vllm is not None else nan,
        kv_cache_usage=vllm.kv_cache_usage if vllm is not None else nan,
        request_throughput_per_s=vllm.request_throughput_per_s if vllm is not None else nan,
        token_throughput_per_s=vllm.generation_tokens_per_s if vllm is not None else nan,
    )
