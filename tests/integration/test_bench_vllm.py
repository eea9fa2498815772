"""The benchmark client end to end against a real vLLM CPU server (fixtures in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from rlserve.bench.result import load_result, validate_result
from rlserve.cli.main import app
from rlserve.testing.vllm_server import VllmServer

runner = CliRunner()


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_bench_end_to_end_with_kv_trace(vllm_server: VllmServer, tmp_path: Path, endpoint: str) -> None:
    res = runner.invoke(app, [
        "bench", "--base-url", vllm_server.url, "--endpoint", endpoint, "--num-prompts", "16",
        "--request-rate", "8", "--random-input-len", "48", "--random-output-len", "32", "--num-warmups", "1",
        "--enable-kv-trace", "--kv-monitor-interval", "0.25", "--monitor-cpu", "--goodput", "ttft:60000",
        "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json",
    ])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["metadata"]["model"] == vllm_server.model_name
    assert (data["completed"], data["failed"]) == (16, 0)
    assert data["total_output_tokens"] == 16 * 32  # vLLM generated exactly max_tokens
    if endpoint == "/v1/completions":
        assert data["total_input_tokens"] == 16 * 48  # token-id prompts have exact lengths
    assert data["mean_ttft_ms"] > 0 and data["mean_tpot_ms"] > 0 and data["slo_attainment"] == 1.0
    kv = data["kv_cache_monitoring_stats"]
    assert kv["samples_collected"] >= 4
    assert max(kv["trace"]["requests_running"]) >= 1  # the trace saw the load
    cfg = kv["detailed_stats"]["static_config"]
    assert cfg["block_size"] == 32 and cfg["total_gpu_blocks"] > 0
    assert 0.0 <= kv["detailed_stats"]["cache_usage"]["max"] <= 100.0
    # One gap per streamed chunk; vLLM folds tokens into one chunk when its API server falls behind (busy CPU).
    assert all(1 <= len(itl) <= 31 for itl in data["requests"]["itl_s"])
    assert validate_result(load_result(tmp_path / "r.json")).problems == []


def test_bench_writes_a_result_when_the_server_dies(vllm_server_factory, tmp_path: Path) -> None:
    server = vllm_server_factory()
    # 48 requests over ~12 s; the server dies once two have finished, so requests keep being scheduled for
    # seconds after it is gone and the KV monitor keeps ticking into a dead server.
    cmd = [sys.executable, "-m", "rlserve.cli.main", "bench", "--base-url", server.url, "--num-prompts", "48",
           "--request-rate", "4", "--burstiness", "1000", "--random-input-len", "32", "--random-output-len", "32",
           "--enable-kv-trace", "--kv-monitor-interval", "0.2", "--save-result", "--result-dir", str(tmp_path),
           "--result-filename", "r.json"]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180  # the CLI's start-up (imports) is slow on a busy machine
        done = 0.0
        while done < 2:
            assert time.monotonic() < deadline and bench.poll() is None, "the benchmark never got going"
            time.sleep(0.2)
            text = httpx.get(server.url + "/metrics", timeout=10).text
            done = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("vllm:request_success_total"))
        server.kill()
        out, _ = bench.communicate(timeout=300)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 0, out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["completed"] >= 1 and data["failed"] >= 1
    errors = [e for e in data["requests"]["error"] if e]
    assert len(errors) == data["failed"]
    kv = data["kv_cache_monitoring_stats"]
    assert kv["samples_collected"] >= 1 and kv["gaps"]["count"] >= 1, (kv["gaps"], data["requests"], out)
    assert "unreachable" in kv["gaps"]["by_reason"]
    report = validate_result(data)
    assert any("failed" in p for p in report.problems)


VLLM_ONLY_KEYS = {"rtfx"}
"""Keys of vLLM's result that we do not write: ``rtfx`` is the real-time factor of audio inputs (0 for text)."""


def test_result_has_every_key_vllm_bench_serve_writes(vllm_server: VllmServer, tiny_model_dir: Path,
                                                      vllm_venv: Path, tmp_path: Path) -> None:
    """The real `vllm bench serve` and `rlserve bench` against the same server, same flags: our result carries
    every key of vLLM's (so scripts that read vLLM's results read ours), with the same types."""
    common = ["--base-url", vllm_server.url, "--model", vllm_server.model_name, "--dataset-name", "random",
              "--random-input-len", "24", "--random-output-len", "8", "--num-prompts", "6", "--request-rate", "20",
              "--ignore-eos", "--goodput", "ttft:5000", "tpot:500", "--percentile-metrics", "ttft,tpot,itl,e2el",
              "--metric-percentiles", "50,90,99", "--metadata", "tp=1", "--max-concurrency", "4",
              "--probe-request-rate", "2", "--save-result", "--save-detailed", "--result-dir", str(tmp_path)]
    ref = subprocess.run([str(vllm_venv / "bin" / "vllm"), "bench", "serve", *common, "--tokenizer",
                          str(tiny_model_dir), "--result-filename", "vllm.json"],
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    res = runner.invoke(app, ["bench", *common, "--result-filename", "ours.json"])
    assert res.exit_code == 0, res.output
    theirs = json.loads((tmp_path / "vllm.json").read_text())
    ours = json.loads((tmp_path / "ours.json").read_text())
    assert set(theirs) - set(ours) - VLLM_ONLY_KEYS == set()
    for key in set(theirs) - VLLM_ONLY_KEYS:
        if theirs[key] is not None and ours[key] is not None:
            assert isinstance(ours[key], type(theirs[key])) or {type(ours[key]), type(theirs[key])} <= {int, float}, \
                (key, theirs[key], ours[key])
    # same server, same load: the counts agree exactly (latencies are not compared: on a busy host vLLM's API
    # server folds several tokens into one streamed chunk at times, which moves TPOT/ITL run to run)
    for key in ("completed", "failed", "total_output_tokens", "num_prompts", "max_concurrency", "tp"):
        assert ours[key] == theirs[key], key
    assert ours["total_input_tokens"] == theirs["total_input_tokens"] == 6 * 24
