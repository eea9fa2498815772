"""Fan-out of independent cells (scenario x seed x policy runs) over Ray, or in this process when not asked to.

Every evaluation in rlserve is a list of cells that share nothing: a simulation with one router or controller on
one seed's workload. :func:`map_cells` runs them one after another in this process (the default, exactly as before
Ray existed here), or as Ray tasks on a local Ray with ``workers`` CPUs, or on an existing cluster at
``address``. Results come back in the order of the cells, whatever order they finished in, so tables, JSON and
plots are the same numbers the single-process run gives for the same seeds.

Ray is an optional dependency (``pip install 'rlserve[ray]'``); asking for it without it installed raises a
:class:`~rlserve.errors.ConfigError` that says how to install it. A Ray already initialised in this process (a
test fixture, a notebook) is reused as it is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rlserve.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = "Ray is not installed: pip install 'rlserve[ray]' (or pip install ray)"


@dataclass(frozen=True)
class Parallel:
    """Where cells run: ``workers`` CPUs of a local Ray, or the Ray cluster at ``address``; neither = this process."""

    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.workers is not None and self.address is not None:
            raise ConfigError("give --workers (a local Ray) or --ray-address (a cluster), not both")

    @property
    def uses_ray(self) -> bool:
        """Whether cells go to Ray rather than run in this process."""
        return self.workers is not None or self.address is not None


IN_PROCESS = Parallel()


def import_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def ensure_ray(parallel: Parallel) -> Any:
    """Initialise Ray as ``parallel`` says (unless this process already has it) and return the module."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry calls home from a user's machine
    ray = import_ray()
    if not ray.is_initialized():
        if parallel.address is not None:
            ray.init(address=parallel.address, logging_level=logging.WARNING, log_to_driver=True)
        else:
            ray.init(num_cpus=parallel.workers, include_dashboard=False, logging_level=logging.WARNING)
    return ray


def map_cells(fn: Callable[[T], R], cells: Sequence[T], parallel: Parallel = IN_PROCESS,
              on_done: Callable[[int, R], None] | None = None) -> list[R]:
    """``[fn(c) for c in cells]``, in this process or as one Ray task per cell; results in the order of ``cells``.

    ``fn`` must be a module-level function (Ray ships it by reference) and deterministic in its cell, which is what
    makes the parallel results equal to the sequential ones. ``on_done(index, result)`` is called in this process
    as each cell finishes (in completion order under Ray), e.g. to advance a progress bar.
    """
    if not parallel.uses_ray:
        out = []
        for i, cell in enumerate(cells):
            out.append(fn(cell))
            if on_done is not None:
                on_done(i, out[-1])
        return out
    ray = ensure_ray(parallel)
    task = ray.remote(num_cpus=1, max_retries=2)(_apply)  # a cell is pure: a retried cell gives the same result
    fn_ref = ray.put(fn)  # shipped once, not once per cell
    pending = {task.remote(fn_ref, cell): i for i, cell in enumerate(cells)}
    results: dict[int, R] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            results[i] = ray.get(ref)
            if on_done is not None:
                on_done(i, results[i])
    return [results[i] for i in range(len(cells))]


def _apply(fn: Callable[[T], R], cell: T) -> R:
    """The body of every Ray task: ``fn`` may be a partial or a closure, which ``ray.remote`` does not take."""
    return fn(cell)
