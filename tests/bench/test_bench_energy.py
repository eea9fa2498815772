"""Energy per token under load (rlserve.bench.energy). This machine has no NVIDIA GPU or driver and no readable
RAPL, so the GPU side runs against the telemetry tests' fake NVML module (tests/telemetry/conftest.py, loaded by
path: counters set by the test) and the CPU side against a fake powercap directory with the kernel's layout. The
real NVML path was run on an H200 (docs/telemetry.md)."""

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlserve.bench.energy import NVML_COUNTER_RESOLUTION_J, energy_report, phase_split
from rlserve.bench.request import RequestOutput
from rlserve.bench.runner import BenchRun
from rlserve.telemetry.cpu import CpuMonitor
from rlserve.telemetry.gpu import GpuMonitor
from rlserve.telemetry.monitor import Measurement
from rlserve.telemetry.recorder import Recorder

_spec = importlib.util.spec_from_file_location("telemetry_conftest",
                                               Path(__file__).parents[1] / "telemetry" / "conftest.py")
assert _spec is not None and _spec.loader is not None
telemetry_conftest = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("telemetry_conftest", telemetry_conftest)  # dataclasses look their module up there
_spec.loader.exec_module(telemetry_conftest)
FakeNvml = telemetry_conftest.FakeNvml


def request(send: float, first: float, finish: float, prompt: int, out: int) -> RequestOutput:
    n_gaps = out - 1
    return RequestOutput(success=True, prompt_tokens=prompt, output_tokens=out, send_s=send, first_token_s=first,
                         finish_s=finish, itl_s=[(finish - first) / n_gaps] * n_gaps)


def test_phase_split_classes_intervals_by_the_request_timelines():
    # counter samples every second, 10 J per second; one request in prefill during [0, 3), decoding [3, 8)
    t = np.arange(0.0, 9.0)
    e = 10.0 * t
    run = BenchRun("m", [request(0.0, 3.0, 8.0, prompt=300, out=51)], np.zeros(1), 0.0, 8.0, None)
    ph = phase_split(run, t, e)
    assert ph["prefill_heavy"]["time_s"] == pytest.approx(3.0) and ph["prefill_heavy"]["energy_j"] == 30.0
    assert ph["prefill_heavy"]["input_tokens"] == 300 and ph["prefill_heavy"]["j_per_input_token"] == 0.1
    assert ph["decode_heavy"]["time_s"] == pytest.approx(5.0) and ph["decode_heavy"]["energy_j"] == 50.0
    # the first token, on the boundary, ends the prefill: the other 50 stream in decode-heavy intervals
    assert ph["decode_heavy"]["output_tokens"] == 50 and ph["decode_heavy"]["j_per_output_token"] == 1.0
    assert ph["idle"]["energy_j"] == 0.0 and ph["mixed_energy_j"] == 0.0


def test_mixed_intervals_bound_the_misattribution():
    t = np.array([0.0, 2.0, 4.0])
    e = np.array([0.0, 20.0, 40.0])
    # request A decodes through [0, 4); request B arrives at 1.5 and waits for its first token until 3.5
    run = BenchRun("m", [request(0.0, 0.0, 4.0, 10, 41), request(1.5, 3.5, 3.9, 10, 5)], np.zeros(2), 0.0, 4.0,
                   None)
    ph = phase_split(run, t, e)
    # [0, 2): 0.5 s of 2 s in prefill -> decode-heavy; [2, 4): 1.5 s of 2 s -> prefill-heavy; both mixed
    assert ph["decode_heavy"]["energy_j"] == 20.0 and ph["prefill_heavy"]["energy_j"] == 20.0
    assert ph["mixed_energy_j"] == 40.0


def test_energy_report_from_the_nvml_counter_and_rapl(tmp_path):
    fake = FakeNvml(count=1, power_mw=[100_000.0], energy_mj=[1_000_000.0])
    gpu = GpuMonitor([0], interval_s=0.01, nvml=fake)
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    (zone / "energy_uj").write_text("0\n")
    cpu = CpuMonitor(0.01, powercap_root=tmp_path / "powercap")
    rec = Recorder(gpu=gpu, cpu=cpu)
    rec.t0_s = time.monotonic()
    times = []
    for k in range(9):  # samples by hand: 5 J of GPU and 1 J of CPU energy per step, power changing every 2 steps
        fake.energy_mj[0] = 1_000_000.0 + 5_000.0 * k
        fake.power_mw[0] = 100_000.0 + 10_000.0 * (k // 2)
        (zone / "energy_uj").write_text(f"{1_000_000 * k}\n")
        gpu.sample_now()
        cpu.sample_now()
        times.append(gpu.trace()[-1].t_s)
        time.sleep(0.01)
    t0, t3, t8 = times[0], times[3], times[8]
    run = BenchRun("m", [request(t0, t3, t8, prompt=100, out=41)], np.array([t0]), t0, t8,
                   Measurement("benchmark", t8 - t0, gpu_energy_j=40.0, cpu_energy_j=8.0))
    rep = energy_report(run, rec, output_tokens=41, total_tokens=141, good_requests=1.0)
    assert rep is not None
    assert rep["energy_j"] == 48.0 and rep["j_per_output_token"] == pytest.approx(48.0 / 41)
    assert rep["j_per_total_token"] == pytest.approx(48.0 / 141) and rep["goodput_per_joule"] == 1.0 / 48.0
    g = rep["sources"]["gpu"]
    assert g["source"] == "nvml_energy_counter" and g["counter_resolution_j"] == NVML_COUNTER_RESOLUTION_J
    step = float(np.median(np.diff(times)))
    assert g["counter_update_period_s"] == pytest.approx(step, rel=0.5)  # changed every sample
    assert g["power_refresh_period_s"] == pytest.approx(2 * step, rel=0.5)  # changed every other sample
    assert g["window_edge_error_j"] == pytest.approx(2 * 40.0 / (t8 - t0) * g["counter_update_period_s"])
    assert g["phases"]["prefill_heavy"]["energy_j"] == pytest.approx(15.0)  # 3 steps of 5 J before the first token
    assert g["phases"]["decode_heavy"]["energy_j"] == pytest.approx(25.0)
    c = rep["sources"]["cpu"]
    assert c["source"] == "rapl" and c["zones"] == ["package-0"] and "every process" in c["scope"]
    assert c["phases"]["prefill_heavy"]["energy_j"] == pytest.approx(3.0)


def test_no_energy_source_means_no_report():
    run = BenchRun("m", [], np.zeros(0), 0.0, 1.0, Measurement("benchmark", 1.0))
    assert energy_report(run, Recorder(), 0, 0, None) is None
    assert energy_report(run, None, 0, 0, None) is None
