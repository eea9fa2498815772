"""Energy controllers: choose a concurrency cap and an SM clock per replica every control interval.

Registered names (build with :func:`make_controller`): ``static`` (no cap, max clock; ``static:CAP@MHZ`` pins a
pair), ``clipper`` (AIMD on the cap), ``eais`` (model-predicted cheapest pair meeting the SLO), ``slack``
(SLO-slack feedback on the clock), ``dqn:PATH``; any of them ``+dwell=S+hyst=MHZ`` (minimum dwell and
hysteresis on the clock).
"""

from rlserve.policies.energy import clipper, dqn_controller, eais, slack, static  # noqa: F401  (register controllers)
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
