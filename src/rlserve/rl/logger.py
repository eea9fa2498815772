"""A ``record`` / ``dump`` training logger with pluggable writers (stdout, CSV, Parquet, TensorBoard).

Trainers ``record`` scalars under slash-separated keys as they go and ``dump(step)`` once per iteration; every
writer then receives the same values. Keys are grouped by prefix, SB3-style:

- ``train/``   optimisation statistics (losses, entropy, approx-KL, clip fraction, grad norm, learning rate);
- ``rollout/`` what the policy experienced (episode reward, reward components, action distribution);
- ``system/``  what the served cluster did (throughput, latency, queue length, balance, temperature);
- ``time/``    progress and speed (steps, updates, decisions per second, wall time).

The CSV and Parquet writers have a **fixed schema**: the column set is given up front (or taken from the first
dump) and never changes within a file; a key outside the schema is an error rather than a silently shifted
column, and a column missing from one dump is written empty (CSV) or null (Parquet). TensorBoard tags can be
renamed per prefix (the PPO router maps ``train/`` to ``PPO/``, ``rollout/reward`` to ``Reward/``...), so
dashboards keep their conventional names while files keep the logger's.

Kill and resume: a resumed run continues from its last checkpoint, so rows logged after that checkpoint by the
killed run would be logged again. :meth:`Logger.discard_after` (called by the trainers on resume) drops them from
the files first, so every step appears once. The Parquet writer rewrites its file atomically every
``flush_every`` dumps, so a kill loses at most that many rows (the CSV writer flushes every row).
"""

from __future__ import annotations

import csv
import io
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from rlserve.errors import InputError
from rlserve.outputs import write_atomic, write_text_atomic


class Writer(Protocol):
    """Receives one row of scalars (and optional histograms) per ``Logger.dump``."""

    def write(self, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray], step: int) -> None:
        """Write one dump."""
        ...

    def close(self) -> None:
        """Flush and release files."""
        ...


class StdoutWriter:
    """Prints each dump as an aligned two-column block (the CleanRL/SB3 console view)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray], step: int) -> None:
        """Print ``key value`` lines sorted by key, framed by the step."""
        width = max((len(k) for k in scalars), default=4)
        lines = [f"---- step {step} ----"]
        lines += [f"{k:<{width}}  {v:.6g}" for k, v in sorted(scalars.items())]
        print("\n".join(lines), file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to release."""


class CSVWriter:
    """Appends one row per dump with a fixed column set; ``step`` is always the first column.

    Args:
        path: the CSV file. If it exists (a resumed run), rows are appended and its header must match.
        fieldnames: the schema (without ``step``); ``None`` = the keys of the first dump.
    """

    def __init__(self, path: str | Path, fieldnames: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.fieldnames: list[str] | None = ["step", *fieldnames] if fieldnames is not None else None
        self._file: IO[str] | None = None
        self._writer: csv.DictWriter[str] | None = None

    def _open(self, first_keys: Sequence[str]) -> csv.DictWriter[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                existing = next(csv.reader(f), None)
        if self.fieldnames is None:
            self.fieldnames = existing or ["step", *sorted(first_keys)]
        if existing is not None and existing != self.fieldnames:
            raise InputError(f"{self.path} has columns {existing}, this run writes {self.fieldnames}; "
                             "use a fresh output directory")
        self._file = self.path.open("a", newline="")
        writer = csv.DictWriter(self._file, fieldnames=self.fieldnames, restval="")
        if existing is None:
            writer.writeheader()
        return writer

    def write(self, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray], step: int) -> None:
        """Append one row (histograms are not written to CSV)."""
        if self._writer is None:
            self._writer = self._open(list(scalars))
        assert self.fieldnames is not None  # set by _open
        extra = set(scalars) - set(self.fieldnames)
        if extra:
            raise KeyError(f"keys {sorted(extra)} are not in the CSV schema of {self.path}; "
                           "declare them in fieldnames when creating the writer")
        self._writer.writerow({"step": step, **scalars})
        assert self._file is not None
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None

    def discard_after(self, step: int) -> None:
        """Drop the rows of steps after ``step`` from an existing file (a resumed run logs them again)."""
        self.close()
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and _step_of(r[0]) <= step]
        if len(kept) == len(rows):
            return
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        write_text_atomic(self.path, text.getvalue())


