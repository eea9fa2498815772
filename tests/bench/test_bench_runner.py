import asyncio
import math
import threading
import time

import numpy as np
import pytest

from rlserve.bench.datasets import SampleRequest
from rlserve.bench.runner import RunnerConfig, arrival_schedule, run_benchmark
from rlserve.errors import BackendError, ConfigError
from rlserve.telemetry.recorder import Recorder
from rlserve.telemetry.vllm_metrics import VllmMetricsMonitor
from rlserve.testing.fake_openai_server import FakeServerConfig, serve_in_thread


def reqs(n: int, prompt: int = 8, out: int = 5) -> list[SampleRequest]:
    return [SampleRequest(tuple(range(100, 100 + prompt)), prompt, out) for _ in range(n)]


def test_arrival_schedule():
    assert np.array_equal(arrival_schedule(4, math.inf, 1.0, np.random.default_rng(0)), np.zeros(4))
    a = arrival_schedule(2000, 50.0, 1.0, np.random.default_rng(3))
    b = arrival_schedule(2000, 50.0, 1.0, np.random.default_rng(3))
    assert np.array_equal(a, b) and a[0] == 0.0
    assert 2000 / a[-1] == pytest.approx(50.0, rel=0.1)
    bursty = np.diff(arrival_schedule(2000, 50.0, 0.25, np.random.default_rng(3)))
    assert np.std(bursty) / np.mean(bursty) == pytest.approx(2.0, rel=0.2)  # CV^2 = 1/burstiness


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_run_against_streaming_server(endpoint):
    cfg = FakeServerConfig(ttft_delay_s=0.02, inter_token_delay_s=0.002)
    with serve_in_thread(cfg) as server:
        run = asyncio.run(run_benchmark(RunnerConfig(base_url=server.base_url, endpoint=endpoint, num_warmups=1),
                                        reqs(6), np.linspace(0.0, 0.05, 6)))
    assert run.model == "fake-model"
    for out in run.outputs:
        assert out.success, out.error
        assert out.output_tokens == 5 and len(out.itl_s) == 4
        assert out.ttft_s >= 0.02 and out.latency_s >= out.ttft_s
    assert np.all(np.array([o.send_s for o in run.outputs]) >= run.scheduled_s)
    assert run.scheduled_s[-1] - run.scheduled_s[0] == pytest.approx(0.05)


def test_max_concurrency_queues_client_side():
    cfg = FakeServerConfig(ttft_delay_s=0.05)
    with serve_in_thread(cfg) as server:
        run = asyncio.run(run_benchmark(RunnerConfig(base_url=server.base_url, max_concurrency=2),
                                        reqs(6, out=1), np.zeros(6)))
    sends = sorted(o.send_s for o in run.outputs)
    assert all(o.success for o in run.outputs)
    assert sends[2] - sends[0] >= 0.045  # the third request waited for a slot
    assert run.duration_s >= 0.14


def test_server_dying_mid_run_gives_failures_not_exceptions():
    cfg = FakeServerConfig(inter_token_delay_s=0.02, tokens_per_response=50)
    with serve_in_thread(cfg) as server:
        result: dict = {}

        def bench() -> None:
            result["run"] = asyncio.run(run_benchmark(RunnerConfig(base_url=server.base_url),
                                                      reqs(8, out=50), np.linspace(0.0, 1.0, 8)))

        t = threading.Thread(target=bench)
        t.start()
        time.sleep(0.3)
    t.join(30)
    run = result["run"]
    failed = [o for o in run.outputs if not o.success]
    assert failed and all(o.error for o in failed)
    assert math.isnan(failed[-1].first_token_s)  # requests sent after the stop never got a token


def test_http_errors_are_failed_outputs_and_unready_server_is_an_error():
    cfg = FakeServerConfig(completions_status=503)
    with serve_in_thread(cfg) as server:
        run = asyncio.run(run_benchmark(RunnerConfig(base_url=server.base_url, model="m"), reqs(2), np.zeros(2)))
        assert [o.success for o in run.outputs] == [False, False]
        assert run.outputs[0].error.startswith("HTTP 503")
        with pytest.raises(BackendError, match="warm-up"):
            asyncio.run(run_benchmark(RunnerConfig(base_url=server.base_url, model="m", num_warmups=1), reqs(1),
                                      np.zeros(1)))
        bad = RunnerConfig(base_url=server.base_url + "/nope", model="m", ready_timeout_s=0.5)
        with pytest.raises(BackendError, match="not ready"):
            asyncio.run(run_benchmark(bad, reqs(1), np.zeros(1)))


def test_config_errors():
    with pytest.raises(ConfigError):
        RunnerConfig(endpoint="/v1/embeddings")
    with pytest.raises(ConfigError):
        RunnerConfig(max_concurrency=0)


def test_recorder_window_covers_the_run():
    with serve_in_thread(FakeServerConfig(inter_token_delay_s=0.01)) as server:
        rec = Recorder(vllm=VllmMetricsMonitor(server.base_url, interval_s=0.05))
        run = asyncio.run(run_benchmark(RunnerConfig(base_url=server.base_url), reqs(5, out=20),
                                        np.linspace(0, 0.2, 5), recorder=rec))
    assert run.measurement is not None and run.measurement.time_s >= run.duration_s * 0.9
    assert run.measurement.energy_j is None  # no GPU/CPU energy monitors here
    assert len(rec.vllm.trace()) >= 2 and not rec.vllm.running
    assert max(s.num_requests_running for s in rec.vllm.trace()) >= 1
