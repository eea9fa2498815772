"""GPU catalogue: datasheet numbers plus the calibration that turns them into achieved rates and watts.

Every number here has its source in docs/perf_model.md ("Numbers and sources"). Hardware facts come from the
vendor datasheets; the ``GpuCalibration`` of the H100/H200 comes from our own NVML measurements on an H200
(``data/measurements_h200.json``, fitted by ``scripts/calibrate/fit_calibration.py``); the other GPUs' calibration
is the same recipe with published figures or stated assumptions, marked as such in the docs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rlserve.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GpuCalibration:
    """How close to the datasheet a real inference stack gets, and how power splits, on one GPU model.

    Efficiencies are fractions of the datasheet peak *at the clock the work runs at* (compute) or at the max
    clock (memory). Power figures are per GPU, in watts, at the max SM clock; ``rlserve.perf.frequency`` scales
    them to other clocks.
    """

    eff_compute_linear: float  # dense GEMMs of the linear layers, fraction of peak at the running clock
    eff_compute_attn: float  # prefill attention (FlashAttention-style kernels)
    eff_mem_linear: float  # weight streaming of small-batch GEMMs (averaged over a layer's shapes)
    eff_mem_attn: float  # KV-cache reads of decode attention
    eff_mem_elementwise: float  # norms, activations, rotary, cache writes: plain streaming kernels
    layer_overhead_s: float  # per layer and iteration: launch gaps and tails of the ~10 small kernels
    awake_power_w: float  # clocks at max, nothing to do (between kernels, during CPU scheduling)
    dyn_mem_power_w: float  # extra watts while streaming HBM at the achievable bandwidth, at max clock
    sustained_gemm_clock_mhz: float  # where the power limiter settles during long dense GEMMs at default clocks
    allreduce_latency_s: float  # per all-reduce call, small messages (tensor parallel)
    link_efficiency: float  # achieved fraction of the per-direction link bandwidth in ring all-reduce
    source: str  # one line: where these numbers come from
    # optional refinements (None = the general value above); set from a scenario's perf: section or a calibration
    eff_compute_linear_decode: float | None = None  # GEMMs in decode-only iterations (else eff_compute_linear)
    eff_compute_attn_decode: float | None = None  # decode attention compute (else eff_compute_attn)
    allreduce_bandwidth_gbps: float | None = None  # achieved all-reduce GB/s (else link x link_efficiency)


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU model: datasheet numbers (per GPU) and its calibration."""

    name: str
    peak_tflops: float  # dense 16-bit tensor-core peak (bf16; fp16 on V100, which has no bf16)
    mem_bandwidth_gbps: float  # HBM/GDDR bandwidth, GB/s (1e9 bytes)
    memory_bytes: int  # device memory as the driver reports it (what vLLM's profiler starts from)
    sm_clock_min_mhz: float
    sm_clock_max_mhz: float
    sm_clock_step_mhz: float  # supported application clocks are min + k * step
    idle_power_w: float  # no work, clocks parked (what a replica with no requests draws)
    max_power_w: float  # board power limit (TDP)
    link_bandwidth_gbps: float  # per direction, per GPU: NVLink, or PCIe for PCIe cards
    calibration: GpuCalibration

    @property
    def memory_gib(self) -> float:
        """Device memory in GiB."""
        return self.memory_bytes / (1024**3)

    def snap_clock(self, mhz: float) -> float:
        """The supported SM clock nearest to ``mhz``; ConfigError outside the GPU's range."""
        lo, hi, step = self.sm_clock_min_mhz, self.sm_clock_max_mhz, self.sm_clock_step_mhz
        if not lo - step / 2 <= mhz <= hi + step / 2:
            raise ConfigError(f"SM clock {mhz} MHz is outside {self.name}'s range {lo:g}-{hi:g} MHz; pick one in it")
        return min(hi, lo + round((mhz - lo) / step) * step)

    def supported_clocks_mhz(self) -> list[float]:
        """All supported SM clocks, ascending (what an energy controller may choose from)."""
        n = round((self.sm_clock_max_mhz - self.sm_clock_min_mhz) / self.sm_clock_step_mhz)
        return [self.sm_clock_min_mhz + k * self.sm_clock_step_mhz for k in range(n + 1)]


# H200 measurement fit (scripts/calibrate/fit_calibration.py on data/measurements_h200.json).
_HOPPER = GpuCalibration(
    eff_compute_linear=0.80, eff_compute_attn=0.53, eff_mem_linear=0.69, eff_mem_attn=0.94,
    eff_mem_elementwise=0.89, layer_overhead_s=24e-6, awake_power_w=121.0, dyn_mem_power_w=338.0,
    sustained_gemm_clock_mhz=1545.0, allreduce_latency_s=8e-6, link_efficiency=0.75,
    source="measured on an H200 (data/measurements_h200.json); H100 shares the die, clocks and TDP",
)

# Memory dynamic power of the other GPUs: the H200's watts per GB/s (338 W / 4800 GB/s = 70 pJ/B) times their
# bandwidth, an assumption (docs/perf_model.md).
_W_PER_GBPS = 338.0 / 4800.0

