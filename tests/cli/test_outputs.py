"""Output files: checked before the work, written whole, readable like any file the user writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rlserve.errors import ConfigError
from rlserve.outputs import check_output_directory, check_output_file, parse_int_list, write_atomic, write_text_atomic


def test_atomic_writes_keep_the_old_file_on_failure_and_use_the_usual_mode(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "r.json", "old")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's owner-only 0600

    def fail(f: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_output_paths_are_refused_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        check_output_file(tmp_path / "d", "--json")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_output_file(tmp_path / "f" / "x.json", "--json")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_output_directory(tmp_path / "f", "--output")
    assert check_output_file(tmp_path / "new" / "x.json", "--json") == tmp_path / "new" / "x.json"
    assert not (tmp_path / "new").exists()  # nothing created by the check


def test_int_lists() -> None:
    assert parse_int_list("16, 32,64", "--block-sizes", minimum=1) == [16, 32, 64]
    for bad in ("16,abc", "", "0", "8,8"):
        with pytest.raises(ConfigError, match="--block-sizes"):
            parse_int_list(bad, "--block-sizes", minimum=1)
