"""Per-request results in Vidur's ``request_metrics.csv`` layout, both ways, to put rlserve beside Vidur.

Vidur (microsoft/vidur, ``vidur/metrics/metrics_store.py``) writes one row per request keyed by ``Request Id``,
times in seconds. The columns rlserve can fill exactly from its records are written; the ones it does not
model separately (execution vs preemption time inside a request) are left out rather than invented:

==============================================  ======================================================
Vidur column                                    rlserve
==============================================  ======================================================
``request_inter_arrival_delay``                 arrival - previous arrival (0 for the first)
``request_e2e_time``                            finish - arrival
``request_e2e_time_normalized``                 E2E / decode tokens
``request_scheduling_delay``                    first scheduled - arrival
``prefill_e2e_time``                            first token - arrival (TTFT)
``decode_time_execution_plus_preemption_normalized``  (finish - first token) / decode tokens
``request_num_tokens`` / ``_prefill_`` / ``_decode_``  prompt + output / prompt / output
``request_pd_ratio``                            prompt / output
``request_num_restarts``                        preemptions
==============================================  ======================================================

Vidur's *trace* files (``num_prefill_tokens,num_decode_tokens[,arrived_at]``) are read by
:func:`rlserve.workload.loaders.load_splitwise_csv` (workload ``lengths: {kind: trace}``, ``arrival: {kind: trace}``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from rlserve.errors import InputError
from rlserve.metrics import RequestRecords

REQUEST_ID = "Request Id"
COLUMNS = ("request_inter_arrival_delay", "request_e2e_time", "request_e2e_time_normalized",
           "request_scheduling_delay", "prefill_e2e_time", "decode_time_execution_plus_preemption_normalized",
           "request_num_tokens", "request_num_prefill_tokens", "request_num_decode_tokens", "request_pd_ratio",
           "request_num_restarts")
_NEEDED = ("request_e2e_time", "prefill_e2e_time", "request_num_prefill_tokens", "request_num_decode_tokens",
           "request_inter_arrival_delay")


def write_request_metrics(records: RequestRecords, path: str | Path) -> Path:
    """Write ``records`` as a Vidur ``request_metrics.csv`` (finished requests only, as Vidur lists them)."""
    done = np.flatnonzero(records.finished)
    arrival = records.arrival_s
    gaps = np.diff(arrival, prepend=arrival[0] if len(arrival) else 0.0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow((REQUEST_ID, *COLUMNS))
        for i in done:
            p, d = int(records.prompt_tokens[i]), int(records.output_tokens[i])
            e2e = records.finish_s[i] - arrival[i]
            w.writerow((int(i), repr(float(gaps[i])), repr(float(e2e)), repr(float(e2e / d)),
                        repr(float(records.first_scheduled_s[i] - arrival[i])),
                        repr(float(records.first_token_s[i] - arrival[i])),
                        repr(float((records.finish_s[i] - records.first_token_s[i]) / d)), p + d, p, d,
                        repr(p / d), int(records.preemptions[i])))
    return out


def read_request_metrics(path: str | Path) -> RequestRecords:
    """Read a Vidur ``request_metrics.csv`` (Vidur's own or ours) into :class:`RequestRecords`.

    Arrivals are rebuilt from the inter-arrival delays in ``Request Id`` order; Vidur does not record the
    replica (-1) nor per-request energy (NaN).

    Raises:
        InputError: missing file or columns, or a value that is not a number (the message names the row).
    """
    p = Path(path)
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not rows:
        raise InputError(f"{p}: no requests (expected a Vidur request_metrics.csv)")
    missing = [c for c in (REQUEST_ID, *_NEEDED) if c not in rows[0]]
    if missing:
        raise InputError(f"{p}: not a Vidur request_metrics.csv (missing columns {missing})")

    def col(name: str, default: float = np.nan) -> np.ndarray:
        out = np.empty(len(rows))
        for i, r in enumerate(rows):
            v = r.get(name, "")
            try:
                out[i] = float(v) if v not in ("", None) else default
            except ValueError:
                raise InputError(f"{p}: row {i + 2}: {name}={v!r} is not a number") from None
        return out

    order = np.argsort(col(REQUEST_ID), kind="stable")
    rows = [rows[i] for i in order]
    arrival = np.cumsum(col("request_inter_arrival_delay", 0.0))
    arrival -= arrival[0]
    n = len(rows)
    return RequestRecords(
        arrival_s=arrival, prompt_tokens=col("request_num_prefill_tokens").astype(np.int64),
        output_tokens=col("request_num_decode_tokens").astype(np.int64), replica=np.full(n, -1, np.int64),
        first_scheduled_s=arrival + col("request_scheduling_delay"),
        first_token_s=arrival + col("prefill_e2e_time"), finish_s=arrival + col("request_e2e_time"),
        preemptions=col("request_num_restarts", 0.0).astype(np.int64), energy_j=np.full(n, np.nan))
