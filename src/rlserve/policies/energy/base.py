"""The energy-controller protocol, its decision type, the context every controller gets, and the registry.

An energy controller is called once per control interval for one replica (one vLLM server) with the same
:class:`~rlserve.snapshot.ClusterSnapshot` type in the simulator and in the real loop, and answers with a
concurrency cap (admission control: how many requests may run at once) and an SM clock. It must not mutate the
snapshot. Controllers may keep per-replica history (rates are differences of consecutive snapshots), which
``reset`` forgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rlserve.errors import ConfigError
from rlserve.metrics import Slo
from rlserve.snapshot import ClusterSnapshot

if TYPE_CHECKING:
    from rlserve.policies.energy.action_space import ActionSpace
    from rlserve.sim.replica import PerfModel


@dataclass(frozen=True, slots=True)
class EnergyDecision:
    """What a controller wants one replica to run at until the next decision."""

    concurrency_cap: int
    sm_clock_mhz: float


@dataclass(frozen=True)
class ControlContext:
    """What every controller may know about the replica it controls (the same in both worlds).

    ``perf`` is the replica's performance model; only model-based controllers (EAIS) need it, and in the real
    loop it is built from the GPU/model names the user gives. ``interval_s`` is the control period.
    """

    action_space: ActionSpace
    slo: Slo
    max_num_seqs: int
    interval_s: float = 1.0
    perf: PerfModel | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if not self.interval_s > 0:
            raise ConfigError(f"control interval_s must be > 0, got {self.interval_s}")

    @property
    def max_clock_mhz(self) -> float:
        """Highest clock the controller may choose (the GPU's default for LLM serving)."""
        return self.action_space.max_clock_mhz


@runtime_checkable
class EnergyController(Protocol):
    """Chooses a concurrency cap and an SM clock for one replica, once per control interval."""

    name: str

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        """Return the cap and clock ``replica`` should use until the next call."""
        ...

    def reset(self, seed: int | None = None) -> None:
        """Forget per-run history (previous snapshots, AIMD state) before a new run."""
        ...


ControllerFactory = Callable[..., EnergyController]
ENERGY_CONTROLLERS: dict[str, ControllerFactory] = {}


def register_controller(name: str) -> Callable[[ControllerFactory], ControllerFactory]:
    """Class decorator adding an energy-controller constructor to :data:`ENERGY_CONTROLLERS`."""

    def deco(factory: ControllerFactory) -> ControllerFactory:
        if name in ENERGY_CONTROLLERS:
            raise ConfigError(f"energy controller {name!r} registered twice")
        ENERGY_CONTROLLERS[name] = factory
        return factory

    return deco


def make_controller(spec: str, context: ControlContext, *, seed: int | None = None,
                    **params: Any) -> EnergyController:
    """Build a controller from ``NAME`` or ``NAME:ARG`` (``static:16@1200``, ``dqn:PATH``), optionally followed by
    ``+dwell=S``, ``+hyst=MHZ``, ``+up=dwell`` (minimum dwell / hysteresis on the clock: :mod:`.dwell`).

    Raises:
        ConfigError: the name is unknown (the message lists the known ones) or its argument is malformed.
    """
    import rlserve.policies.energy  # noqa: F401  (registers the built-in controllers)
    from rlserve.policies.energy.dwell import with_dwell

    spec, *options = spec.split("+")
    if options:
        wrapped = with_dwell(make_controller(spec, context, seed=seed, **params), options)
        wrapped.reset(seed)
        return wrapped
    name, _, arg = spec.partition(":")
    if name not in ENERGY_CONTROLLERS:
        raise ConfigError(f"unknown energy controller {spec!r}; choose one of: {', '.join(sorted(ENERGY_CONTROLLERS))}")
    factory = ENERGY_CONTROLLERS[name]
    controller = factory(context, arg, **params) if arg else factory(context, **params)
    controller.reset(seed)
    return controller
