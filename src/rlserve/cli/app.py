"""The typer application objects that the command modules attach their verbs to.

Each ``*_cmds`` module owns one group of verbs and registers them here on import; ``main.py`` imports them all.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from rlserve.parallel import Parallel, import_ray

app = typer.Typer(
    name="rlserve",
    help="Learn and deploy control policies (routing, energy) for LLM inference serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a policy in the simulator.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate a trained policy against the baselines.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")

# Tables are wide; when output goes to a file or pipe (no terminal width to respect), do not wrap them at 80.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Run the independent simulations as tasks on a local Ray with this many CPUs "
    "(needs rlserve[ray]); default: one after another in this process.")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="Run the simulations on the existing Ray cluster at this address (e.g. auto, or "
    "HEAD:6379); checkpoints and --out must be on storage every node sees.")]


def parallel_options(workers: int | None, ray_address: str | None) -> Parallel:
    """The :class:`Parallel` that ``--workers`` / ``--ray-address`` ask for (checked before any work starts)."""
    parallel = Parallel(workers=workers, address=ray_address)
    if parallel.uses_ray:
        import_ray()  # without Ray: one line saying how to install it, now rather than after a grid search
    return parallel
