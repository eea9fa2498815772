"""Energy controllers: choose a concurrency cap and an SM clock per replica every control interval.

Controllers are registered by name in :data:`ENERGY_CONTROLLERS` and built with :func:`make_controller`.
"""

from rlserve.policies.energy.action_space import SEED_CAPS, ActionSpace
from rlserve.policies.energy.base import (
    ENERGY_CONTROLLERS,
    ControlContext,
    EnergyController,
    EnergyDecision,
    make_controller,
    register_controller,
)

__all__ = [
    "ENERGY_CONTROLLERS",
    "SEED_CAPS",
    "ActionSpace",
    "ControlContext",
    "EnergyController",
    "EnergyDecision",
    "make_controller",
    "register_controller",
]
