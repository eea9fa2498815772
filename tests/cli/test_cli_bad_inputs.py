"""Every verb over the bad-input corpus (rlserve.testing.bad_inputs): exit code 2 with one ``error:`` line, no
traceback, no hang, and nothing partially written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlserve.testing.bad_inputs import (
    CASES,
    GOOD_SCENARIO,
    SECTION_CASES,
    classify,
    damage,
    materialise,
    run_cli,
    snapshot,
)


@pytest.mark.parametrize(("name", "argv", "files"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(tmp_path: Path, name: str, argv: list[str], files: dict) -> None:
    materialise(files, tmp_path)
    before = snapshot(tmp_path)
    outcome = run_cli([a.replace("{d}", str(tmp_path)) for a in argv], timeout_s=60)
    assert classify(outcome) == "clear error", (outcome.code, outcome.exception, outcome.stderr[-2000:])
    assert outcome.wall_s < 30, "a bad input must be refused before the work, not after it"
    assert not damage(before, tmp_path)


def test_the_corpus_scenario_itself_is_good(tmp_path: Path) -> None:
    """The bad scenarios are one edit away from this one, so each case fails for the reason it names."""
    materialise({"x.yaml": GOOD_SCENARIO}, tmp_path)
    outcome = run_cli(["simulate", "-s", str(tmp_path / "x.yaml")])
    assert outcome.code == 0 and outcome.exception is None, outcome.stderr


@pytest.mark.parametrize("name", SECTION_CASES)
def test_a_bad_section_value_names_the_file_and_the_key(tmp_path: Path, name: str) -> None:
    text, expected = SECTION_CASES[name]
    materialise({"x.yaml": text}, tmp_path)
    outcome = run_cli(["simulate", "--num-requests", "20", "-s", str(tmp_path / "x.yaml")])
    assert outcome.code == 2 and outcome.error_lines() == [line for line in outcome.stderr.splitlines() if line]
    (line,) = outcome.error_lines()
    assert line.startswith(f"error: {tmp_path / 'x.yaml'}: {expected}"), line
