import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlserve.errors import InputError
from rlserve.telemetry.cpu import CpuMonitor
from rlserve.telemetry.gpu import GpuMonitor, gpu_power_stats
from rlserve.telemetry.recorder import Recorder
from rlserve.telemetry.replay import ReplayMonitor, TelemetryLog
from rlserve.telemetry.state import build_energy_state
from rlserve.telemetry.vllm_metrics import VllmMetricsMonitor
from rlserve.testing.fake_openai_server import serve_in_thread

# Recorded on an NVIDIA H200 (driver 580.159.04) by benchmarks/gpu_energy_check.py: idle, bf16 matmuls, a
# random-weight transformer generating, bursty matmuls (200 ms on/off), idle; 50 ms GPU sampling.
H200_LOG = Path(__file__).parents[1] / "fixtures" / "telemetry" / "h200_gpu_energy_log.jsonl"


def test_recorder_log_roundtrip_and_sections(tmp_path, fake_nvml):
    # GPU via fake NVML (no GPU here); vLLM metrics over real HTTP from the fake server; CPU without RAPL.
    with serve_in_thread() as server:
        rec = Recorder(vllm=VllmMetricsMonitor(server.base_url, interval_s=0.5),
                       gpu=GpuMonitor([0], nvml=fake_nvml), cpu=CpuMonitor(powercap_root=tmp_path / "none"))
        rec.t0_s = None
        for m in rec.monitors.values():  # drive sampling by hand: deterministic, no thread timing
            m.sample_now()
        rec.begin_window("run")
        fake_nvml.energy_mj[0] += 42_000
        for m in rec.monitors.values():
            m.sample_now()
        meas = rec.end_window("run")
        for m in rec.monitors.values():
            m.stop()
    assert meas.gpu_energy_j == pytest.approx(42.0) and meas.cpu_energy_j is None
    assert meas.energy_j == pytest.approx(42.0)
    sections = rec.result_sections()
    json.dumps(sections, allow_nan=False)  # JSON-safe: NaN became null
    assert sections["kv_cache_monitoring_stats"]["samples_collected"] == 2
    assert sections["gpu_power_stats"]["0"]["samples"] == 2
    assert sections["cpu_power_stats"]["cpu_power_source"] == "unavailable"
    assert sections["telemetry"]["gpu"]["energy_source"] == "nvml_energy_counter"

    path = rec.save_log(tmp_path / "log.jsonl", meta={"test": True})
    log = TelemetryLog.load(path)
    assert log.header["meta"] == {"test": True}
    assert [w.name for w in log.windows] == ["run"] and log.windows[0].measurement.gpu_energy_j == pytest.approx(42)
    gpu = ReplayMonitor.from_log(log, "gpu")
    assert len(gpu.trace()) == 2 and gpu.trace()[1].energy_j == pytest.approx((42.0,))
    cpu = ReplayMonitor.from_log(log, "cpu")
    assert math.isnan(cpu.trace()[0].power_w)
    vllm = ReplayMonitor.from_log(log, "vllm")
    assert vllm.trace()[0].num_gpu_blocks == 4096


def test_aligned_grid_zero_order_hold(fake_nvml):
    rec = Recorder(gpu=GpuMonitor([0], nvml=fake_nvml))
    rec.t0_s = 100.0
    for t, p in [(100.0, 100_000), (100.25, 300_000)]:
        fake_nvml.power_mw[0] = p
        rec.gpu._samples.append(rec.gpu._sample(t))  # type: ignore[union-attr]
    cols = rec.aligned(0.1, {"gpu": ["power_w"]})
    np.testing.assert_allclose(cols["t_s"], [0.0, 0.1, 0.2])
    np.testing.assert_allclose(cols["gpu.power_w"][:, 0], [100.0, 100.0, 100.0])


def test_bad_log_is_an_input_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"type": "sample", "monitor": "gpu"}\n')
    with pytest.raises(InputError):
        TelemetryLog.load(p)
    p.write_text('{"hello": 1}\n')
    with pytest.raises(InputError):
        TelemetryLog.load(p)


def test_h200_replay_reproduces_live_counter_windows():
    log = TelemetryLog.load(H200_LOG)
    gpu = ReplayMonitor.from_log(log, "gpu")
    assert gpu.static_info()["energy_source"] == "nvml_energy_counter"
    by_name = {w.name: w for w in log.windows}
    assert list(by_name) == ["idle_start", "matmul", "transformer", "bursty", "idle_end"]
    for w in log.windows[:-1]:  # the last window ends after the final sample
        replayed = gpu.measure(w.t_begin_s, w.t_end_s).gpu_energy_j
        assert replayed == pytest.approx(w.measurement.gpu_energy_j, rel=0.02)
    assert by_name["matmul"].measurement.gpu_energy_j > 10 * by_name["idle_start"].measurement.gpu_energy_j


def test_h200_power_integration_is_not_energy():
    """Why energy comes from the counter: NVML power refreshes ~every 100 ms and lags after load stops."""
    log = TelemetryLog.load(H200_LOG)
    gpu = ReplayMonitor.from_log(log, "gpu")
    idle_end = next(w for w in log.windows if w.name == "idle_end")
    samples = gpu.trace(idle_end.t_begin_s, idle_end.t_end_s)
    stats = gpu_power_stats(samples, [0], 0.0, "nvml_energy_counter")["0"]
    # Right after the load the (averaged) power reading still shows hundreds of watts the counter never saw.
    assert stats["power_integrated_energy_j"] > 1.2 * stats["energy_j"]
    # At 50 ms sampling about half the samples see a new power value (refresh period ~100 ms).
    assert 0.3 < stats["power_changes"] / (stats["samples"] - 1) < 0.7


def test_h200_replay_feeds_the_energy_state():
    log = TelemetryLog.load(H200_LOG)
    gpu = ReplayMonitor.from_log(log, "gpu")
    matmul = next(w for w in log.windows if w.name == "matmul")
    gpu.seek(0.5 * (matmul.t_begin_s + matmul.t_end_s))
    x = build_energy_state(gpu.current()).normalized()
    assert x[0] > 0.4 and x[1] > 0.5  # hundreds of watts, busy SMs
    gpu.seek(-1.0)
    assert gpu.current() is None
