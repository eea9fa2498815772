import math

import numpy as np
import pytest

from rlserve.bench.metrics import calculate_metrics, parse_goodput
from rlserve.bench.request import RequestOutput
from rlserve.bench.runner import BenchRun
from rlserve.errors import ConfigError
from rlserve.metrics import Slo
from rlserve.telemetry.monitor import Measurement


def out(send: float, first: float, finish: float, n_out: int, itl: list[float]) -> RequestOutput:
    return RequestOutput(success=True, prompt_tokens=10, output_tokens=n_out, send_s=send, first_token_s=first,
                         finish_s=finish, itl_s=itl)


def make_run(energy: Measurement | None = None) -> BenchRun:
    outputs = [
        out(100.0, 100.1, 100.5, 5, [0.1] * 4),  # ttft 100 ms, tpot 100 ms, e2el 500 ms
        out(100.5, 100.8, 101.0, 3, [0.1, 0.1]),  # ttft 300 ms, tpot 100 ms, e2el 500 ms
        RequestOutput(success=False, error="HTTP 500", prompt_tokens=10, send_s=101.0),
    ]
    return BenchRun("m", outputs, np.array([100.0, 100.4, 101.0]), 100.0, 101.0, energy)


def test_latency_metrics_and_throughput():
    m = calculate_metrics(make_run(), percentile_metrics=["ttft", "e2el"], percentiles=[50, 90])
    assert (m.completed, m.failed) == (2, 1)
    lat = m.latency_ms
    assert lat["mean_ttft_ms"] == pytest.approx(200.0) and lat["median_ttft_ms"] == pytest.approx(200.0)
    assert lat["mean_tpot_ms"] == pytest.approx(100.0)
    assert lat["mean_itl_ms"] == pytest.approx(100.0) and lat["p99_itl_ms"] == pytest.approx(100.0)
    assert lat["mean_e2el_ms"] == pytest.approx(500.0)
    assert m.duration == pytest.approx(1.0)
    assert m.request_throughput == pytest.approx(2.0)
    assert m.output_throughput == pytest.approx(8.0)
    assert m.total_input_tokens == 20 and m.total_output_tokens == 8
    assert m.mean_scheduling_lag_ms == pytest.approx(100.0 / 3)
    # vLLM's flat keys: p<q> only for the selected metrics, p99 for every metric
    assert lat["p90_ttft_ms"] == pytest.approx(280.0) and "p50_e2el_ms" in lat
    assert "p90_tpot_ms" not in lat and "p99_tpot_ms" in lat
    assert m.request_goodput is None and m.energy_j is None and m.goodput_per_joule is None
    # vLLM's peaks: one-second buckets from the first send; both requests were in flight in second 0, which saw
    # 5 + 2 tokens (the second request's last token, at t = 1.0 s, opens second 1)
    assert m.max_concurrent_requests == 2 and m.max_output_tokens_per_s == 7.0


def test_goodput_counts_failures_as_misses_and_energy_per_unit():
    meas = Measurement("benchmark", 1.0, gpu_energy_j=80.0, cpu_energy_j=20.0)
    m = calculate_metrics(make_run(meas), slo=Slo(ttft_s=0.2))
    assert m.slo_attainment == pytest.approx(1 / 3)
    assert m.request_goodput == pytest.approx(1.0)
    assert (m.gpu_energy_j, m.cpu_energy_j, m.energy_j) == (80.0, 20.0, 100.0)
    assert m.energy_per_request_j == pytest.approx(50.0)
    assert m.energy_per_output_token_j == pytest.approx(12.5)
    assert m.energy_per_total_token_j == pytest.approx(100.0 / 28)
    assert m.goodput_per_joule == pytest.approx(0.01)
    d = m.to_dict()
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in d.values())


def test_parse_goodput():
    slo = parse_goodput(["ttft:500", "tpot:50", "e2el:10000"])
    assert (slo.ttft_s, slo.tpot_s, slo.e2e_s) == (0.5, 0.05, 10.0)
    for bad in (["ttft=5"], ["itl:5"], ["ttft:fast"], ["ttft:-1"]):
        with pytest.raises(ConfigError):
            parse_goodput(bad)


def test_client_queue_metrics_only_when_selected():
    plain = calculate_metrics(make_run()).latency_ms
    assert not any("client_queue" in k for k in plain)
    m = calculate_metrics(make_run(), percentile_metrics=["ttft", "client_queue_time", "e2el_including_client_queue"],
                          percentiles=[50]).latency_ms
    # successful requests waited 0 and 100 ms client-side (send - scheduled); E2EL 500 ms each
    assert m["mean_client_queue_time_ms"] == pytest.approx(50.0) and "p99_client_queue_time_ms" not in m
    assert m["p50_e2el_including_client_queue_ms"] == pytest.approx(550.0)


def test_unknown_percentile_metric():
    with pytest.raises(ConfigError):
        calculate_metrics(make_run(), percentile_metrics=["latency"])
