import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlserve.errors import ConfigError
from rlserve.workload import arrivals


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def gap_cv2(t: np.ndarray) -> float:
    gaps = np.diff(t)
    return float(gaps.var() / gaps.mean() ** 2)


def test_poisson_mean_rate_and_exponential_gaps():
    t = arrivals.poisson(12.0, 20_000, rng())
    assert (len(t) - 1) / t[-1] == pytest.approx(12.0, rel=0.03)
    assert gap_cv2(t) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_keeps_rate_and_has_cv2_one_over_burstiness(burstiness):
    t = arrivals.gamma(5.0, burstiness, 20_000, rng(1))
    assert (len(t) - 1) / t[-1] == pytest.approx(5.0, rel=0.05)
    assert gap_cv2(t) == pytest.approx(1.0 / burstiness, rel=0.1)


def test_same_seed_same_schedule_other_seed_differs():
    a = arrivals.gamma(3.0, 0.5, 1000, rng(7))
    b = arrivals.gamma(3.0, 0.5, 1000, rng(7))
    c = arrivals.gamma(3.0, 0.5, 1000, rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_constant_is_evenly_spaced_from_zero():
    np.testing.assert_allclose(arrivals.constant(4.0, 5), [0.0, 0.25, 0.5, 0.75, 1.0])


def test_ramp_rate_follows_the_line():
    qps_start, qps_end, n = 2.0, 20.0, 20_000
    t = arrivals.ramp(qps_start, qps_end, n, rng(2))
    ramp_s = 2 * n / (qps_start + qps_end)
    half = ramp_s / 2
    expected_first_half = qps_start * half + (qps_end - qps_start) / ramp_s * half**2 / 2
    assert np.count_nonzero(t < half) == pytest.approx(expected_first_half, rel=0.05)
    # local rates near the two ends
    early = np.count_nonzero(t < 0.1 * ramp_s) / (0.1 * ramp_s)
    late = np.count_nonzero((t > 0.9 * ramp_s) & (t < ramp_s)) / (0.1 * ramp_s)
    assert early == pytest.approx(qps_start + 0.05 * (qps_end - qps_start), rel=0.1)
    assert late == pytest.approx(qps_end - 0.05 * (qps_end - qps_start), rel=0.1)


def test_ramp_down_and_flat_ramp():
    t = arrivals.ramp(20.0, 2.0, 20_000, rng(3))
    assert np.all(np.diff(t) >= 0)
    ramp_s = 2 * 20_000 / 22
    assert np.count_nonzero(t < ramp_s / 2) > 2 * np.count_nonzero((t >= ramp_s / 2) & (t < ramp_s))
    flat = arrivals.ramp(8.0, 8.0, 20_000, rng(4))
    assert (len(flat) - 1) / flat[-1] == pytest.approx(8.0, rel=0.03)


def test_piecewise_rates_per_segment_including_zero():
    rates, segment_s = [0.0, 5.0, 10.0, 0.0], 100.0
    t = arrivals.piecewise_poisson(rates, segment_s, 30_000, rng(5))
    cycles = t[-1] / (segment_s * len(rates))
    seg = (t[1:] // segment_s % len(rates)).astype(int)  # t[0] = 0 is the fixed first request
    counts = np.bincount(seg, minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    assert counts[1] / (cycles * segment_s) == pytest.approx(5.0, rel=0.05)
    assert counts[2] / (cycles * segment_s) == pytest.approx(10.0, rel=0.05)


def test_trace_replay_shifts_and_scales():
    t = arrivals.trace_replay(np.array([10.0, 11.0, 13.0]), time_scale=2.0)
    np.testing.assert_allclose(t, [0.0, 2.0, 6.0])
    times = np.array([5.0, 6.0, 9.0, 15.0])
    scaled = arrivals.trace_replay(times, arrivals.time_scale_for_qps(times, 1.5))
    assert (len(scaled) - 1) / scaled[-1] == pytest.approx(1.5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: arrivals.poisson(0.0, 10, rng()),
        lambda: arrivals.poisson(float("nan"), 10, rng()),
        lambda: arrivals.poisson(1.0, 0, rng()),
        lambda: arrivals.gamma(1.0, 0.0, 10, rng()),
        lambda: arrivals.constant(-1.0, 10),
        lambda: arrivals.ramp(1.0, float("inf"), 10, rng()),
        lambda: arrivals.piecewise_poisson([0.0, 0.0], 1.0, 10, rng()),
        lambda: arrivals.piecewise_poisson([1.0, -1.0], 1.0, 10, rng()),
        lambda: arrivals.trace_replay(np.array([1.0, 0.5])),
        lambda: arrivals.trace_replay(np.array([1.0, 2.0]), time_scale=0.0),
        lambda: arrivals.time_scale_for_qps(np.array([3.0, 3.0]), 1.0),
    ],
)
def test_bad_arguments_are_config_errors(call):
    with pytest.raises(ConfigError):
        call()


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["poisson", "gamma", "constant", "ramp", "piecewise"]),
    qps=st.floats(0.01, 1000.0),
    other=st.floats(0.05, 50.0),
    n=st.integers(1, 400),
    seed=st.integers(0, 2**32),
)
def test_every_process_starts_at_zero_and_never_goes_back(kind, qps, other, n, seed):
    g = rng(seed)
    t = {
        "poisson": lambda: arrivals.poisson(qps, n, g),
        "gamma": lambda: arrivals.gamma(qps, other, n, g),
        "constant": lambda: arrivals.constant(qps, n),
        "ramp": lambda: arrivals.ramp(qps, other, n, g),
        "piecewise": lambda: arrivals.piecewise_poisson([qps, 0.0, other], 3.0, n, g),
    }[kind]()
    assert t.dtype == np.float64 and len(t) == n and t[0] == 0.0
    assert np.all(np.isfinite(t)) and np.all(np.diff(t) >= 0)
