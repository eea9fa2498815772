"""Policies: routers and energy controllers, selected by name through one registry."""

from rlserve.policies import routers as _routers  # noqa: F401  (registers the heuristic routers)
from rlserve.policies.base import ROUTERS, Router, fair_argmin, make_router, register_router


@register_router("ppo")
def _ppo_router(checkpoint: str | None = None, **kwargs: object) -> Router:
    """The trained PPO router (``ppo`` or ``ppo:PATH``); torch is imported only when one is asked for."""
    from rlserve.policies.ppo_router import PPORouter

    return PPORouter(checkpoint, **kwargs)  # type: ignore[arg-type]


__all__ = ["ROUTERS", "Router", "fair_argmin", "make_router", "register_router"]
