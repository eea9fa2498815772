"""The two policy protocols and the registry that maps names (configs, CLI) to constructors.

A router is called once per arriving request, in the simulator and in the proxy alike, with the same
:class:`~rlserve.snapshot.ClusterSnapshot` type. It must not mutate the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlserve.errors import ConfigError
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request


@runtime_checkable
class Router(Protocol):
    """Chooses the replica that serves a request."""

    name: str

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """Return the index of the replica that should serve ``request``."""
        ...

    def reset(self, seed: int | None = None) -> None:
        """Forget per-run state (round-robin position, RNG) before a new run."""
        ...


def check_fits(router: Router, num_replicas: int) -> None:
    """Raise :class:`ConfigError` (one line) if ``router`` cannot route ``num_replicas`` replicas.

    A router bound to one cluster size (a learned policy with one output per replica) says so with an integer
    ``num_replicas`` attribute; every other router routes any number of replicas. Checked before a run or a proxy
    starts, so a mismatch is refused up front instead of failing on the first request.
    """
    fixed = getattr(router, "num_replicas", None)
    if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed != num_replicas:
        raise ConfigError(f"router {getattr(router, 'name', router)!r} routes over {fixed} replicas only; this "
                          f"cluster has {num_replicas} (use a router or checkpoint made for {num_replicas})")


RouterFactory = Callable[..., Router]
ROUTERS: dict[str, RouterFactory] = {}


def register_router(name: str) -> Callable[[RouterFactory], RouterFactory]:
    """Class decorator adding a router constructor to :data:`ROUTERS` under ``name``."""

    def deco(factory: RouterFactory) -> RouterFactory:
        if name in ROUTERS:
            raise ConfigError(f"router {name!r} registered twice")
        ROUTERS[name] = factory
        return factory

    return deco


def make_router(spec: str, *, seed: int | None = None, **kwargs: Any) -> Router:
    """Build a router from a registry name, or ``ppo:PATH`` for a trained checkpoint.

    Raises:
        ConfigError: the name is unknown (the message lists the known ones).
    """
    import rlserve.policies  # noqa: F401  (registers the built-in routers)

    name, _, arg = spec.partition(":")
    if name not in ROUTERS:
        raise ConfigError(f"unknown router {spec!r}; choose one of: {', '.join(sorted(ROUTERS))}")
    router = ROUTERS[name](arg, **kwargs) if arg else ROUTERS[name](**kwargs)
    router.reset(seed)
    return router


def fair_argmax(values: np.ndarray | Sequence[float], rng: np.random.Generator) -> int:
    """Index of the largest value; exact ties (identical replicas in identical states) broken at random with
    ``rng``, as :func:`fair_argmin` does: taking the first would make a router depend on replica order."""
    arr = np.asarray(values)
    best = np.flatnonzero(arr == arr.max())
    return int(best[0]) if len(best) == 1 else int(best[rng.integers(len(best))])


def fair_argmin(values: np.ndarray | Sequence[float], rng: np.random.Generator) -> int:
    """Index of the smallest value, ties broken uniformly at random (never always the lowest id)."""
    arr = np.asarray(values, dtype=np.float64)
    best = np.flatnonzero(arr == arr.min())
    return int(best[0]) if len(best) == 1 else int(best[rng.integers(len(best))])
