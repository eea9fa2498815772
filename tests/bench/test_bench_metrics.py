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
    assert m.mean_ttft_ms == pytest.approx(200.0) and m.median_ttft_ms == pytest.approx(200.0)
    assert m.mean_tpot_ms == pytest.approx(100.0)
    assert m.mean_itl_ms == pytest.approx(100.0) and m.p99_itl_ms == pytest.approx(100.0)
    assert m.mean_e2el_ms == pytest.approx(500.0)
    assert m.duration_s == pytest.approx(1.0)
    assert m.request_throughput_per_s == pytest.approx(2.0)
    assert m.output_throughput_tok_per_s == pytest.approx(8.0)
    assert m.total_input_tokens == 20 and m.total_output_tokens == 8
    assert m.mean_scheduling_lag_ms == pytest.approx(100.0 / 3)
    assert set(m.percentiles_ms) == {"ttft", "e2el"} and m.percentiles_ms["ttft"]["p90"] == pytest.approx(280.0)
    assert m.goodput_per_s is None and m.energy_j is None and m.goodput_per_joule is None


def test_goodput_counts_failures_as_misses_and_energy_per_unit():
    meas = Measurement("benchmark", 1.0, gpu_energy_j=80.0, cpu_energy_j=20.0)
    m = calculate_metrics(make_run(meas), slo=Slo(ttft_s=0.2))
    assert m.slo_attainment == pytest.approx(1 / 3)
    assert m.goodput_per_s == pytest.approx(1.0)
    assert (m.gpu_energy_j, m.cpu_energy_j, m.energy_j) == (80.0, 20.0, 100.0)
    assert m.energy_per_request_j == pytest.approx(50.0)
    assert m.energy_per_output_token_j == pytest.approx(12.5)
    assert m.goodput_per_joule == pytest.approx(0.01)
    d = m.to_dict()
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in d.values())


def test_parse_goodput():
    slo = parse_goodput(["ttft:500", "tpot:50", "e2el:10000"])
    assert (slo.ttft_s, slo.tpot_s, slo.e2e_s) == (0.5, 0.05, 10.0)
    for bad in (["ttft=5"], ["itl:5"], ["ttft:fast"], ["ttft:-1"]):
        with pytest.raises(ConfigError):
            parse_goodput(bad)


def test_unknown_percentile_metric():
    with pytest.raises(ConfigError):
        calculate_metrics(make_run(), percentile_metrics=["latency"])
