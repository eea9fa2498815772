"""``rlserve bench sweep``: one benchmark point per load value, summarised into one table.

A row per point: the load value, throughput, goodput, latency percentiles, energy per token, and the two axes of
``vllm bench sweep plot_pareto``: tokens/s per user (output throughput / users, users = the point's
``max_concurrency`` when set, else the peak number of requests in flight the client measured) and tokens/s per
GPU (output throughput / ``--num-gpus``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LATENCY_COLUMNS = tuple(f"{q}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for q in ("median", "p90", "p99"))


@dataclass(frozen=True)
class SweepPoint:
    """One load value, where its result was written, and the result."""

    value: float
    path: Path
    result: dict[str, Any]


def summarize_points(points: Sequence[SweepPoint], num_gpus: int = 1) -> list[dict[str, Any]]:
    """One flat row per point (``None`` where a point did not measure something)."""
    rows = []
    for p in points:
        r = p.result
        energy = r.get("energy") or {}
        users = r.get("max_concurrency") or r.get("max_concurrent_requests") or None
        out_tps = r.get("output_throughput")
        rows.append({
            "load": p.value, "result": p.path.name, "completed": r.get("completed"), "failed": r.get("failed"),
            "request_throughput": r.get("request_throughput"), "output_throughput": out_tps,
            "request_goodput": r.get("request_goodput"), "slo_attainment": r.get("slo_attainment"),
            **{c: r.get(c) for c in LATENCY_COLUMNS},
            "j_per_output_token": energy.get("j_per_output_token"),
            "j_per_total_token": energy.get("j_per_total_token"),
            "goodput_per_joule": energy.get("goodput_per_joule"),
            "tokens_per_user": out_tps / users if out_tps is not None and users else None,
            "tokens_per_gpu": out_tps / num_gpus if out_tps is not None else None,
        })
    return rows


def pareto_frontier(rows: Sequence[dict[str, Any]], x: str = "tokens_per_user",
                    y: str = "tokens_per_gpu") -> list[dict[str, Any]]:
    """Rows no other row beats on both ``x`` and ``y`` (larger is better), sorted by ``x``."""
    pts = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    return sorted((r for r in pts if not any(o[x] >= r[x] and o[y] >= r[y] and (o[x] > r[x] or o[y] > r[y])
                                             for o in pts)), key=lambda r: r[x])


def write_summary(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The rows as CSV (empty cells where not measured), written through a temp file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["load"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path
