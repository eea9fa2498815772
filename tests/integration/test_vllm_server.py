"""The real vLLM CPU server that the integration fixtures start: what it answers, what it exposes, how it stops.

These tests pin down the behaviour other integration tests build on (exact output lengths, the /metrics
names, preemptions under a small KV cache, process-group shutdown), so a vLLM upgrade that changes any of
it fails here first, with a clear message.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlserve.errors import BackendError, ConfigError
from rlserve.testing.vllm_server import SETUP_SCRIPT, VllmServer, make_model

TIMEOUT = httpx.Timeout(120.0)

# The names the monitors and the state builder read (docs/testing.md lists everything /metrics has).
REQUIRED_METRICS = {
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_preemptions",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:cache_config_info",
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
}


def scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """/metrics as {family name: [(sample name, labels, value)]}, parsed the way the monitors parse it."""
    text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def total(metrics: dict[str, list[tuple[str, dict[str, str], float]]], family: str) -> float:
    """Sum of a gauge's or counter's value samples (counters: the ``_total`` sample, not ``_created``)."""
    return sum(value for name, _, value in metrics[family] if name in (family, family + "_total"))


def completion(server: VllmServer, **body: object) -> dict:
    response = httpx.post(server.url + "/v1/completions", json={"model": server.model_name, **body},
                          timeout=TIMEOUT)
    response.raise_for_status()
    return response.json()


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of a server-sent-event stream, in order."""
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


# --------------------------------------------------------------------------------------------------- answers
def test_completion_returns_exactly_max_tokens_and_is_deterministic(vllm_server: VllmServer) -> None:
    body = {"prompt": "the server queue latency", "max_tokens": 24, "temperature": 0.0}
    first, second = completion(vllm_server, **body), completion(vllm_server, **body)
    choice = first["choices"][0]
    assert first["usage"]["completion_tokens"] == 24
    assert choice["finish_reason"] == "length"
    assert choice["text"].strip()
    assert second["choices"][0]["text"] == choice["text"]  # greedy decoding of fixed weights


def test_sampled_completions_run_to_max_tokens(vllm_server: VllmServer) -> None:
    # The generated model zeroes the output rows of special tokens, so sampling never stops early at EOS.
    result = completion(vllm_server, prompt="energy per token", max_tokens=64, temperature=1.0, n=4, seed=1)
    assert [c["finish_reason"] for c in result["choices"]] == ["length"] * 4
    assert result["usage"]["completion_tokens"] == 4 * 64


