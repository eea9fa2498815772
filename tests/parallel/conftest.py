"""One real local Ray (2 CPUs, as in CI) for the whole test session: starting Ray costs seconds, so tests share it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A local Ray with ``num_cpus=2``; ``rlserve.parallel`` reuses a Ray this process already initialised."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'rlserve[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
