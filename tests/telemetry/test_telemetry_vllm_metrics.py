import math
import time

import pytest

from rlserve.telemetry.vllm_metrics import (
    MetricsParseError,
    VllmMetricsMonitor,
    kv_cache_stats,
    parse_vllm_metrics,
    with_rates,
)
from rlserve.testing.fake_openai_server import FakeServerConfig, serve_in_thread

# What vLLM >= 0.10 serves (abridged from a real /metrics page: two engines, counters with _total and _created).
V1_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.35
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="m"} 4.0
vllm:num_preemptions_created{engine="0",model_name="m"} 1.7e9
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 717.0
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 5000.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 8000.0
# TYPE vllm:request_success counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 7.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 3.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="32",cache_dtype="auto",num_gpu_blocks="2000"} 1.0
"""

LEGACY_TEXT = """\
vllm:num_requests_running{model_name="m"} 5.0
vllm:num_requests_waiting{model_name="m"} 2.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0
"""


def test_parse_v1_metrics_sums_engines_and_reasons():
    m = parse_vllm_metrics(V1_TEXT)
    assert m.num_requests_running == 5.0 and m.num_requests_waiting == 1.0
    assert m.kv_cache_usage == pytest.approx(0.30)
    assert m.num_preemptions_total == 4.0  # the _created sample is not added in
    assert m.request_success_total == 10.0
    assert (m.num_gpu_blocks, m.block_size) == (2000, 32)


def test_used_blocks_treat_usage_as_a_fraction():
    s = with_rates(parse_vllm_metrics(V1_TEXT), 1.0, None)
    # 0.30 of 2000 blocks is 600 blocks (the seed computed 2000 * 0.30 / 100 = 6).
    assert s.used_blocks == pytest.approx(600.0)
    assert s.free_blocks == pytest.approx(1400.0)
    assert s.used_tokens == pytest.approx(600.0 * 32)


def test_parse_legacy_name_and_unprofiled_cache_config():
    m = parse_vllm_metrics(LEGACY_TEXT)
    assert m.kv_cache_usage == 0.5 and m.num_requests_running == 5.0
    assert m.num_gpu_blocks is None and m.block_size == 16
    assert math.isnan(m.num_preemptions_total)
    assert with_rates(m, 0.0, None).used_blocks is None


@pytest.mark.parametrize("text", ["<html><body>502 Bad Gateway</body></html>\n", "hello world\n", "",
                                  "process_cpu_seconds_total 12.0\n"])
def test_garbage_raises_parse_error(text):
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics(text)


def test_rates_over_window_and_counter_reset():
    m0 = parse_vllm_metrics(V1_TEXT)
    s0 = with_rates(m0, 10.0, None)
    later = V1_TEXT.replace("5000.0", "5500.0").replace("8000.0", "9000.0").replace("} 7.0", "} 12.0").replace(
        "1000.0", "1100.0").replace("717.0", "767.0")
    s1 = with_rates(parse_vllm_metrics(later), 12.0, s0)
    assert s1.request_throughput_per_s == pytest.approx(2.5)
    assert s1.generation_tokens_per_s == pytest.approx(500.0)
    assert s1.prompt_tokens_per_s == pytest.approx(250.0)
    assert s1.prefix_cache_hit_rate == pytest.approx(0.5)
    restarted = with_rates(parse_vllm_metrics(V1_TEXT.replace("8000.0", "10.0")), 14.0, s1)
    assert math.isnan(restarted.generation_tokens_per_s)


def test_gaps_counted_for_garbage_error_slow_and_down_server():
    cfg = FakeServerConfig()
    with serve_in_thread(cfg) as server:
        mon = VllmMetricsMonitor(server.base_url, interval_s=0.5, timeout_s=0.2)
        assert mon.sample_now() is not None
        cfg.metrics_mode = "garbage"
        assert mon.sample_now() is None
        cfg.metrics_mode = "error"
        assert mon.sample_now() is None
        cfg.metrics_mode, cfg.metrics_delay_s = "ok", 1.0
        assert mon.sample_now() is None
        cfg.metrics_delay_s = 0.0
        assert mon.sample_now() is not None
    assert mon.sample_now() is None  # the server is gone
    mon.stop()
    assert mon.gap_counts() == {"garbage": 1, "http_error": 1, "timeout": 1, "unreachable": 1}
    assert len(mon.trace()) == 2


def test_background_thread_samples_and_stops():
    with serve_in_thread() as server, VllmMetricsMonitor(server.base_url, interval_s=0.05) as mon:
        deadline = time.monotonic() + 10
        while len(mon.trace()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(mon.trace()) >= 3
    assert not mon.running
    times = [s.t_s for s in mon.trace()]
    assert times == sorted(times)


def test_kv_cache_stats_schema():
    text2 = V1_TEXT.replace("0.25", "0.45").replace("0.35", "0.55").replace("} 4.0", "} 6.0")
    s0 = with_rates(parse_vllm_metrics(V1_TEXT), 100.0, None)
    s1 = with_rates(parse_vllm_metrics(text2), 100.5, s0)
    st = kv_cache_stats([s0, s1], [], interval_s=0.5, t0_s=100.0)
    assert set(st) >= {"avg_stats", "detailed_stats", "trace", "monitoring_interval_seconds", "samples_collected"}
    assert st["avg_stats"]["avg_cache_usage_perc"] == pytest.approx(40.0)  # percent
    assert st["avg_stats"]["avg_used_blocks"] == pytest.approx(800.0)
    assert st["detailed_stats"]["static_config"]["total_kv_cache_tokens"] == 64000
    assert set(st["detailed_stats"]["cache_usage"]) >= {"min", "p25", "median", "p75", "p95", "max", "std"}
    assert st["detailed_stats"]["num_preemptions"] == 2.0
    assert st["trace"]["t_s"] == [0.0, 0.5] and st["trace"]["cache_usage"] == pytest.approx([30.0, 50.0])
    assert st["samples_collected"] == 2 and st["gaps"] == {"count": 0, "by_reason": {}}
