import json
import os
from pathlib import Path

import numpy as np
import pytest

from rlserve.errors import ConfigError, InputError
from rlserve.workload import Workload, WorkloadConfig, build_workload

SPLITWISE_LIKE = {"kind": "lognormal", "prompt_mean": 1155, "prompt_median": 1020, "output_mean": 211,
                  "output_median": 129}


def config(where: str = "scenario.yaml: workload", base_dir: Path | str = ".", **d) -> WorkloadConfig:
    d.setdefault("num_requests", 2000)
    d.setdefault("arrival", {"kind": "poisson", "qps": 10.0})
    d.setdefault("lengths", SPLITWISE_LIKE)
    return WorkloadConfig.from_dict(d, where=where, base_dir=base_dir)


def assert_same(a: Workload, b: Workload) -> None:
    for col in ("arrival_s", "prompt_tokens", "output_tokens", "prefix_id", "prefix_tokens"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))


@pytest.mark.parametrize(
    ("arrival", "lengths"),
    [
        ({"kind": "poisson", "qps": 5}, {"kind": "fixed", "prompt_tokens": 128, "output_tokens": 16}),
        ({"kind": "gamma", "qps": 5, "burstiness": 0.5},
         {"kind": "uniform", "prompt_min": 1, "prompt_max": 9, "output_min": 2, "output_max": 3}),
        ({"kind": "constant", "qps": 5}, {"kind": "lognormal", "prompt_mu": 6.0, "prompt_sigma": 0.5,
                                          "output_mean": 211, "output_median": 129}),
        ({"kind": "ramp", "qps_start": 1, "qps_end": 9}, SPLITWISE_LIKE),
        ({"kind": "piecewise", "rates_qps": [1, 0, 4], "segment_s": 60}, SPLITWISE_LIKE),
    ],
)
def test_every_generated_kind_builds(arrival, lengths):
    w = build_workload(config(arrival=arrival, lengths=lengths, num_requests=500), seed=3)
    assert len(w) == 500 and w.arrival_s[0] == 0.0
    assert w.prompt_tokens.min() >= 1 and w.output_tokens.min() >= 1
    assert np.all(w.prefix_id == -1) and np.all(w.prefix_tokens == 0)


def test_same_seed_identical_other_seed_differs():
    cfg = config(arrival={"kind": "gamma", "qps": 4, "burstiness": 0.3},
                 prefix={"share_fraction": 0.5, "num_prefixes": 3, "prefix_tokens": 64})
    assert_same(build_workload(cfg, 11), build_workload(cfg, 11))
    other = build_workload(cfg, 12)
    assert not np.array_equal(build_workload(cfg, 11).arrival_s, other.arrival_s)
    assert not np.array_equal(build_workload(cfg, 11).prompt_tokens, other.prompt_tokens)


def test_streams_are_independent():
    base = build_workload(config(), 5)
    other_lengths = build_workload(config(lengths={"kind": "fixed", "prompt_tokens": 9, "output_tokens": 9}), 5)
    np.testing.assert_array_equal(base.arrival_s, other_lengths.arrival_s)
    other_arrivals = build_workload(config(arrival={"kind": "gamma", "qps": 3, "burstiness": 2}), 5)
    np.testing.assert_array_equal(base.prompt_tokens, other_arrivals.prompt_tokens)
    with_prefix = build_workload(config(prefix={"share_fraction": 0.5, "num_prefixes": 3, "prefix_tokens": 8}), 5)
    np.testing.assert_array_equal(base.prompt_tokens, with_prefix.prompt_tokens)
    np.testing.assert_array_equal(base.arrival_s, with_prefix.arrival_s)


def test_prefixes():
    w = build_workload(config(num_requests=20_000, lengths={"kind": "uniform", "prompt_min": 100, "prompt_max": 400,
                                                            "output_min": 1, "output_max": 5},
                              prefix={"share_fraction": 0.3, "num_prefixes": 4, "prefix_tokens": 120}), 1)
    shared = w.prefix_id >= 0
    assert shared.mean() == pytest.approx(0.3, abs=0.02)
    assert set(np.unique(w.prefix_id[shared]).tolist()) == {0, 1, 2, 3}
    assert np.all(w.prefix_tokens <= w.prompt_tokens)
    assert np.all(w.prefix_tokens[~shared] == 0)
    short = shared & (w.prompt_tokens < 120)
    assert short.any() and np.all(w.prefix_tokens[short] == w.prompt_tokens[short])
    assert np.all(w.prefix_tokens[shared & ~short] == 120)


