"""Policies: routers and energy controllers, selected by name through one registry."""

from rlserve.policies import routers as _routers  # noqa: F401  (registers the heuristic routers)
from rlserve.policies.base import ROUTERS, Router, fair_argmin, make_router, register_router

__all__ = ["ROUTERS", "Router", "fair_argmin", "make_router", "register_router"]
