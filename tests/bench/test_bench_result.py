import json

import pytest
from typer.testing import CliRunner

from rlserve.bench.result import load_result, validate_result
from rlserve.cli.main import app
from rlserve.errors import InputError
from rlserve.testing.fake_openai_server import FakeServerConfig, serve_in_thread

runner = CliRunner()


@pytest.fixture(scope="module")
def result_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # ~4 s of load gives ~16 KV samples, so one sample made late by a busy host stays under validate's 10% limit
    with serve_in_thread(FakeServerConfig(inter_token_delay_s=0.005)) as server:
        res = runner.invoke(app, [
            "bench", "--base-url", server.base_url, "--num-prompts", "60", "--request-rate", "15",
            "--random-input-len", "20", "--random-output-len", "30", "--enable-kv-trace", "--kv-monitor-interval",
            "0.25", "--monitor-cpu", "--goodput", "ttft:500 e2el:5000", "--metric-percentiles", "50,90",
            "--save-result", "--result-dir", str(out), "--result-filename", "r.json", "--save-telemetry-log",
        ])
    assert res.exit_code == 0, res.output
    assert "Serving benchmark result" in res.output
    return out / "r.json"


def test_result_keeps_seed_schema_and_per_request_arrays(result_path):
    data = json.loads(result_path.read_text())
    assert data["schema"] == "rlserve-bench-result" and data["metadata"]["seed"] == 0
    assert data["metadata"]["goodput_slo_ms"] == {"ttft": 500.0, "e2el": 5000.0}
    assert data["completed"] == 60 and data["failed"] == 0 and data["request_goodput"] > 0
    kv = data["kv_cache_monitoring_stats"]
    assert set(kv) >= {"avg_stats", "detailed_stats", "trace", "monitoring_interval_seconds", "samples_collected"}
    assert set(kv["detailed_stats"]) >= {"cache_usage", "static_config"}
    assert kv["samples_collected"] == len(kv["trace"]["cache_usage"]) > 0
    assert kv["detailed_stats"]["static_config"]["total_gpu_blocks"] == 4096
    assert max(kv["trace"]["requests_running"]) >= 1
    cpu = data["cpu_power_stats"]
    assert cpu["cpu_power_source"] == "unavailable" and cpu["samples"] > 0  # no RAPL on this machine
    assert data["gpu_power_stats"] is None and data["telemetry"]["gpu"]["available"] is False
    reqs = data["requests"]
    assert len(reqs["ttft_s"]) == len(reqs["itl_s"]) == len(reqs["scheduled_s"]) == 60
    assert all(len(itl) == 29 for itl in reqs["itl_s"])
    assert {"p50_ttft_ms", "p90_ttft_ms", "p99_ttft_ms"} <= set(data) and "p90_e2el_ms" not in data
    assert result_path.with_suffix(".telemetry.jsonl").exists()


def test_validate_cli_passes_a_complete_result(result_path):
    res = runner.invoke(app, ["bench", "validate", str(result_path)])
    assert res.exit_code == 0, res.output
    assert "KV cache:" in res.output and "result looks complete" in res.output


def test_validate_flags_empty_kv_trace_and_failures(result_path, tmp_path):
    data = json.loads(result_path.read_text())
    data["kv_cache_monitoring_stats"]["samples_collected"] = 0
    data["failed"] = 3
    report = validate_result(data)
    assert any("no KV cache samples" in p for p in report.problems)
    assert any("3 requests failed" in p for p in report.problems)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    res = runner.invoke(app, ["bench", "validate", str(bad)])
    assert res.exit_code == 1 and "PROBLEM" in res.output


def test_validate_gpu_ratio():
    gpu = {"0": {"power_trace": [1.0] * 100, "energy_source": "nvml_energy_counter"}}
    data = {"completed": 1, "failed": 0, "gpu_power_stats": gpu,
            "telemetry": {"gpu": {"monitoring_interval_seconds": 0.05}},
            "kv_cache_monitoring_stats": {"samples_collected": 10, "monitoring_interval_seconds": 0.5,
                                          "gaps": {"count": 0}, "avg_stats": {}}}
    report = validate_result(data)
    assert report.problems == [] and any("ratio 10.0:1 (expected ~10:1)" in line for line in report.lines)
    gpu["0"]["power_trace"] = [1.0] * 20
    assert any("fell behind" in p for p in validate_result(data).problems)


def test_load_result_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(InputError, match="not a benchmark result"):
        load_result(p)
    p.write_text("not json")
    with pytest.raises(InputError):
        load_result(p)


def test_state_and_monitor_commands_against_a_server():
    with serve_in_thread() as server:
        res = runner.invoke(app, ["state", "--url", server.base_url, "--window-s", "0.5", "--json"])
        assert res.exit_code == 0, res.output
        body = json.loads(res.stdout[res.stdout.index("{"):])
        assert len(body["state"]) == 10 and body["measured"][5] is True and body["measured"][0] is False
        res = runner.invoke(app, ["monitor", "--url", server.base_url, "--duration-s", "0.5"])
        assert res.exit_code == 0, res.output
        assert "KV cache usage" in res.output


def test_a_write_that_fails_after_the_run_falls_back_to_the_temp_dir(tmp_path):
    """The path was checked before the run; if it became unwritable meanwhile (here: a directory appeared under the
    result's name), the finished run's numbers still land on disk, and the caller is told where."""
    from rlserve.bench.result import save_result_safely

    target = tmp_path / "r.json"
    target.mkdir()
    written, why = save_result_safely({"completed": 3, "cpu_power_stats": None}, target)
    try:
        assert why is not None and str(target) in why
        assert written != target and json.loads(written.read_text())["completed"] == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left behind
    finally:
        written.unlink()
