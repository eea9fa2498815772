"""The simulator's per-iteration timeline as Parquet, and optionally as a Chrome trace (chrome://tracing, Perfetto).

Rows come from ``SimResult.timeline`` (``ClusterSimulator(..., timeline=True)``); columns are
:data:`rlserve.sim.cluster.TIMELINE_COLUMNS`. A decode run of ``steps`` iterations with the same batch is one row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlserve.sim.cluster import TIMELINE_COLUMNS


def write_timeline_parquet(rows: Sequence[tuple], path: str | Path) -> Path:
    """One row per iteration (or decode run), fixed schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: list[Sequence[float]] = list(zip(*rows, strict=True)) if rows else [() for _ in TIMELINE_COLUMNS]
    types = {"start_s": np.float64, "duration_s": np.float64}
    table = pa.table({name: np.asarray(col, dtype=types.get(name, np.int64))
                      for name, col in zip(TIMELINE_COLUMNS, cols, strict=True)})
    pq.write_table(table, str(path))
    return Path(path)


def write_chrome_trace(rows: Sequence[tuple], path: str | Path) -> Path:
    """Complete events ("ph": "X") in microseconds, one track per replica; args carry the row's counts."""
    events = []
    for row in rows:
        r = dict(zip(TIMELINE_COLUMNS, row, strict=True))
        kind = "prefill" if not r["decode_tokens"] else ("mixed" if r["prefill_tokens"] else "decode")
        name = f"{kind} x{r['steps']}" if r["steps"] > 1 else kind
        events.append({"name": name, "ph": "X", "pid": 0, "tid": int(r["replica"]), "ts": r["start_s"] * 1e6,
                       "dur": r["duration_s"] * 1e6,
                       "args": {k: int(r[k]) for k in TIMELINE_COLUMNS[3:]}})
    Path(path).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return Path(path)
