"""Progress without a terminal: log lines at a bounded rate, so CI logs show where a long run is."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.cli.progress import progress_bar


def _lines(buf: io.StringIO) -> list[str]:
    return [line for line in buf.getvalue().splitlines() if line.strip()]


def test_no_terminal_logs_moving_tasks_at_a_bounded_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLSERVE_PROGRESS_INTERVAL_S", "0.2")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with progress_bar(console) as progress:
        task = progress.add_task("grid search", total=1000)
        for _ in range(1000):  # 1000 advances well inside one interval: not 1000 lines
            progress.advance(task)
        time.sleep(0.5)  # at least one log tick
        idle = progress.add_task("idle", total=5)
        time.sleep(0.5)
        progress.advance(idle, 5)
    lines = _lines(buf)
    grid = [line for line in lines if "grid search" in line]
    assert grid and grid[-1].endswith("grid search: 1000/1000 (100%)")
    assert len(grid) == 1  # logged once: it did not move afterwards
    assert lines[-1].endswith("idle: 5/5 (100%)")  # the final state is written when the bar stops
    assert len(lines) <= 4


def test_terminal_gets_the_bar_not_log_lines() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with progress_bar(console, transient=True) as progress:
        progress.advance(progress.add_task("work", total=3), 3)
    assert "work: 3/3" not in buf.getvalue()


def test_compare_without_terminal_logs_its_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLSERVE_PROGRESS_INTERVAL_S", "0.05")
    res = CliRunner().invoke(app, ["compare", "-s", "homogeneous_light", "--num-requests", "100", "--routers",
                                   "round_robin,least_kv", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    assert "all runs: 4/4 (100%)" in res.output