def test_prefix_longer_than_most_prompts_warns():
    cfg = config(lengths={"kind": "fixed", "prompt_tokens": 50, "output_tokens": 5},
                 prefix={"share_fraction": 1.0, "num_prefixes": 2, "prefix_tokens": 100})
    with pytest.warns(UserWarning, match="prefix_tokens=100 is longer than the prompt"):
        w = build_workload(cfg, 0)
    assert np.all(w.prefix_tokens == 50)


def test_caps_are_applied():
    uncapped = build_workload(config(), 0)
    assert uncapped.prompt_tokens.max() > 4000 and uncapped.output_tokens.max() > 2000
    cfg = config(max_prompt_tokens=4000, max_output_tokens=2000, max_total_tokens=5000)
    w = build_workload(cfg, 0)  # the lognormal tail beyond these caps is under 1%: no warning
    assert w.prompt_tokens.max() <= 4000 and w.output_tokens.max() <= 2000
    assert (w.prompt_tokens + w.output_tokens).max() <= 5000
    with pytest.warns(UserWarning, match="token caps shortened"):
        build_workload(config(max_output_tokens=64), 0)


def test_to_dict_round_trips():
    cfg = config(arrival={"kind": "piecewise", "rates_qps": [1, 2.5], "segment_s": 30},
                 prefix={"share_fraction": 0.2, "num_prefixes": 2, "prefix_tokens": 10}, max_total_tokens=8192)
    d = cfg.to_dict()
    json.dumps(d)  # plain data
    assert d["arrival"] == {"kind": "piecewise", "rates_qps": [1.0, 2.5], "segment_s": 30}
    assert WorkloadConfig.from_dict(d, where="again") == cfg


# --- file lengths ------------------------------------------------------------------------------------------

TRACE = "arrived_at,num_prefill_tokens,num_decode_tokens\n10,100,1\n12,200,2\n13,300,3\n20,400,4\n"


@pytest.fixture
def trace_dir(tmp_path):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "small.csv").write_text(TRACE)
    return tmp_path


def test_trace_replay_with_time_scale_relative_path(trace_dir):
    cfg = config(base_dir=trace_dir, num_requests=None, arrival={"kind": "trace", "time_scale": 0.5},
                 lengths={"kind": "trace", "path": "traces/small.csv"})
    w = build_workload(cfg, 0)
    assert w.arrival_s.tolist() == [0.0, 1.0, 1.5, 5.0]
    assert w.prompt_tokens.tolist() == [100, 200, 300, 400]
    assert w.output_tokens.tolist() == [1, 2, 3, 4]


def test_trace_replay_to_target_qps_first_rows(trace_dir):
    cfg = config(base_dir=trace_dir, num_requests=3, arrival={"kind": "trace", "qps": 4.0},
                 lengths={"kind": "trace", "path": "traces/small.csv"})
    w = build_workload(cfg, 0)
    # rows at 10, 12, 13 s: 2 gaps over 3 s, stretched by (3 - 1) / (4 qps * 3 s) = 1/6
    np.testing.assert_allclose(w.arrival_s, [0.0, 1 / 3, 0.5])
    assert w.prompt_tokens.tolist() == [100, 200, 300]


def test_trace_lengths_resampled_or_in_order_under_generated_arrivals(trace_dir):
    lengths = {"kind": "trace", "path": str(trace_dir / "traces" / "small.csv")}
    w = build_workload(config(num_requests=50, lengths=lengths), 0)
    assert set(zip(w.prompt_tokens.tolist(), w.output_tokens.tolist(), strict=True)) <= {
        (100, 1), (200, 2), (300, 3), (400, 4)}
    w = build_workload(config(num_requests=2, lengths={**lengths, "order": "sequential"}), 0)
    assert w.prompt_tokens.tolist() == [100, 200]
    with pytest.raises(ConfigError, match="has only 4 rows"):
        build_workload(config(num_requests=5, lengths={**lengths, "order": "sequential"}), 0)


def test_sharegpt_and_azure_lengths(tmp_path):
    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps([{"conversations": [{"from": "human", "value": "abcdefgh"},
                                                 {"from": "gpt", "value": "abcd"}]}]))
    w = build_workload(config(num_requests=3, lengths={"kind": "sharegpt", "path": "sg.json", "tokenizer": None},
                              base_dir=tmp_path), 0)
    assert w.prompt_tokens.tolist() == [2, 2, 2] and w.output_tokens.tolist() == [1, 1, 1]
    az = tmp_path / "az.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,7,3\n2023-11-16 18:15:48.5,8,4\n")
    cfg = config(num_requests=None, arrival={"kind": "trace"}, lengths={"kind": "azure", "path": str(az)})
    w = build_workload(cfg, 0)
    assert w.arrival_s.tolist() == [0.0, 2.0] and w.prompt_tokens.tolist() == [7, 8]


