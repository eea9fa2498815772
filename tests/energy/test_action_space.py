"""ActionSpace: the seed's cap-major layout, clocks on the GPU's grid, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlserve.errors import ConfigError
from rlserve.policies.energy.action_space import SEED_CAPS, ActionSpace
from rlserve.policies.energy.base import EnergyDecision

H100 = dict(clock_min_mhz=345.0, clock_max_mhz=1980.0, clock_step_mhz=15.0)


def test_seed_layout_cap_major() -> None:
    space = ActionSpace(SEED_CAPS, (540.0, 600.0, 660.0))
    assert space.n_actions == 11 * 3
    assert space.decode_action(0) == EnergyDecision(1, 540.0)
    assert space.decode_action(4) == EnergyDecision(2, 600.0)  # 4 // 3 = cap index 1, 4 % 3 = clock index 1
    assert space.encode_action(36, 660.0) == space.n_actions - 1


def test_clocks_adapted_to_the_gpu() -> None:
    space = ActionSpace.for_gpu(**H100)
    assert len(space.sm_clocks_mhz) == 18
    assert space.max_clock_mhz == 1980.0
    assert space.min_clock_mhz >= 0.3 * 1980.0 - 15
    assert all((f - 345.0) % 15.0 == 0 for f in space.sm_clocks_mhz)  # only clocks NVML accepts
    assert space.concurrency_caps == SEED_CAPS


@given(st.integers(0, 11 * 18 - 1))
def test_decode_encode_round_trip(action: int) -> None:
    space = ActionSpace.for_gpu(**H100)
    d = space.decode_action(action)
    assert space.encode_action(d.concurrency_cap, d.sm_clock_mhz) == action
    assert space.nearest_action(d.concurrency_cap, d.sm_clock_mhz + 3.0) == action


def test_errors_say_what_is_allowed() -> None:
    space = ActionSpace.for_gpu(**H100)
    with pytest.raises(ConfigError, match="not in the action space; caps"):
        space.encode_action(3, 1980.0)
    with pytest.raises(ConfigError, match="out of range"):
        space.decode_action(space.n_actions)
    with pytest.raises(ConfigError, match="ascending"):
        ActionSpace((4, 2), (1000.0,))
    with pytest.raises(ConfigError, match="above the GPU's maximum"):
        ActionSpace.for_gpu(**H100, lowest_clock_mhz=2500.0)


def test_dict_round_trip() -> None:
    space = ActionSpace.for_gpu(**H100, num_clocks=5, concurrency_caps=(4, 8, 64))
    assert ActionSpace.from_dict(space.to_dict()) == space
