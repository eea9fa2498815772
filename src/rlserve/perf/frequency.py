"""How speed and power change with the SM clock (pure functions of the clock fraction ``x = f / f_max``).

- Compute (tensor-core) throughput scales with the clock it actually runs at: ``min(x, x_sustained)``, where
  ``x_sustained`` is where the board power limit holds long dense GEMMs (measured on an H200: ~1545 MHz of 1980).
- Achievable memory bandwidth barely depends on the SM clock until the SMs can no longer keep enough loads in
  flight: ``mem_bandwidth_scale(x) = g(x) / g(1)`` with ``g(x) = x / (x**4 + k**4) ** (1/4)``, ``k = 0.3``
  (~1.3% lower at 60% clock, ~43% lower at the H100/H200 minimum of 345 MHz).
- Dynamic power follows ``P ∝ f V(f)^2`` with a voltage floor below ``VOLTAGE_KNEE`` of the max clock and a
  linear rise to the max voltage above it.
- Memory-active power has a half proportional to the achieved bandwidth (HBM, PHY: constant energy per byte)
  and a half that scales like the SMs issuing the loads; this split reproduces the ~30% decode-energy saving
  that clock locking gives on an H200 at a small throughput loss (Ma et al. 2026).

Sources and the reasoning behind every constant: docs/perf_model.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from rlserve.errors import ConfigError
from rlserve.perf.gpus import GpuSpec

VOLTAGE_FLOOR = 0.65  # V_min / V_max
VOLTAGE_KNEE = 0.45  # clock fraction below which the voltage stays at its floor
MEM_KNEE = 0.3  # clock fraction where the SMs start to limit achievable bandwidth
MEM_KNEE_SHARPNESS = 4.0
MEM_POWER_FIXED_SHARE = 0.5  # share of memory-active power set by bytes moved (HBM), not by the SM clock
GEMM_MEM_ACTIVITY = 0.1  # fraction of a long GEMM's time the memory system is busy (prefill-shaped work)


def voltage_ratio(x: float) -> float:
    """V(x) / V(1): flat at the floor up to the knee, then linear to 1 at the max clock."""
    if x <= VOLTAGE_KNEE:
        return VOLTAGE_FLOOR
    return VOLTAGE_FLOOR + (1.0 - VOLTAGE_FLOOR) * (x - VOLTAGE_KNEE) / (1.0 - VOLTAGE_KNEE)


def clock_power_factor(x: float) -> float:
    """Dynamic power at clock fraction x relative to the max clock: x V(x)^2 / V(1)^2."""
    v = voltage_ratio(x)
    return x * v * v


def _g(x: float, knee: float) -> float:
    return x / (x**MEM_KNEE_SHARPNESS + knee**MEM_KNEE_SHARPNESS) ** (1.0 / MEM_KNEE_SHARPNESS)


def mem_bandwidth_scale(x: float, knee: float = MEM_KNEE) -> float:
    """Achievable memory bandwidth at clock fraction x relative to the max clock (1 at x = 1)."""
    return _g(x, knee) / _g(1.0, knee)


@dataclass(frozen=True)
class PowerSplit:
    """How memory-bound (decode) work responds to the SM clock: the two constants the saving rests on.

    ``mem_power_fixed_share``: share of memory-active power set by bytes moved (HBM/PHY), which a lower SM clock
    does not reduce; ``mem_knee``: clock fraction below which the SMs limit achievable bandwidth (decode slows).
    ``default`` reproduces ~30% decode-energy saving on an H200 at ~1.2 GHz (Ma et al. 2026, up to 32%);
    ``pessimistic`` (a scenario option, ``power_split: pessimistic``) keeps 80% of memory power fixed and
    moves the knee to 0.4, so H200 decode saves at most ~27% (default: ~41%) and slows ~6% (default: 2%) at
    1 GHz, bracketing the A100 measurements that show decode slowing more at low clocks (VoltanaLLM) and the
    lower published H200 figures (docs/energy.md).
    """

    mem_power_fixed_share: float = MEM_POWER_FIXED_SHARE
    mem_knee: float = MEM_KNEE

    def __post_init__(self) -> None:
        if not 0 <= self.mem_power_fixed_share <= 1 or not 0 < self.mem_knee < 1:
            raise ConfigError(f"power split needs 0 <= mem_power_fixed_share <= 1 and 0 < mem_knee < 1, got {self}")


POWER_SPLITS: dict[str, PowerSplit] = {
    "default": PowerSplit(),
    "pessimistic": PowerSplit(mem_power_fixed_share=0.8, mem_knee=0.4),
}


def get_power_split(name: str) -> PowerSplit:
    """A named power split (:data:`POWER_SPLITS`); ConfigError naming the choices otherwise."""
    try:
        return POWER_SPLITS[name]
    except KeyError:
        raise ConfigError(f"unknown power_split {name!r}; choose one of: {', '.join(POWER_SPLITS)}") from None


def awake_power_w(gpu: GpuSpec, x: float) -> float:
    """Power of one GPU that is clocked up at fraction x but has no work (between kernels, CPU-side gaps)."""
    cal = gpu.calibration
    return gpu.idle_power_w + (cal.awake_power_w - gpu.idle_power_w) * clock_power_factor(x)


def dyn_mem_power_w(gpu: GpuSpec, x: float) -> float:
    """Extra power of one GPU while its memory system streams at the bandwidth achievable at clock fraction x.

    The HBM/PHY share is proportional to the achieved bandwidth (a fixed energy per byte); the rest is the SMs
    and caches issuing the loads, which scale like other logic with ``x V(x)^2``.
    """
    share = MEM_POWER_FIXED_SHARE
    return gpu.calibration.dyn_mem_power_w * (share * mem_bandwidth_scale(x) + (1.0 - share) * clock_power_factor(x))


def sustained_compute_fraction(gpu: GpuSpec) -> float:
    """Clock fraction at which long dense GEMMs run under the power limit (the most compute can use)."""
    return min(1.0, gpu.calibration.sustained_gemm_clock_mhz / gpu.sm_clock_max_mhz)


@lru_cache(maxsize=64)
def dyn_compute_power_max_w(gpu: GpuSpec) -> float:
    """Tensor-core dynamic power of one GPU at the max clock, were the power limit absent.

    Derived, not free: it is the value for which a GEMM-bound GPU at the sustained clock draws exactly the
    board limit (idle + awake + compute + a little memory traffic = TDP), which is what the limiter enforces.
    """
    xs = sustained_compute_fraction(gpu)
    headroom = gpu.max_power_w - awake_power_w(gpu, xs) - GEMM_MEM_ACTIVITY * dyn_mem_power_w(gpu, xs)
    return max(0.0, headroom) / clock_power_factor(xs)


def dyn_compute_power_w(gpu: GpuSpec, x: float) -> float:
    """Extra power of one GPU while its tensor cores are fully busy at clock fraction x."""
    return dyn_compute_power_max_w(gpu) * clock_power_factor(x)
