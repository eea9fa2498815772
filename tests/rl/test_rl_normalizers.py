import numpy as np
import pytest

from rlserve.errors import InputError
from rlserve.rl.normalizers import ReturnScaler, RunningNormalizer


def test_batched_welford_matches_numpy_over_uneven_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 3.0, size=(1000, 3)) * np.array([1.0, 100.0, 1e-2])
    norm = RunningNormalizer(3)
    start = 0
    for size in (1, 7, 100, 392, 500):
        norm.update(data[start:start + size])
        start += size
    np.testing.assert_allclose(norm.mean, data.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(norm.var, data.var(axis=0), rtol=1e-9)
    z = norm.normalize(data)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)


def test_clip_constant_features_and_freeze():
    norm = RunningNormalizer(2, clip=3.0)
    norm.update(np.array([[0.0, 1.0], [2.0, 1.0]]))
    z = norm.normalize(np.array([100.0, 1.0]))
    assert z[0] == 3.0 and z[1] == 0.0  # clipped outlier; constant feature maps to 0, not NaN
    norm.frozen = True
    norm.update(np.array([50.0, 50.0]))
    assert norm.count == 2


def test_state_dict_round_trip_and_shape_mismatch():
    norm = RunningNormalizer(4)
    norm.update(np.random.default_rng(1).normal(size=(10, 4)))
    other = RunningNormalizer(4)
    other.load_state_dict(norm.state_dict())
    x = np.arange(4.0)
    np.testing.assert_array_equal(other.normalize(x), norm.normalize(x))
    with pytest.raises(InputError, match="shape mismatch"):
        RunningNormalizer(5).load_state_dict(norm.state_dict())


def test_return_scaler_keeps_sign_and_resets_on_done():
    scaler = ReturnScaler(num_envs=2, gamma=0.5)
    scaler.update(np.array([1.0, -2.0]), np.array([False, True]))
    np.testing.assert_allclose(scaler.returns, [1.0, 0.0])
    scaler.update(np.array([1.0, 1.0]), np.array([False, False]))
    np.testing.assert_allclose(scaler.returns, [1.5, 1.0])
    out = scaler.scale(np.array([-4.0, 4.0]))
    assert out[0] < 0 < out[1]
    restored = ReturnScaler(num_envs=2)
    restored.load_state_dict(scaler.state_dict())
    np.testing.assert_array_equal(restored.scale(np.array([3.0])), scaler.scale(np.array([3.0])))
