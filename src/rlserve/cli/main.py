"""``rlserve`` entry point: registers every verb group and turns rlserve errors into one-line messages."""

from __future__ import annotations

import sys

from rich.markup import escape

from rlserve.cli import (
    bench_cmds,  # noqa: F401  (registers bench, bench sweep, bench validate)
    calibrate_cmds,  # noqa: F401  (registers calibrate)
    energy_cmds,  # noqa: F401  (registers train/evaluate energy, energy run/sweep)
    router_cmds,  # noqa: F401  (registers train/evaluate router)
    serve_cmds,  # noqa: F401  (registers serve)
    sim_cmds,  # noqa: F401  (registers simulate, compare)
    telemetry_cmds,  # noqa: F401  (registers monitor, state)
)
from rlserve.cli.app import app, err_console
from rlserve.errors import RlserveError


def main() -> None:
    """Run the CLI; an :class:`RlserveError` prints ``error: ...`` and exits with status 2, no traceback."""
    try:
        app()
    except RlserveError as exc:
        # soft_wrap: one line however long (a log or a pipe gets it unbroken); "[ray]" is no markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
