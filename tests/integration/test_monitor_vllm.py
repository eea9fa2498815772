"""Monitors against real vLLM CPU servers: KV usage in the right units, queues and preemptions under pressure."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rlserve.bench.datasets import DatasetConfig, sample_dataset
from rlserve.bench.runner import RunnerConfig, run_benchmark
from rlserve.cli.main import app
from rlserve.telemetry.recorder import Recorder
from rlserve.telemetry.vllm_metrics import VllmMetricsMonitor
from rlserve.testing.vllm_server import VllmServer


def test_kv_usage_and_preemptions_under_a_small_cache(vllm_kv_pressure_server: VllmServer) -> None:
    server = vllm_kv_pressure_server
    blocks = server.num_gpu_blocks_override
    assert blocks is not None
    # 8 distinct prompts x (40 + 400) tokens need ~110 blocks of 32 tokens; the cache has far fewer.
    data = sample_dataset(DatasetConfig(num_prompts=8, random_input_len=40, random_output_len=400),
                          np.random.default_rng(0))
    rec = Recorder(vllm=VllmMetricsMonitor(server.url, interval_s=0.1))
    run = asyncio.run(run_benchmark(RunnerConfig(base_url=server.url, model=server.model_name),
                                    data.requests, np.zeros(8), recorder=rec))
    assert all(o.success and o.output_tokens == 400 for o in run.outputs)
    trace = rec.vllm.trace()
    assert trace and trace[0].num_gpu_blocks == blocks and trace[0].block_size == 32
    peak = max(trace, key=lambda s: s.kv_cache_usage)
    assert peak.kv_cache_usage >= 0.9
    # Fraction x blocks: ~22-24 blocks used at the peak (the seed's /100 would have said 0.2).
    assert blocks * 0.9 <= peak.used_blocks <= blocks
    assert peak.used_tokens == pytest.approx(peak.used_blocks * 32)
    assert max(s.num_requests_running for s in trace) >= 2
    assert max(s.num_requests_waiting for s in trace) >= 1
    stats = rec.result_sections()["kv_cache_monitoring_stats"]
    assert stats["detailed_stats"]["num_preemptions"] >= 1
    assert stats["avg_stats"]["avg_used_blocks"] > 0
    assert any(s.generation_tokens_per_s > 0 for s in trace if np.isfinite(s.generation_tokens_per_s))


def test_state_cli_reads_a_live_server(vllm_server: VllmServer) -> None:
    res = CliRunner().invoke(app, ["state", "--url", vllm_server.url, "--window-s", "1", "--json"])
    assert res.exit_code == 0, res.output
    state = json.loads(res.stdout[res.stdout.index("{"):])
    assert len(state["state"]) == 10
    assert state["measured"][5:8] == [True, True, True]  # running, waiting, KV usage come from /metrics
    assert all(0.0 <= x <= 1.0 for x in state["state"])
