"""``rlserve bench`` as a user drives it: vLLM's flag spellings, exit codes, output paths and credentials
(issue 16 and issue 15 items 9, 10, 13). The server is the in-process fake OpenAI server."""

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer.main

from rlserve.bench.redact import redact_argv, redact_url
from rlserve.bench.result import load_result
from rlserve.bench.runner import RampUp, arrival_schedule
from rlserve.cli.bench_cmds import bench_app, build_spec, expand_multi_value
from rlserve.cli.main import main
from rlserve.errors import ConfigError
from rlserve.testing.fake_openai_server import FakeServerConfig, serve_in_thread

SMALL = ["--num-prompts", "12", "--request-rate", "200", "--random-input-len", "8", "--random-output-len", "4"]


@dataclass
class Outcome:
    exit_code: int
    output: str  # stdout + stderr, whitespace runs collapsed


@pytest.fixture
def bench(capsys, monkeypatch):
    """Run ``rlserve bench ARGS`` in-process through the real entry point (its ``error:`` handling included)."""

    def run(*args: str) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["rlserve", "bench", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return Outcome(code, " ".join((out.out + out.err).split()))  # rich wraps long lines at 80 columns

    return run


def test_expand_multi_value_flags():
    assert expand_multi_value(["--goodput", "ttft:5", "tpot:1", "--seed", "3", "--metadata", "a=1", "b=2"]) == [
        "--goodput", "ttft:5", "--goodput", "tpot:1", "--seed", "3", "--metadata", "a=1", "--metadata", "b=2"]
    assert expand_multi_value(["--goodput=ttft:5", "--seed", "3"]) == ["--goodput=ttft:5", "--seed", "3"]


def test_headline_example_with_unquoted_values(tmp_path, bench):
    """docs/bench.md's example: before, `tpot:50` was read as a sub-command (`No such command`)."""
    with serve_in_thread() as server:
        res = bench("--base-url", server.base_url, *SMALL, "--goodput", "ttft:500", "tpot:50", "e2el:10000",
                    "--metadata", "version=0.3.3", "tp=1", "--percentile-metrics", "ttft,tpot,itl,e2el",
                    "--metric-percentiles", "50,90,99", "--save-result", "--result-dir", str(tmp_path),
                    "--result-filename", "r.json")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["metadata"]["goodput_slo_ms"] == {"ttft": 500.0, "tpot": 50.0, "e2el": 10000.0}
    assert (data["version"], data["tp"]) == ("0.3.3", "1")  # vLLM writes --metadata at the top level
    assert data["request_goodput"] > 0 and data["completed"] == 12
    assert {"p50_e2el_ms", "p90_itl_ms", "p99_ttft_ms"} <= set(data)
    # progress also when the output is not a terminal (CliRunner is not one)
    assert "requests: 12/12 done, 0 failed" in res.output


def test_every_request_failed_exits_1_and_keeps_the_result(tmp_path, bench):
    with serve_in_thread(FakeServerConfig(completions_status=503)) as server:
        res = bench("--base-url", server.base_url, "--model", "m", *SMALL, "--save-result", "--result-dir",
                    str(tmp_path), "--result-filename", "r.json")
    assert res.exit_code == 1, res.output
    assert "error: every request failed (12)" in res.output and "HTTP 503" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["failed"] == 12


@pytest.mark.parametrize("name", ["../../x.json", "../x.json", "/tmp/x.json", "sub/../../x.json"])
def test_result_filename_cannot_leave_result_dir(tmp_path, name, bench):
    out = tmp_path / "a" / "b"
    # unreachable server: the path is refused before anything is sent (exit 2, not a run then a traceback)
    res = bench("--base-url", "http://127.0.0.1:9", *SMALL, "--save-result", "--result-dir", str(out),
                "--result-filename", name, "--ready-timeout-s", "0.1")
    assert res.exit_code == 2, res.output
    assert "must name a file inside --result-dir" in res.output
    assert not (tmp_path / "x.json").exists() and "Traceback" not in res.output


def test_bad_output_paths_are_refused_before_the_run(tmp_path, bench):
    afile = tmp_path / "file"
    afile.write_text("x")
    res = bench("--base-url", "http://127.0.0.1:9", *SMALL, "--save-result", "--result-dir", str(afile))
    assert res.exit_code == 2 and "is a file, not a directory" in res.output
    (tmp_path / "adir").mkdir()
    res = bench("--base-url", "http://127.0.0.1:9", *SMALL, "--save-result", "--result-dir", str(tmp_path),
                "--result-filename", "adir")
    assert res.exit_code == 2 and "is a directory" in res.output


def test_credentials_never_reach_the_result(tmp_path, bench):
    with serve_in_thread() as server:
        url = server.base_url.replace("http://", "http://alice:s3cret-pw@")
        res = bench("--base-url", url, *SMALL, "--save-result", "--result-dir", str(tmp_path),
                    "--result-filename", "r.json", "--header", "X-Trace=abc")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r.json").read_text()
    assert "s3cret-pw" not in text and "alice" not in text and "X-Trace=abc" not in text
    assert json.loads(text)["metadata"]["base_url"] == redact_url(url) == url.replace("alice:s3cret-pw", "***")


def test_redact_argv_masks_secret_flags_and_url_credentials():
    argv = ["bench", "--api-key", "sk-1", "--header", "Authorization=Bearer x", "K=v", "--seed", "1",
            "--base-url", "http://u:p@h:1", "--api-key=sk-2"]
    assert redact_argv(argv) == ["bench", "--api-key", "***", "--header", "***", "***", "--seed", "1",
                                 "--base-url", "http://***@h:1", "--api-key=***"]


def test_long_model_name_gives_a_bounded_default_file_name(tmp_path, bench):
    with serve_in_thread(FakeServerConfig(model="m" * 300)) as server:
        res = bench("--base-url", server.base_url, *SMALL, "--save-result", "--result-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    [written] = list(tmp_path.glob("*.json"))
    assert len(written.name) <= 255 and written.name.startswith("openai-200qps-mmm")
    assert load_result(written)["model_id"] == "m" * 300


def test_append_result_adds_json_lines(tmp_path, bench):
    with serve_in_thread() as server:
        for seed in ("1", "2"):
            res = bench("--base-url", server.base_url, *SMALL, "--seed", seed, "--append-result", "--result-dir",
                        str(tmp_path), "--result-filename", "all.jsonl")
            assert res.exit_code == 0, res.output
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert [json.loads(ln)["metadata"]["seed"] for ln in lines] == [1, 2]
    assert load_result(tmp_path / "all.jsonl")["metadata"]["seed"] == 2


def test_probes_are_reported_apart_from_the_load(tmp_path, bench):
    with serve_in_thread(FakeServerConfig(ttft_delay_s=0.01)) as server:
        res = bench("--base-url", server.base_url, "--num-prompts", "20", "--request-rate", "40",
                    "--random-input-len", "8", "--random-output-len", "4", "--probe-request-rate", "50",
                    "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["completed"] == 20 and data["probe_completed"] >= 5 and data["probe_failed"] == 0
    assert data["probe_median_e2el_ms"] >= 10.0  # every probe waited the server's TTFT


def build_spec_from(args: list[str]):
    """The spec ``rlserve bench ARGS`` would run (parsed by the bench group itself)."""
    group = typer.main.get_group(bench_app)
    with group.make_context("bench", list(args)) as ctx:
        return build_spec(ctx.params)


def test_api_key_from_flag_or_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert build_spec_from([]).runner.session_headers() == {}
    assert build_spec_from(["--api-key", "sk-flag"]).runner.session_headers() == {"Authorization": "Bearer sk-flag"}
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert build_spec_from([]).runner.session_headers() == {"Authorization": "Bearer sk-env"}
    with pytest.raises(ConfigError, match="exclude each other"):
        build_spec_from(["--base-url", "http://u:p@127.0.0.1:1"])


def test_ramp_up_schedule_follows_vllm_rates():
    ramp = RampUp("linear", 1.0, 9.0)
    assert ramp.rates(5).tolist() == [1.0, 3.0, 5.0, 7.0, 9.0]
    expo = RampUp("exponential", 1.0, 16.0)
    assert expo.rates(5).tolist() == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0])
    a = arrival_schedule(4000, math.inf, 1.0, np.random.default_rng(1), ramp_up=RampUp("linear", 10.0, 100.0))
    b = arrival_schedule(4000, math.inf, 1.0, np.random.default_rng(1), ramp_up=RampUp("linear", 10.0, 100.0))
    assert np.array_equal(a, b) and a[0] == 0.0
    gaps = np.diff(a)
    assert gaps[:500].mean() > 3 * gaps[-500:].mean()  # the rate rises ~10x over the run
    for bad in (("cubic", 1.0, 2.0), ("linear", 5.0, 1.0), ("exponential", 0.0, 1.0)):
        with pytest.raises(ConfigError):
            RampUp(*bad)


def test_ramp_up_flags_need_each_other(bench):
    with pytest.raises(ConfigError, match="--ramp-up-start-rps"):
        build_spec_from(["--ramp-up-strategy", "linear"])
    res = bench("--ramp-up-start-rps", "1", "--ramp-up-end-rps", "2")
    assert res.exit_code == 2 and "need --ramp-up-strategy" in res.output


def test_unknown_backend_and_bad_extra_body_are_one_line_errors(bench):
    for args, msg in ((["--backend", "tgi"], "--backend 'tgi'"), (["--extra-body", "{bad"], "--extra-body"),
                      (["--random-range-ratio", "x"], "--random-range-ratio")):
        res = bench(*args)
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output


def test_sweep_writes_one_result_per_point_summary_and_plots(tmp_path, bench):
    with serve_in_thread(FakeServerConfig(ttft_delay_s=0.005, inter_token_delay_s=0.001)) as server:
        res = bench("sweep", "--request-rates", "50,200", "--sweep-dir", str(tmp_path), "--base-url",
                    server.base_url, "--num-prompts", "10", "--random-input-len", "8", "--random-output-len", "4",
                    "--goodput", "ttft:500", "tpot:50")
    assert res.exit_code == 0, res.output
    assert {p.name for p in tmp_path.iterdir()} >= {"rate-50.json", "rate-200.json", "summary.csv", "sweep.png",
                                                   "pareto.png"}
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("load,result,completed")
    assert json.loads((tmp_path / "rate-200.json").read_text())["request_rate"] == 200.0
    assert Path(tmp_path / "pareto.png").stat().st_size > 1000
