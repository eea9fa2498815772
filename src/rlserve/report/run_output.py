"""Writing one simulated or benchmarked run to a directory: per-request Parquet, summary JSON, latency CDF."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlserve.metrics import RequestRecords, Summary
from rlserve.outputs import write_atomic, write_text_atomic


def _json_safe(x: Any) -> Any:
    """NaN/inf become null: strict JSON readers (jq, JavaScript) reject them."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (NaN -> null), atomically (a reader never sees half a file)."""
    write_text_atomic(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def latency_cdf_plot(records_by_label: dict[str, RequestRecords], path: str | Path) -> None:
    """One figure, three panels (TTFT, TPOT, E2E): empirical CDFs, one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (metric, title) in zip(axes, (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E latency")),
                                   strict=True):
        for label, rec in records_by_label.items():
            v = getattr(rec, metric)
            v = np.sort(v[np.isfinite(v)])
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=label)
        ax.set_xscale("log")
        ax.set_xlabel(f"{title} (s)")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def save_run(out_dir: str | Path, records: RequestRecords, summary: Summary, meta: dict[str, Any],
             label: str = "run") -> dict[str, Path]:
    """Write ``requests.parquet``, ``summary.json`` (summary + run metadata) and ``latency_cdf.png``, each
    atomically (temporary file + rename: an interrupted write never leaves half a result)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"requests": out / "requests.parquet", "summary": out / "summary.json", "plot": out / "latency_cdf.png"}
    records.to_parquet(paths["requests"])
    write_json(paths["summary"], {"meta": meta, "summary": summary.to_dict()})
    latency_cdf_plot({label: records}, paths["plot"])
    return paths
