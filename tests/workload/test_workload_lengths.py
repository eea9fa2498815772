import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlserve.errors import ConfigError
from rlserve.workload import lengths
from rlserve.workload.lengths import LogNormal


def test_lognormal_from_mean_median_reproduces_splitwise_targets():
    prompt, output = lengths.lognormal(
        LogNormal.from_mean_median(1155, 1020), LogNormal.from_mean_median(211, 129), 20_000,
        np.random.default_rng(0),
    )
    assert prompt.dtype == np.int64 and output.dtype == np.int64
    assert prompt.mean() == pytest.approx(1155, rel=0.05)
    assert np.median(prompt) == pytest.approx(1020, rel=0.05)
    assert output.mean() == pytest.approx(211, rel=0.05)
    assert np.median(output) == pytest.approx(129, rel=0.05)


def test_lognormal_parameters_are_checked():
    with pytest.raises(ConfigError, match="mean >= median"):
        LogNormal.from_mean_median(100, 200)
    with pytest.raises(ConfigError):
        LogNormal(mu=1.0, sigma=-0.5)


def test_uniform_is_inclusive_and_in_range():
    prompt, output = lengths.uniform((3, 5), (1, 1), 2000, np.random.default_rng(1))
    assert set(prompt.tolist()) == {3, 4, 5}
    assert set(output.tolist()) == {1}
    with pytest.raises(ConfigError):
        lengths.uniform((5, 3), (1, 1), 10, np.random.default_rng(1))


def test_fixed():
    prompt, output = lengths.fixed(7, 9, 3)
    assert prompt.tolist() == [7, 7, 7] and output.tolist() == [9, 9, 9]
    with pytest.raises(ConfigError):
        lengths.fixed(0, 9, 3)


def test_empirical_resamples_whole_pairs():
    pool_p, pool_o = np.array([10, 20, 30]), np.array([1, 2, 3])
    prompt, output = lengths.empirical(pool_p, pool_o, 500, np.random.default_rng(2))
    assert set(zip(prompt.tolist(), output.tolist(), strict=True)) == {(10, 1), (20, 2), (30, 3)}


def test_clip_lengths_caps_and_counts():
    with pytest.warns(UserWarning, match="shortened 3 of 4"):
        prompt, output, clipped = lengths.clip_lengths(
            np.array([100, 10, 5, 50]), np.array([5, 100, 5, 60]),
            max_prompt_tokens=80, max_output_tokens=90, max_total_tokens=100,
        )
    assert prompt.tolist() == [80, 10, 5, 50]
    assert output.tolist() == [5, 90, 5, 50]
    assert clipped == 3


def test_clip_lengths_prompt_over_context_leaves_one_output_token():
    with pytest.warns(UserWarning, match="shortened 1 of 1"):
        prompt, output, _ = lengths.clip_lengths(np.array([5000]), np.array([10]), max_total_tokens=4096)
    assert (prompt[0], output[0]) == (4095, 1)


def test_clip_lengths_warns_only_when_many_are_clipped():
    prompt = np.full(1000, 10)
    prompt[0] = 1000
    _, _, clipped = lengths.clip_lengths(prompt, np.ones(1000, np.int64), max_prompt_tokens=100)  # 0.1%: silent
    assert clipped == 1
    prompt[:50] = 1000
    with pytest.warns(UserWarning, match="5.0%"):
        lengths.clip_lengths(prompt, np.ones(1000, np.int64), max_prompt_tokens=100)


@settings(max_examples=60, deadline=None)
@given(
    mean=st.floats(1.0, 5000.0),
    ratio=st.floats(1.0, 4.0),
    cap_prompt=st.none() | st.integers(1, 3000),
    cap_output=st.none() | st.integers(1, 3000),
    cap_total=st.none() | st.integers(2, 5000),
    seed=st.integers(0, 2**32),
)
def test_lengths_are_at_least_one_and_respect_caps(mean, ratio, cap_prompt, cap_output, cap_total, seed):
    dist = LogNormal.from_mean_median(mean, mean / ratio)
    prompt, output = lengths.lognormal(dist, dist, 200, np.random.default_rng(seed))
    assert prompt.min() >= 1 and output.min() >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heavy clipping warns; this test is about the bounds
        prompt, output, _ = lengths.clip_lengths(
            prompt, output, max_prompt_tokens=cap_prompt, max_output_tokens=cap_output, max_total_tokens=cap_total
        )
    assert prompt.min() >= 1 and output.min() >= 1
    if cap_prompt:
        assert prompt.max() <= cap_prompt
    if cap_output:
        assert output.max() <= cap_output
    if cap_total:
        assert (prompt + output).max() <= cap_total
