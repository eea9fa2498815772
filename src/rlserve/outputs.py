"""Output files that are checked before the work and written whole: no finished run's numbers are ever lost.

Two habits every verb that writes results follows:

- :func:`check_output_file` runs *before* the work starts, so a path that can never be written (it is a directory,
  its parent is a file, the directory is not writable) is an error in the first second, not after an hour of
  simulation or training;
- :func:`write_text_atomic` writes to a temporary file beside the target and renames it over the target, so a
  reader (or a crash) never sees half a file, and an existing result is replaced only by a complete new one.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from rlserve.errors import ConfigError


def check_output_file(path: str | Path, flag: str) -> Path:
    """Check that ``path`` can be written as a file once the work is done (nothing is created now); returns it.

    Raises:
        ConfigError: ``path`` is a directory, a parent is a file, or the nearest existing directory is not
            writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file path")
    check_output_directory(path.parent, flag)
    return path


def check_output_directory(path: str | Path, flag: str) -> Path:
    """Check that ``path`` is, or can be made, a writable directory for results; returns it (not created).

    Raises:
        ConfigError: ``path`` or a parent is a file, or the nearest existing directory is not writable.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{flag} {path}: {p} is a file, not a directory")
            if not os.access(p, os.W_OK):
                raise ConfigError(f"{flag} {path}: {p} is not writable")
            break
    return path


def parse_int_list(text: str, flag: str, *, minimum: int = 0) -> list[int]:
    """``"16,32,64"`` -> ``[16, 32, 64]``; anything else is a one-line error naming the flag.

    Raises:
        ConfigError: an item is not an integer >= ``minimum``, the list is empty, or it repeats a value.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise ConfigError(f"{flag} needs integers >= {minimum}, got {text!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag} lists a value twice: {text!r}")
    return values


def check_output_dir(out: Path, *, resume: bool, run_files: tuple[str, ...]) -> None:
    """Refuse to start a new training run where one exists (or where a file stands), before any work is done.

    Raises:
        ConfigError: a clear one-line reason and what to do.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if resume:
        if not (out / run_files[0]).is_file():
            raise ConfigError(f"cannot resume: no checkpoint at {out / run_files[0]}; train without --resume first")
        return
    existing = [name for name in run_files if (out / name).exists()]
    if existing:
        raise ConfigError(f"{out} already holds a training run ({', '.join(existing)}); pass --resume to continue "
                          "it or choose another --out")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import (os.umask can only be read by setting it)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, fsync it, and rename it over ``path``; returns ``path``.

    A temporary file of an earlier writer of ``path`` that was killed mid-write is removed first (one writer per
    path is assumed, as everywhere here); a failed write leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # the mode a plain open() gives (mkstemp's is owner-only)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(text.encode()))
