"""The perf: scenario section, calibration files, the new knobs, and the least-squares fit."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlserve.errors import ConfigError, InputError
from rlserve.perf import ReplicaPerfModel, get_gpu, get_model
from rlserve.perf.config import KNOBS, PerfConfig, apply_knobs, load_calibration, write_calibration
from rlserve.perf.fit import CPU_DEVICE, CPU_FIXED, fit_knobs, perf_model, predict
from rlserve.scenario import load_scenario
from rlserve.sim import build_perf_model

SCENARIO = {
    "name": "knobs",
    "perf": {"iteration_overhead_s": 0.004, "calibration": "calib.json"},
    "cluster": {"defaults": {"gpu": "h100", "model": "llama-2-7b", "perf": {"frontend_latency_s": 0.01}},
                "replicas": [{"count": 1, "perf": {"eff_compute_linear": 0.5, "frontend_latency_s": 0.02}},
                             {"count": 1}]},
    "workload": {"num_requests": 50, "arrival": {"kind": "poisson", "qps": 5},
                 "lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 20}},
}


def _calib(path: Path, complete: bool = True, **perf: float) -> Path:
    return write_calibration(path, perf=perf or {"per_seq_overhead_s": 1e-4, "iteration_overhead_s": 9.0},
                             device={"name": "cpu", "peak_tflops": 2.0}, server={}, fit={}, source="test",
                             complete=complete)


def test_scenario_perf_sections_merge_group_over_defaults_over_top_level(tmp_path: Path) -> None:
    _calib(tmp_path / "calib.json")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SCENARIO))
    a, b = load_scenario(tmp_path / "s.yaml").cluster.replicas
    assert a.perf.calibration == str(tmp_path / "calib.json")  # relative to the scenario file
    assert (a.perf.eff_compute_linear, a.perf.frontend_latency_s, a.perf.iteration_overhead_s) == (0.5, 0.02, 0.004)
    assert (b.perf.eff_compute_linear, b.perf.frontend_latency_s) == (None, 0.01)
    # explicit knobs win over the calibration file's; the file's others and its device apply
    knobs = a.perf.knobs()
    assert knobs["iteration_overhead_s"] == 0.004 and knobs["per_seq_overhead_s"] == 1e-4
    gpu, engine = apply_knobs(get_gpu("h100"), a.perf)
    assert gpu.peak_tflops == 2.0 and gpu.calibration.eff_compute_linear == 0.5
    assert engine == {"iteration_overhead_s": 0.004, "per_seq_overhead_s": 1e-4, "frontend_latency_s": 0.02}
    pm = build_perf_model(a)
    assert pm.iteration_overhead_s == 0.004 and pm.frontend_latency_s == 0.02  # type: ignore[attr-defined]


@pytest.mark.parametrize(("section", "message"), [
    ({"eff_compute_linear": 1.5}, "s.yaml: perf: eff_compute_linear: input should be less than or equal to 1, "
                                  "got 1.5"),
    ({"iteration_overhead_s": -1}, "s.yaml: perf: iteration_overhead_s: input should be greater than or equal "
                                   "to 0, got -1"),
    ({"eff_mem_attn": "fast"}, "s.yaml: perf: eff_mem_attn: input should be a valid number, got 'fast'"),
    ({"eff_mem_attn": True}, "s.yaml: perf: eff_mem_attn: input should be a valid number, got True"),
    ({"calibration": ""}, "s.yaml: perf: calibration: string should have at least 1 character"),
    ({"gemm": 0.5}, "s.yaml: perf: unknown key 'gemm'; allowed: allreduce_bandwidth_gbps, allreduce_latency_s, "
                    "calibration, eff_compute_attn"),
    ({"calibration": "missing.json"}, "missing.json does not exist"),
])
def test_bad_perf_values_are_one_line_config_errors(tmp_path: Path, section: dict, message: str) -> None:
    doc = {**SCENARIO, "perf": section}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as exc:
        build_perf_model(load_scenario(tmp_path / "s.yaml").cluster.replicas[0])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_group_perf_names_the_replica_group(tmp_path: Path) -> None:
    doc = {**SCENARIO, "perf": {}, "cluster": {"replicas": [{"perf": {"eff_mem_linear": 0}}]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as exc:
        load_scenario(tmp_path / "s.yaml")
    assert str(exc.value).startswith(f"{tmp_path / 's.yaml'}: cluster.replicas[0].perf: eff_mem_linear: input "
                                     "should be greater than or equal to 0.000001, got 0")


def test_knob_ranges_are_read_from_the_declarations() -> None:
    assert KNOBS["eff_mem_attn"] == (1e-6, 1.0) and KNOBS["iteration_overhead_s"] == (0.0, 10.0)
    assert set(KNOBS) == {f.name for f in dataclasses.fields(PerfConfig)} - {"calibration"}


def test_cli_prints_one_error_line_for_a_bad_knob(tmp_path: Path) -> None:
    doc = {**SCENARIO, "perf": {"eff_compute_attn": 0}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    out = subprocess.run([sys.executable, "-m", "rlserve.cli.main", "simulate", "-s", str(tmp_path / "s.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().replace("\n", " ").startswith("error:") and "Traceback" not in out.stderr


def test_incomplete_or_foreign_calibration_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="incomplete"):
        load_calibration(_calib(tmp_path / "partial.json", complete=False))
    (tmp_path / "other.json").write_text(json.dumps({"perf": {}}))
    with pytest.raises(ConfigError, match="not a calibration file"):
        load_calibration(tmp_path / "other.json")


@pytest.mark.parametrize(("device", "message"), [
    ({"peak_tflops": "fast"}, "device: peak_tflops: input should be a valid number, got 'fast'"),
    ({"peak_tflops": 0}, "device: peak_tflops: input should be greater than 0, got 0"),
    ({"memory_bytes": 1.5e9}, "device: memory_bytes: input should be a valid integer, got 1500000000.0"),
    ({"cores": 4}, "device: unknown key 'cores'; allowed: mem_bandwidth_gbps, memory_bytes, name, peak_tflops"),
])
def test_bad_calibration_device_fields_name_the_file_and_key(tmp_path: Path, device: dict, message: str) -> None:
    path = _calib(tmp_path / "c.json", complete=True)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "device": device}))
    with pytest.raises(ConfigError) as exc:
        load_calibration(path)
    assert str(exc.value) == f"{path}: {message}"


def test_decode_efficiency_changes_decode_only_and_allreduce_bandwidth_changes_tp_cost() -> None:
    base = PerfConfig()
    slow_decode = PerfConfig(eff_compute_linear_decode=0.05)
    gpu, model = get_gpu("a100-80gb"), get_model("llama-2-7b")
    a = ReplicaPerfModel(apply_knobs(gpu, base)[0], model)
    b = ReplicaPerfModel(apply_knobs(gpu, slow_decode)[0], model)
    assert b.decode_coeffs(64)[0] > a.decode_coeffs(64)[0]
    assert b.step_cost([(512, 0)], 0, 0) == a.step_cost([(512, 0)], 0, 0)
    fast_link = apply_knobs(gpu, PerfConfig(allreduce_bandwidth_gbps=10_000.0))[0]
    slow_link = apply_knobs(gpu, PerfConfig(allreduce_bandwidth_gbps=10.0))[0]
    t_fast = ReplicaPerfModel(fast_link, get_model("codellama-34b"), tp=2).step_cost([(2048, 0)], 0, 0)[0]
    t_slow = ReplicaPerfModel(slow_link, get_model("codellama-34b"), tp=2).step_cost([(2048, 0)], 0, 0)[0]
    assert t_slow > t_fast


def test_fit_recovers_the_knobs_that_generated_the_observations() -> None:
    """Noise-free observations from known knobs: the fit reproduces them (and the knobs themselves)."""
    model = get_model("llama-2-7b")
    truth = {**CPU_FIXED, "iteration_overhead_s": 3e-3, "per_seq_overhead_s": 1e-4, "frontend_latency_s": 5e-3,
             "eff_compute_linear": 0.02, "eff_compute_attn": 0.01, "eff_compute_attn_decode": 0.005}
    perf = perf_model(get_gpu("h100"), model, 1, truth, CPU_DEVICE)
    prefills = [(n, 0.0) for n in (16, 128, 512, 1024, 2048)]
    decodes = [(b, float(b * c), 0.0) for b in (1, 4, 16) for c in (64, 1024)]
    y = predict(perf, prefills, decodes)
    prefills = [(n, float(t)) for (n, _), t in zip(prefills, y[:5], strict=True)]
    decodes = [(b, s, float(t)) for (b, s, _), t in zip(decodes, y[5:], strict=True)]
    fit = fit_knobs(prefills, decodes, get_gpu("h100"), model, device=CPU_DEVICE, fixed=CPU_FIXED)
    assert fit.median_abs_err < 1e-3
    for k in ("iteration_overhead_s", "per_seq_overhead_s", "frontend_latency_s", "eff_compute_linear"):
        assert fit.knobs[k] == pytest.approx(truth[k], rel=0.02), k
    assert "decode B=16" in fit.table()


def test_fit_refuses_too_few_points() -> None:
    with pytest.raises(InputError, match="cannot fit"):
        fit_knobs([(16, 0.01)], [(1, 10.0, 0.002)], get_gpu("h100"), get_model("llama-2-7b"))


def test_calibrate_verb_reports_an_unreachable_server_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "rlserve.cli.main", "calibrate", "--url", "http://127.0.0.1:9",
                          "--out", str(tmp_path / "c.json"), "--model", "llama-2-7b", "--budget-s", "5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error:") and "Traceback" not in out.stderr
    assert not (tmp_path / "c.json").exists()


def test_proportional_truncation_cuts_both_sides_like_vidur_and_output_first_cuts_the_output() -> None:
    import warnings

    from rlserve.workload.lengths import clip_lengths

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, o, n = clip_lengths(np.array([3000, 100]), np.array([1000, 50]), max_total_tokens=2000,
                               truncation="proportional")
        assert n == 1 and p[0] + o[0] == 2000 and p[0] == 1500 and o[0] == 500  # 3:1 kept
        assert (p[1], o[1]) == (100, 50)
        p, o, _ = clip_lengths(np.array([3000]), np.array([1000]), max_total_tokens=2000)
        assert (p[0], o[0]) == (1999, 1)
    with pytest.raises(ConfigError, match="truncation"):
        clip_lengths(np.array([1]), np.array([1]), max_total_tokens=4, truncation="middle")


def test_qps_override_rescales_trace_arrivals(tmp_path: Path) -> None:
    from rlserve.scenario import scenario_from_dict

    (tmp_path / "t.csv").write_text("num_prefill_tokens,num_decode_tokens,arrived_at\n"
                                    + "".join(f"100,10,{i * 0.5}\n" for i in range(41)))
    doc = {"cluster": {"replicas": [{"count": 1}]},
           "workload": {"arrival": {"kind": "trace"}, "lengths": {"kind": "trace", "path": "t.csv"}}}
    scn = scenario_from_dict(doc, base_dir=tmp_path)
    w = scn.with_qps(8.0).build_workload(0)
    assert (len(w) - 1) / (w.arrival_s[-1] - w.arrival_s[0]) == pytest.approx(8.0)
    assert scn.build_workload(0).arrival_s[-1] == pytest.approx(20.0)