def _step_of(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return float("inf")  # an unreadable row (a torn last line of a killed run): dropped


class ParquetWriter:
    """Buffers rows and writes one Parquet file with a fixed float64 schema every ``flush_every`` dumps and on
    ``close``.

    Parquet files cannot be appended to, so the whole table is rewritten (to a temporary file renamed over the
    old one: a kill mid-write leaves the previous table). An existing file (a resumed run) is read back first.
    """

    def __init__(self, path: str | Path, fieldnames: Sequence[str] | None = None, flush_every: int = 10) -> None:
        self.path = Path(path)
        self.fieldnames: list[str] | None = list(fieldnames) if fieldnames is not None else None
        self.flush_every = flush_every
        self.rows: list[dict[str, float]] = []
        if self.path.exists():
            import pyarrow.parquet as pq

            try:
                self.rows = pq.read_table(str(self.path)).to_pylist()
            except Exception as exc:  # pyarrow raises several types for foreign or torn files
                raise InputError(f"{self.path} cannot be read as Parquet ({type(exc).__name__}); use a fresh "
                                 "output directory") from None

    def write(self, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray], step: int) -> None:
        """Buffer one row."""
        if self.fieldnames is None:
            self.fieldnames = sorted(scalars)
        extra = set(scalars) - set(self.fieldnames)
        if extra:
            raise KeyError(f"keys {sorted(extra)} are not in the Parquet schema of {self.path}")
        self.rows.append({"step": float(step), **scalars})
        if len(self.rows) % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        """Write all buffered rows (the file always holds the full table), atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = ["step", *(self.fieldnames or [])]
        cols = {k: pa.array([r.get(k) for r in self.rows], type=pa.float64()) for k in names}
        table = pa.table(cols)
        write_atomic(self.path, lambda f: pq.write_table(table, f))

    def discard_after(self, step: int) -> None:
        """Drop the rows of steps after ``step`` (a resumed run logs them again)."""
        self.rows = [r for r in self.rows if r["step"] <= step]

    def close(self) -> None:
        """Write the table."""
        self.flush()


class TensorBoardWriter:
    """Scalars and histograms into a real TensorBoard event file (``torch.utils.tensorboard.SummaryWriter``).

    Args:
        log_dir: directory for the event files.
        rename: ``{logger prefix: TensorBoard prefix}``, applied to the longest matching prefix of each key.
    """

    def __init__(self, log_dir: str | Path, rename: Mapping[str, str] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = str(log_dir)
        self.writer = SummaryWriter(log_dir=self.log_dir)
        self.rename = sorted((rename or {}).items(), key=lambda kv: -len(kv[0]))

    def tag(self, key: str) -> str:
        """The TensorBoard tag of a logger key."""
        for src, dst in self.rename:
            if key.startswith(src):
                return dst + key[len(src):]
        return key

    def write(self, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray], step: int) -> None:
        """Add every scalar and histogram at ``step``."""
        for k, v in scalars.items():
            self.writer.add_scalar(self.tag(k), v, step)
        for k, h in histograms.items():
            if len(h):
                self.writer.add_histogram(self.tag(k), np.asarray(h), step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()

    def discard_after(self, step: int) -> None:
        """Start a new event file that tells TensorBoard to drop the events after ``step`` (its purge marker)."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer.close()
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=step + 1)


class Logger:
    """Collects values between dumps and hands them to every writer.

    ``record`` keeps the last value of a key; ``record_mean`` averages all values recorded since the last dump
    (per-episode or per-minibatch statistics); ``record_histogram`` collects samples for TensorBoard.
    """

    def __init__(self, writers: Sequence[Writer] = ()) -> None:
        self.writers = list(writers)
        self._values: dict[str, float] = {}
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._hists: dict[str, list[float]] = defaultdict(list)

    def record(self, key: str, value: float) -> None:
        """Set ``key`` to ``value`` for the next dump."""
        self._values[key] = float(value)

    def record_mean(self, key: str, value: float) -> None:
        """Add ``value`` to the mean reported for ``key`` at the next dump."""
        self._sums[key] += float(value)
        self._counts[key] += 1

    def record_histogram(self, key: str, values: Sequence[float] | np.ndarray) -> None:
        """Add samples to the histogram reported for ``key`` at the next dump."""
        self._hists[key].extend(np.asarray(values, np.float64).ravel().tolist())

    def dump(self, step: int) -> dict[str, float]:
        """Send everything recorded since the last dump to the writers, clear it, and return the scalars."""
        scalars = dict(self._values)
        scalars.update({k: self._sums[k] / self._counts[k] for k in self._sums})
        hists = {k: np.asarray(v) for k, v in self._hists.items()}
        for w in self.writers:
            w.write(scalars, hists, step)
        self._values.clear()
        self._sums.clear()
        self._counts.clear()
        self._hists.clear()
        return scalars

    def close(self) -> None:
        """Close every writer."""
        for w in self.writers:
            w.close()

    def discard_after(self, step: int) -> None:
        """Resume at ``step``: writers that keep files drop the rows logged after it by the interrupted run."""
        for w in self.writers:
            discard = getattr(w, "discard_after", None)
            if discard is not None:
                discard(step)
