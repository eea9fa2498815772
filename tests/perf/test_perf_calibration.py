import dataclasses

import pytest

from rlserve.errors import InputError
from rlserve.perf import get_gpu
from rlserve.perf.calibration import (
    DATA_DIR,
    comparison_table,
    fit_calibration,
    load_measurements,
    model_without_cpu_overhead,
    modelled_cost,
)

MEASURED = load_measurements(DATA_DIR / "measurements_h200.json")


def test_the_catalogue_h200_calibration_is_the_rounded_fit_of_the_embedded_measurements():
    cal = get_gpu("h200").calibration
    for field, value in fit_calibration(MEASURED, get_gpu("h200")).items():
        assert getattr(cal, field) == pytest.approx(value, rel=0.02), field


def _llama_points():
    return [r for r in MEASURED["results"]
            if r["name"] in ("llama_decode", "llama_prefill") and r["params"].get("cuda_graph", True)]


@pytest.mark.parametrize("point", _llama_points(), ids=lambda r: f"{r['name']}-{r['params']['batch']}")
def test_model_reproduces_the_measured_h200_transformer_steps(point):
    # the real random-weight Llama-2-7B run on an H200 (NVML energy counter); the model has no CPU overhead here
    # because the benchmark replays CUDA graphs back to back with no serving engine around them
    t, e = modelled_cost(model_without_cpu_overhead(get_gpu("h200")), point)
    assert t == pytest.approx(point["time_per_iter_s"], rel=0.08)
    assert e / t == pytest.approx(point["avg_power_w"], rel=0.15)


def test_measured_idle_and_power_cap_readings_are_what_the_model_assumes():
    res = {r["name"]: r for r in MEASURED["results"]}
    gpu = get_gpu("h200")
    assert MEASURED["gpu"]["name"] == "NVIDIA H200" and MEASURED["gpu"]["power_limit_w"] == gpu.max_power_w
    # with clocks up and no work the GPU drew the calibration's awake power...
    assert res["idle_with_context"]["avg_power_w"] == pytest.approx(gpu.calibration.awake_power_w, rel=0.02)
    # ...and large matmuls sat at the board limit, clocks pulled down by the software power cap (bit 0x4)
    assert res["matmul"]["avg_power_w"] == pytest.approx(gpu.max_power_w, rel=0.05)
    assert res["matmul"]["clock_event_reasons"] & 0x4
    assert res["matmul"]["sm_clock_mhz"]["mean"] < 0.85 * gpu.sm_clock_max_mhz


def test_comparison_table_has_one_row_per_point():
    table = comparison_table(MEASURED, get_gpu("h200"))
    assert len(table.splitlines()) == 2 + len(_llama_points())


def test_bad_measurement_files_are_input_errors(tmp_path):
    with pytest.raises(InputError):
        load_measurements(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"gpu": {}}')
    with pytest.raises(InputError, match="results"):
        load_measurements(tmp_path / "x.json")


def test_fitting_a_different_gpu_spec_changes_the_efficiencies():
    # the fit divides by the catalogue's peak numbers: a GPU with half the bandwidth fits twice the efficiency
    half_bw = dataclasses.replace(get_gpu("h200"), mem_bandwidth_gbps=2400.0)
    full = fit_calibration(MEASURED, get_gpu("h200"))
    assert fit_calibration(MEASURED, half_bw)["eff_mem_elementwise"] == pytest.approx(
        2 * full["eff_mem_elementwise"])
