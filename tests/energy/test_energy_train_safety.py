"""``train energy`` never overwrites a run, and ``--resume`` trains on the checkpoint's own config."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.errors import ConfigError


def _config(tmp_path: Path, scenario: Path, **dqn: object) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "validation_seeds": 0,
        "env": {"scenarios": [str(scenario)], "caps": [4, 8, 256], "num_clocks": 4},
        "dqn": {"total_steps": 30, "learning_starts": 10, "batch_size": 8, "hidden_sizes": [8], **dqn}}))
    return path


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, ["train", "energy", *args])
    return result.exit_code, result.output, result.exception


def test_an_existing_run_is_never_overwritten(tmp_path: Path, small_scenario: Path) -> None:
    cfg = _config(tmp_path, small_scenario)
    out = tmp_path / "run"
    code, _, exc = _invoke("--out", str(out), "--config", str(cfg))
    assert code == 0, exc
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, exc = _invoke("--out", str(out), "--config", str(cfg))
    assert isinstance(exc, ConfigError) and "already holds a training run" in str(exc)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched


def test_resume_uses_the_stored_config_and_refuses_a_different_one(tmp_path: Path, small_scenario: Path) -> None:
    out = tmp_path / "run"
    assert _invoke("--out", str(out), "--config", str(_config(tmp_path, small_scenario)))[0] == 0
    # without --config: the stored one (a 8-wide net); only the total grows
    code, _, exc = _invoke("--out", str(out), "--resume", "--total-steps", "60")
    assert code == 0, exc
    other = _config(tmp_path, small_scenario, learning_rate=0.01)
    code, _, exc = _invoke("--out", str(out), "--resume", "--total-steps", "90", "--config", str(other))
    assert isinstance(exc, ConfigError) and "dqn.learning_rate: 0.0005 -> 0.01" in str(exc)
    code, _, exc = _invoke("--out", str(out), "--resume", "--total-steps", "90", "--config", str(other),
                           "--override-config")
    assert code == 0, exc