def test_changed_file_is_reloaded(trace_dir):
    path = trace_dir / "traces" / "small.csv"
    cfg = config(num_requests=None, arrival={"kind": "trace"}, lengths={"kind": "trace", "path": str(path)})
    assert build_workload(cfg, 0).prompt_tokens.tolist() == [100, 200, 300, 400]
    path.write_text("num_prefill_tokens,num_decode_tokens\n7,1\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-grained file systems
    with pytest.raises(ConfigError, match="no arrived_at column"):
        build_workload(cfg, 0)


def test_bad_file_is_an_input_error(tmp_path):
    (tmp_path / "bad.csv").write_text("num_prefill_tokens,num_decode_tokens\n1,x\n")
    cfg = config(lengths={"kind": "trace", "path": "bad.csv"}, base_dir=tmp_path)
    with pytest.raises(InputError, match=r"bad\.csv: line 2: num_decode_tokens is 'x'"):
        build_workload(cfg, 0)


# --- validation ------------------------------------------------------------------------------------------

BAD = [
    ({"arrival": {"kind": "poisson", "qps": 1, "rate": 2}},
     "unknown key(s) arrival.rate; allowed here: kind, qps"),
    ({"arrivals": {}}, "unknown key 'arrivals'; allowed: arrival, lengths, max_output_tokens"),
    ({"arrival": {"kind": "gamma", "qps": 1}}, "missing key(s) arrival.burstiness"),
    ({"arrival": {"kind": "weibull"}}, "arrival.kind must be one of poisson, gamma, constant, ramp, piecewise, trace"),
    ({"arrival": {"kind": "poisson", "qps": -2}}, "arrival.qps: input should be greater than 0, got -2"),
    ({"arrival": {"kind": "poisson", "qps": "fast"}}, "arrival.qps: input should be a valid number, got 'fast'"),
    ({"arrival": {"kind": "poisson", "qps": None}}, "missing key(s) arrival.qps"),  # null: not given
    ({"arrival": {"kind": "poisson", "qps": float("nan")}}, "arrival.qps: input should be a finite number"),
    ({"arrival": {"kind": "piecewise", "rates_qps": [0, 0], "segment_s": 1}},
     "arrival.rates_qps: needs a rate > 0 (all are 0)"),
    ({"arrival": {"kind": "piecewise", "rates_qps": [], "segment_s": 1}}, "arrival.rates_qps: tuple should have at "
                                                                          "least 1 item"),
    ({"num_requests": 0}, "num_requests: input should be greater than or equal to 1, got 0"),
    ({"num_requests": 2.5}, "num_requests: input should be a valid integer, got 2.5"),
    ({"num_requests": True}, "num_requests: input should be a valid integer, got True"),
    ({"num_requests": "10"}, "num_requests: input should be a valid integer, got '10'"),
    ({"max_total_tokens": 1}, "max_total_tokens: input should be greater than or equal to 2, got 1"),
    ({"truncation": "middle"}, "truncation: input should be 'output_first' or 'proportional', got 'middle'"),
    ({"lengths": {"kind": "trace", "path": "x.csv", "order": "random"}},
     "lengths.order: input should be 'sample' or 'sequential', got 'random'"),
    ({"lengths": {"kind": "fixed", "prompt_tokens": 10, "output_tokens": 0.5}},
     "lengths.output_tokens: input should be a valid integer, got 0.5"),
    ({"sessions": {"think_time_s": 0}}, "sessions.think_time_s: input should be greater than 0, got 0"),
    ({"sessions": {"think_time_s": 1, "turns": 2}}, "unknown key 'sessions.turns'; allowed: think_time_s, turns_mean"),
    ({"prefix": {"share_fraction": 0.5, "num_prefixes": 1, "prefix_tokens": 8, "prepend": "yes"}},
     "prefix.prepend: input should be a valid boolean, got 'yes'"),
    ({"lengths": {"kind": "uniform", "prompt_min": 5, "prompt_max": 4, "output_min": 1, "output_max": 1}},
     "lengths.prompt_min must be <= lengths.prompt_max"),
    ({"lengths": {"kind": "lognormal", "prompt_mean": 5, "output_mu": 1, "output_sigma": 1}},
     "either prompt_mean and prompt_median or prompt_mu and prompt_sigma, got prompt_mean"),
    ({"lengths": {"kind": "lognormal", "prompt_mean": 5, "prompt_median": 9, "output_mu": 1, "output_sigma": 1}},
     "lengths prompt: lognormal needs mean >= median"),
    ({"lengths": {"kind": "trace", "path": "does/not/exist.csv"}}, "lengths.path"),
    ({"arrival": {"kind": "trace"}}, "lengths.kind must be trace or azure, not lognormal"),
    ({"num_requests": None}, "num_requests is required"),
    ({"prefix": {"share_fraction": 1.5, "num_prefixes": 1, "prefix_tokens": 1}},
     "prefix.share_fraction: input should be less than or equal to 1, got 1.5"),
    ({"prefix": {"share_fraction": 0.5}}, "prefix.num_prefixes: required key is missing (and 1 more problem)"),
    ({"lengths": "lognormal"}, "lengths.kind must be one of"),
    ({"arrival": {"qps": 1}}, "arrival.kind must be one of poisson, gamma, constant, ramp, piecewise, trace, got None"),
    ({"arrival": None}, "arrival: required key is missing"),
]


@pytest.mark.parametrize(("override", "message"), BAD)
def test_bad_config(override, message):
    with pytest.raises(ConfigError) as err:
        config(**override)
    assert str(err.value).startswith("scenario.yaml: workload: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_numpy_scalars_from_code_are_values_like_any_other():
    cfg = config(num_requests=np.int64(30), arrival={"kind": "poisson", "qps": np.float64(2.5)})
    assert (cfg.num_requests, cfg.arrival.qps) == (30, 2.5) and type(cfg.num_requests) is int
    with pytest.raises(ConfigError, match=r"num_requests: input should be a valid integer, got 2\.5"):
        config(num_requests=np.float32(2.5))


def test_trace_arrival_rules(trace_dir):
    lengths = {"kind": "trace", "path": str(trace_dir / "traces" / "small.csv")}
    with pytest.raises(ConfigError, match="not both"):
        config(arrival={"kind": "trace", "qps": 1, "time_scale": 2}, lengths=lengths)
    with pytest.raises(ConfigError, match="order must be sequential"):
        config(arrival={"kind": "trace"}, lengths={**lengths, "order": "sample"})


def test_bad_seed():
    with pytest.raises(ConfigError, match="seed"):
        build_workload(config(), -1)


# --- declared max_tokens --------------------------------------------------------------------------------


def test_declared_max_tokens_default_is_a_fixed_cap_capped_by_the_model_length():
    w = build_workload(config(max_total_tokens=4096), 0, max_model_len=3000)
    assert w.max_tokens_source == "fixed:2048" and not w.oracle
    assert (w.max_tokens == np.minimum(2048, np.maximum(3000 - w.prompt_tokens, 1))).all()
    assert (w.output_tokens <= w.max_tokens).all()  # generation stops at max_tokens
    assert (w.output_tokens < w.max_tokens).mean() > 0.9  # most answers end well before the cap
    assert w.request(5).max_tokens == w.max_tokens[5] and not hasattr(w.request(5), "output_tokens")


def test_declared_max_tokens_kinds():
    base = build_workload(config(), 0)
    multiple = build_workload(config(max_tokens={"kind": "multiple", "factor": 1.5}), 0)
    assert multiple.max_tokens_source == "multiple:1.5"
    assert (multiple.max_tokens == np.ceil(1.5 * multiple.output_tokens)).all()
    exact = build_workload(config(max_tokens={"kind": "exact"}), 0)
    assert exact.oracle and exact.max_tokens_source == "exact (oracle)"
    assert (exact.max_tokens == exact.output_tokens).all()
    fixed = build_workload(config(max_tokens={"kind": "fixed", "tokens": 100}), 0)
    assert (fixed.max_tokens == 100).all() and (fixed.output_tokens == np.minimum(base.output_tokens, 100)).all()
    np.testing.assert_array_equal(fixed.arrival_s, base.arrival_s)  # only the sizes change


def test_declared_max_tokens_from_a_trace_column(tmp_path):
    (tmp_path / "t.csv").write_text("num_prefill_tokens,num_decode_tokens,max_tokens\n10,5,8\n20,7,7\n")
    w = build_workload(config(base_dir=tmp_path, num_requests=None, max_tokens={"kind": "trace"},
                              lengths={"kind": "trace", "path": "t.csv", "order": "sequential"}), 0)
    assert (w.max_tokens.tolist(), w.output_tokens.tolist(), w.max_tokens_source) == ([8, 7], [5, 7], "trace")
    (tmp_path / "bad.csv").write_text("num_prefill_tokens,num_decode_tokens,max_tokens\n10,5,4\n")
    with pytest.raises(InputError, match="line 2: max_tokens 4 is below num_decode_tokens 5"):
        build_workload(config(base_dir=tmp_path, num_requests=None, max_tokens={"kind": "trace"},
                              lengths={"kind": "trace", "path": "bad.csv", "order": "sequential"}), 0)
    with pytest.raises(ConfigError, match="max_tokens.kind trace reads the max_tokens column"):
        config(max_tokens={"kind": "trace"})
    with pytest.raises(ConfigError, match="max_tokens.factor: input should be greater than or equal to 1, got 0.5"):
        config(max_tokens={"kind": "multiple", "factor": 0.5})
