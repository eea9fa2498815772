import math

import numpy as np
import pytest

from rlserve.errors import ConfigError
from rlserve.telemetry.cpu import CpuSample
from rlserve.telemetry.gpu import GpuSample
from rlserve.telemetry.state import STATE_DIM, StateScales, StateVector, build_energy_state
from rlserve.telemetry.vllm_metrics import VllmSample

GPU = GpuSample(t_s=1.0, power_w=(300.0, 200.0), energy_j=(0.0, 0.0), gpu_util_pct=(80.0, 60.0),
                mem_util_pct=(40.0, 20.0), sm_clock_mhz=(1980.0, 1980.0), temperature_c=(50.0, 50.0),
                power_instant_w=(math.nan, math.nan), mem_used_pct=(90.0, 10.0))
CPU = CpuSample(t_s=1.0, util_pct=25.0, freq_mhz=3000.0, power_w=50.0, energy_j=10.0)
VLLM = VllmSample(kv_cache_usage=0.4, num_requests_running=10.0, num_requests_waiting=60.0, t_s=1.0,
                  request_throughput_per_s=5.0, generation_tokens_per_s=1000.0)


def test_full_state_matches_seed_normalisation():
    state = build_energy_state(GPU, CPU, VLLM)
    x = state.normalized()
    assert x.dtype == np.float32 and x.shape == (STATE_DIM,)
    expected = [0.5, 0.7, 0.5, 0.25, 0.25, 0.2, 1.0, 0.4, 0.25, 0.5]  # waiting 60/50 saturates at 1
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert state.measured.all()
    assert len(StateVector.feature_names()) == STATE_DIM


def test_missing_sources_are_zero_and_flagged():
    state = build_energy_state(None, CpuSample(0.0, 10.0, math.nan, math.nan, math.nan), VLLM)
    x = state.normalized()
    assert x[0] == 0 and x[3] == 0 and x[4] == pytest.approx(0.1)
    assert list(state.measured) == [False, False, False, False, True, True, True, True, True, True]


def test_custom_scales():
    x = build_energy_state(GPU, None, None).normalized(StateScales(gpu_power_w=2000.0))
    assert x[0] == pytest.approx(0.25)
    with pytest.raises(ConfigError):
        StateScales(requests=0)
