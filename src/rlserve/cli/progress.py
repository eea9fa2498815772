"""Progress bars that also leave log lines when stdout is not a terminal (CI logs, batch jobs, ``| tee``).

A rich progress bar draws nothing when its console is not a terminal, so a 40-minute ``rlserve evaluate energy`` in
CI printed nothing until the end. :class:`LoggedProgress` is the same bar; without a terminal it prints one line per
task that moved, at most every ``interval_s`` seconds (``RLSERVE_PROGRESS_INTERVAL_S``, default 10), and the final
state of each task when the bar stops.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

DEFAULT_INTERVAL_S = 10.0


def log_interval_s() -> float:
    """Seconds between log lines without a terminal (``RLSERVE_PROGRESS_INTERVAL_S``, else 10)."""
    return float(os.environ.get("RLSERVE_PROGRESS_INTERVAL_S", DEFAULT_INTERVAL_S))


class LoggedProgress(Progress):
    """A rich :class:`Progress`; without a terminal, a background thread logs the tasks at a bounded rate."""

    def __init__(self, *columns: str | ProgressColumn, console: Console, interval_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*columns, console=console, **kwargs)
        self.interval_s = log_interval_s() if interval_s is None else interval_s
        self._logging = not console.is_terminal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: dict[TaskID, float] = {}  # completed count at the last line per task
        self._t0 = time.monotonic()

    def start(self) -> None:
        """Start the bar, and the log thread when there is no terminal."""
        super().start()
        if self._logging and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rlserve-progress-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the log thread (writing every task's last state), then the bar."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._log()
        super().stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._log()

    def _log(self) -> None:
        """One line per task that moved since its last line (short-lived sub-tasks may never get one)."""
        for task in self.tasks:
            if task.completed != self._logged.get(task.id, -1.0):
                self._logged[task.id] = task.completed
                self._line(task)

    def _line(self, task: Task) -> None:
        total = f"/{task.total:.0f} ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        stats = task.fields.get("stats")
        elapsed = time.monotonic() - self._t0
        self.console.print(f"[{elapsed:6.0f} s] {task.description}: {task.completed:.0f}{total}"
                           + (f"  {stats}" if stats else ""), highlight=False, markup=False, soft_wrap=True)


def progress_bar(console: Console, *extra: str | ProgressColumn, transient: bool = True) -> LoggedProgress:
    """The standard bar (description, bar, done/total, elapsed, then ``extra`` columns)."""
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          *extra, console=console, transient=transient)