def test_completion_stream_chunks_carry_every_token(vllm_server: VllmServer) -> None:
    body = {"model": vllm_server.model_name, "prompt": "router replica", "max_tokens": 12, "stream": True,
            "return_token_ids": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", vllm_server.url + "/v1/completions", json=body, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    # vLLM merges tokens generated between two sends into one chunk (often, with a model this fast), so
    # clients must count tokens, not chunks: `return_token_ids` gives each chunk's exact tokens.
    assert all(choice["text"] for choice in choices)
    assert sum(len(choice["token_ids"]) for choice in choices) == 12
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_chat_completion_applies_the_chat_template(vllm_server: VllmServer) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    response = httpx.post(vllm_server.url + "/v1/chat/completions", timeout=TIMEOUT,
                          json={"model": vllm_server.model_name, "messages": messages, "max_tokens": 8})
    response.raise_for_status()
    result = response.json()
    message = result["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].strip()
    assert result["usage"]["completion_tokens"] == 8
    # The template adds role markers around both messages, so the prompt is longer than their words.
    assert result["usage"]["prompt_tokens"] > 10


def test_chat_completion_stream(vllm_server: VllmServer) -> None:
    body = {"model": vllm_server.model_name, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", vllm_server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0].get("role") == "assistant"
    assert "".join(d.get("content") or "" for d in deltas).strip()
    assert chunks[-1]["usage"]["completion_tokens"] == 6


# --------------------------------------------------------------------------------------------------- metrics
def test_metrics_expose_what_the_monitors_read(vllm_server: VllmServer, tiny_model_dir: Path) -> None:
    metrics = scrape(vllm_server.url)
    assert REQUIRED_METRICS <= metrics.keys(), f"missing: {sorted(REQUIRED_METRICS - metrics.keys())}"
    (_, info, value), = metrics["vllm:cache_config_info"]
    assert value == 1.0
    assert info["block_size"] == "32"
    # num_gpu_blocks is in blocks: the 256 MiB KV budget over the bytes one block takes for this model.
    config = json.loads((tiny_model_dir / "config.json").read_text())
    bytes_per_block = (2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"]
                       * 2 * 32)  # K and V, bf16, 32 tokens
    assert int(info["num_gpu_blocks"]) == vllm_server.kv_cache_bytes // bytes_per_block
    assert 0.0 <= total(metrics, "vllm:kv_cache_usage_perc") <= 1.0  # a fraction, not a percentage


def test_counters_advance_by_what_a_request_did(vllm_server: VllmServer) -> None:
    before = scrape(vllm_server.url)
    result = completion(vllm_server, prompt="a b c", max_tokens=10, temperature=0.0)
    after = scrape(vllm_server.url)

    def delta(family: str) -> float:
        return total(after, family) - total(before, family)

    assert delta("vllm:request_success") == 1
    assert delta("vllm:generation_tokens") == 10
    assert delta("vllm:prompt_tokens") == result["usage"]["prompt_tokens"]


async def _load(server: VllmServer, num_requests: int, max_tokens: int) -> tuple[list[int], list[tuple]]:
    """Send concurrent long requests while sampling /metrics every 0.25 s; return token counts and samples."""

    async def one(client: httpx.AsyncClient, i: int) -> int:
        # Distinct prompts: identical ones would share prefix-cached blocks and need less KV.
        body = {"model": server.model_name, "prompt": f"request {i} " + "queue block " * 20,
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0}
        response = await client.post(server.url + "/v1/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    samples = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        tasks = [asyncio.create_task(one(client, i)) for i in range(num_requests)]
        while not all(task.done() for task in tasks):
            metrics = await asyncio.to_thread(scrape, server.url)
            samples.append(tuple(total(metrics, f) for f in (
                "vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting")))
            await asyncio.sleep(0.25)
        return [await task for task in tasks], samples


def test_small_kv_cache_fills_up_and_preempts(vllm_kv_pressure_server: VllmServer) -> None:
    server = vllm_kv_pressure_server
    info = scrape(server.url)["vllm:cache_config_info"][0][1]
    assert info["num_gpu_blocks"] == str(server.num_gpu_blocks_override)
    preempted_before = total(scrape(server.url), "vllm:num_preemptions")

    # 8 requests x ~430 tokens need ~110 blocks of 32 tokens; the cache has 24.
    tokens, samples = asyncio.run(_load(server, num_requests=8, max_tokens=400))

    assert tokens == [400] * 8  # preempted requests are recomputed, not dropped
    assert total(scrape(server.url), "vllm:num_preemptions") > preempted_before
    assert max(kv for kv, _, _ in samples) >= 0.9
    assert max(running for _, running, _ in samples) >= 2
    assert max(waiting for _, _, waiting in samples) >= 1


# --------------------------------------------------------------------------------------------------- lifecycle
def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def test_server_runs_isolated_on_loopback(vllm_server: VllmServer) -> None:
    assert vllm_server.url.startswith("http://127.0.0.1:")
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{vllm_server.pid}/environ").read_text().split("\0") if "=" in item
    )
    assert environ["VLLM_HOST_IP"] == "127.0.0.1"
    assert environ["HF_HUB_OFFLINE"] == "1"
    assert environ["TMPDIR"] == str(vllm_server.tmp_dir)
    assert environ["VLLM_CACHE_ROOT"].startswith(str(vllm_server.work_dir))
    assert vllm_server.log_path.is_file() and "vllm serve" in vllm_server.log_path.read_text()


def test_stop_ends_every_process_of_the_server(vllm_server_factory) -> None:
    server = vllm_server_factory()
    members = _group_members(server.pid)
    assert len(members) >= 2  # API server + engine core at least
    tmp_dir = server.tmp_dir
    assert tmp_dir is not None and tmp_dir.is_dir()
    server.stop()
    assert _group_members(server.pid) == []
    assert not tmp_dir.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5.0)


def test_kill_is_a_crash_the_clients_see(vllm_server_factory) -> None:
    server = vllm_server_factory()
    assert httpx.get(server.url + "/health", timeout=5.0).status_code == 200
    server.kill()
    assert not server.is_running()
    assert _group_members(server.pid) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/v1/models", timeout=5.0)
    assert server.log_path.is_file()  # kept for the post-mortem


def test_start_failure_raises_with_the_server_log(vllm_venv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for path in tiny_model_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    server = VllmServer(broken, venv=vllm_venv, work_dir=tmp_path / "server")
    with pytest.raises(BackendError, match="exited with code") as excinfo:
        with server:
            pass
    assert "NoSuchForCausalLM" in str(excinfo.value)  # the log tail says what went wrong
    assert not server.is_running()


# --------------------------------------------------------------------------------------------------- setup
def test_model_generation_is_deterministic(vllm_venv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    again = make_model(tmp_path / "tiny-llama", "tiny", venv=vllm_venv)
    for path in sorted(tiny_model_dir.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_installer_check_reports_the_installed_venv(vllm_venv: Path, tmp_path: Path) -> None:
    def check(venv: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(SETUP_SCRIPT), "--check", "--venv", str(venv)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    healthy = check(vllm_venv)
    assert healthy.returncode == 0 and "healthy" in healthy.stdout
    missing = check(tmp_path / "no-venv")
    assert missing.returncode == 1 and "no stamp file" in missing.stdout


@pytest.mark.parametrize("block_size", [0, 16, 48])
def test_block_size_must_be_a_multiple_of_32(tmp_path: Path, block_size: int) -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        VllmServer(tmp_path, venv=tmp_path, block_size=block_size)


def test_command_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")  # would override --kv-cache-memory-bytes
    server = VllmServer(tmp_path / "m", venv=tmp_path, port=8123, num_gpu_blocks_override=24,
                        extra_args=["--seed", "3"], extra_env={"VLLM_LOGGING_LEVEL": "DEBUG"},
                        work_dir=tmp_path / "w")
    cmd = server.command()
    assert cmd[:3] == [str(tmp_path / "bin" / "vllm"), "serve", str(tmp_path / "m")]

    def flag(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert flag("--host") == "127.0.0.1" and flag("--port") == "8123"
    assert flag("--num-gpu-blocks-override") == "24" and flag("--block-size") == "32"
    assert "--enforce-eager" in cmd and cmd[-2:] == ["--seed", "3"]
    env = server.environment()
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["OMP_NUM_THREADS"] == "1" and env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert server.url == "http://127.0.0.1:8123"
