import math

import pytest

from rlserve.errors import ConfigError, TelemetryUnavailable
from rlserve.telemetry.gpu import GpuMonitor, NullGpuMonitor, gpu_power_stats, make_gpu_monitor, nvml_probe


def test_real_nvml_absent_gives_clear_reason():
    status = nvml_probe()
    if status.available:
        pytest.skip("this machine has a working NVIDIA driver")
    mon = make_gpu_monitor([0])
    assert isinstance(mon, NullGpuMonitor)
    assert "NVML" in mon.reason or "nvidia-ml-py" in mon.reason
    with pytest.raises(TelemetryUnavailable, match="required"):
        make_gpu_monitor([0], required=True)


def test_null_monitor_measures_time_but_no_energy():
    mon = NullGpuMonitor("no GPU data: test")
    mon.start()
    mon.begin_window("w")
    m = mon.end_window("w")
    mon.stop()
    assert m.gpu_energy_j is None and m.energy_j is None and m.time_s >= 0
    assert mon.trace() == [] and mon.current() is None


def test_driver_missing_in_fake_nvml_falls_back_to_null(fake_nvml):
    fake_nvml.init_error = True
    mon = make_gpu_monitor(None, nvml=fake_nvml)
    assert isinstance(mon, NullGpuMonitor) and "Driver Not Loaded" in mon.reason


def test_energy_comes_from_the_counter_not_power_times_time(fake_nvml):
    mon = make_gpu_monitor([0, 1], nvml=fake_nvml)
    assert isinstance(mon, GpuMonitor) and mon.energy_source == "nvml_energy_counter"
    mon.begin_window("step")
    # Power reads 100 W / 200 W throughout, but the counters say 1,234 J and 10 J were spent: trust the counters.
    fake_nvml.energy_mj[0] += 1_234_000
    fake_nvml.energy_mj[1] += 10_000
    m = mon.end_window("step")
    assert m.energy_by_device_j == pytest.approx({"gpu0": 1234.0, "gpu1": 10.0})
    assert m.gpu_energy_j == pytest.approx(1244.0) and m.cpu_energy_j is None


def test_samples_carry_units_and_cumulative_energy(fake_nvml):
    mon = GpuMonitor([1], nvml=fake_nvml)
    s0 = mon.sample_now()
    fake_nvml.energy_mj[1] += 2_500
    fake_nvml.power_mw[1] = 250_000
    s1 = mon.sample_now()
    assert s0 is not None and s1 is not None
    assert s0.power_w == (200.0,) and s1.power_w == (250.0,)
    assert s0.energy_j == (0.0,) and s1.energy_j == pytest.approx((2.5,))
    assert s1.gpu_util_pct == (51.0,) and s1.mem_util_pct == (21.0,) and s1.sm_clock_mhz == (1980.0,)
    assert s1.power_instant_w == (251.0,) and s1.mem_used_pct == pytest.approx((37.5,))


def test_without_counter_energy_is_integrated_power_and_labelled(fake_nvml):
    fake_nvml.has_counter = False
    mon = GpuMonitor([0], nvml=fake_nvml)
    assert mon.energy_source == "power_integration"
    mon._sample(10.0)
    s = mon._sample(12.0)  # 100 W for 2 s (trapezoid of two equal readings)
    assert s.energy_j == pytest.approx((200.0,))


def test_read_failures_are_gaps_not_crashes(fake_nvml):
    mon = GpuMonitor([0], nvml=fake_nvml)
    fake_nvml.fail_reads = True
    assert mon.sample_now() is None
    assert mon.gap_counts() == {"BackendError": 1}


def test_bad_gpu_ids_are_a_config_error(fake_nvml):
    with pytest.raises(ConfigError, match="GPUs 0..1"):
        GpuMonitor([0, 5], nvml=fake_nvml)


def test_gpu_power_stats_keep_seed_units_and_count_power_changes(fake_nvml):
    mon = GpuMonitor([0], nvml=fake_nvml)
    samples = []
    for t, p in [(0.0, 100_000), (0.05, 100_000), (0.10, 150_000), (0.15, 150_000), (0.20, 120_000)]:
        fake_nvml.power_mw[0] = p
        fake_nvml.energy_mj[0] += 6_000
        samples.append(mon._sample(t))
    stats = gpu_power_stats(samples, [0], t0_s=0.0, energy_source=mon.energy_source)["0"]
    assert stats["avg_power"] == pytest.approx(124_000.0)  # mW, as in the seed
    assert stats["avg_power_w"] == pytest.approx(124.0)
    assert stats["power_changes"] == 2 and stats["samples"] == 5
    assert stats["energy_j"] == pytest.approx(24.0)
    assert stats["power_integrated_energy_j"] == pytest.approx(0.05 * (100 + 125 + 150 + 135))
    assert stats["power_trace"][2] == 150_000.0 and stats["trace_t_s"][-1] == pytest.approx(0.2)
    assert not math.isnan(stats["avg_gpu_util"])