_GPUS: dict[str, GpuSpec] = {
    "a100-80gb": GpuSpec(
        name="a100-80gb", peak_tflops=312.0, mem_bandwidth_gbps=2039.0, memory_bytes=81920 * MIB,
        sm_clock_min_mhz=210.0, sm_clock_max_mhz=1410.0, sm_clock_step_mhz=15.0, idle_power_w=55.0,
        max_power_w=400.0, link_bandwidth_gbps=300.0,
        calibration=GpuCalibration(
            eff_compute_linear=0.80, eff_compute_attn=0.6, eff_mem_linear=0.78, eff_mem_attn=0.85,
            eff_mem_elementwise=0.89, layer_overhead_s=24e-6, awake_power_w=90.0,
            dyn_mem_power_w=_W_PER_GBPS * 2039.0, sustained_gemm_clock_mhz=1275.0, allreduce_latency_s=10e-6,
            link_efficiency=0.75, source="published A100 figures and assumptions (docs/perf_model.md)"),
    ),
    "h100-sxm": GpuSpec(
        name="h100-sxm", peak_tflops=989.4, mem_bandwidth_gbps=3350.0, memory_bytes=81559 * MIB,
        sm_clock_min_mhz=345.0, sm_clock_max_mhz=1980.0, sm_clock_step_mhz=15.0, idle_power_w=70.0,
        max_power_w=700.0, link_bandwidth_gbps=450.0,
        calibration=replace(_HOPPER, awake_power_w=115.0, dyn_mem_power_w=_W_PER_GBPS * 3350.0,
                            source="H200 measurements; awake and memory power scaled (docs/perf_model.md)"),
    ),
    "h200": GpuSpec(
        name="h200", peak_tflops=989.4, mem_bandwidth_gbps=4800.0, memory_bytes=150754820096,
        sm_clock_min_mhz=345.0, sm_clock_max_mhz=1980.0, sm_clock_step_mhz=15.0, idle_power_w=77.0,
        max_power_w=700.0, link_bandwidth_gbps=450.0, calibration=_HOPPER,
    ),
    "a40": GpuSpec(
        name="a40", peak_tflops=149.7, mem_bandwidth_gbps=696.0, memory_bytes=46068 * MIB,
        sm_clock_min_mhz=210.0, sm_clock_max_mhz=1740.0, sm_clock_step_mhz=15.0, idle_power_w=30.0,
        max_power_w=300.0, link_bandwidth_gbps=32.0,
        calibration=GpuCalibration(
            eff_compute_linear=0.8, eff_compute_attn=0.55, eff_mem_linear=0.75, eff_mem_attn=0.85,
            eff_mem_elementwise=0.85, layer_overhead_s=24e-6, awake_power_w=75.0,
            dyn_mem_power_w=_W_PER_GBPS * 696.0, sustained_gemm_clock_mhz=1485.0, allreduce_latency_s=20e-6,
            link_efficiency=0.7, source="datasheet and assumptions (docs/perf_model.md)"),
    ),
    "l40s": GpuSpec(
        name="l40s", peak_tflops=362.05, mem_bandwidth_gbps=864.0, memory_bytes=46068 * MIB,
        sm_clock_min_mhz=210.0, sm_clock_max_mhz=2520.0, sm_clock_step_mhz=15.0, idle_power_w=35.0,
        max_power_w=350.0, link_bandwidth_gbps=32.0,
        calibration=GpuCalibration(
            eff_compute_linear=0.8, eff_compute_attn=0.55, eff_mem_linear=0.75, eff_mem_attn=0.85,
            eff_mem_elementwise=0.85, layer_overhead_s=24e-6, awake_power_w=90.0,
            dyn_mem_power_w=_W_PER_GBPS * 864.0, sustained_gemm_clock_mhz=2145.0, allreduce_latency_s=20e-6,
            link_efficiency=0.7, source="datasheet and assumptions (docs/perf_model.md)"),
    ),
    "v100": GpuSpec(
        name="v100", peak_tflops=125.0, mem_bandwidth_gbps=900.0, memory_bytes=32768 * MIB,
        sm_clock_min_mhz=135.0, sm_clock_max_mhz=1530.0, sm_clock_step_mhz=7.5, idle_power_w=40.0,
        max_power_w=300.0, link_bandwidth_gbps=150.0,
        calibration=GpuCalibration(
            eff_compute_linear=0.75, eff_compute_attn=0.45, eff_mem_linear=0.75, eff_mem_attn=0.8,
            eff_mem_elementwise=0.85, layer_overhead_s=30e-6, awake_power_w=65.0,
            dyn_mem_power_w=_W_PER_GBPS * 900.0, sustained_gemm_clock_mhz=1380.0, allreduce_latency_s=10e-6,
            link_efficiency=0.75, source="datasheet and assumptions (docs/perf_model.md)"),
    ),
}

_ALIASES = {
    "a100": "a100-80gb", "a100-sxm": "a100-80gb", "a100-sxm4-80gb": "a100-80gb", "a100-80gb-sxm": "a100-80gb",
    "h100": "h100-sxm", "h100-80gb": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb-hbm3": "h100-sxm",
    "h200-sxm": "h200", "h200-141gb": "h200",
    "l40s-48gb": "l40s", "a40-48gb": "a40",
    "v100-sxm2": "v100", "v100-sxm2-32gb": "v100", "v100-32gb": "v100",
}


def _normalise(name: str) -> str:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    for prefix in ("nvidia-", "tesla-"):
        key = key.removeprefix(prefix)
    return key


def get_gpu(name: str) -> GpuSpec:
    """The catalogue entry for ``name`` (case-insensitive; aliases and NVML names such as 'NVIDIA H200' work)."""
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    try:
        return _GPUS[key]
    except KeyError:
        raise ConfigError(f"unknown GPU {name!r}; known: {', '.join(sorted(_GPUS))}") from None


def gpu_names() -> list[str]:
    """Canonical names of the catalogued GPUs."""
    return sorted(_GPUS)
