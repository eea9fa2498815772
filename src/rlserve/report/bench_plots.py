"""Plots of a benchmark sweep (``rlserve bench sweep``): latency, goodput and energy per token against load, and
the Pareto plot of tokens/s per user against tokens/s per GPU (as ``vllm bench sweep plot_pareto`` draws it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlserve.bench.sweep import pareto_frontier


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["load"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_sweep(rows: Sequence[dict[str, Any]], x_label: str, path: Path) -> Path:
    """Four panels against load: TTFT and TPOT percentiles (ms), goodput and throughput (req/s), J per token."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, metric in zip(axes[0], ("ttft", "tpot"), strict=True):
        for q in ("median", "p90", "p99"):
            xs, ys = _series(rows, f"{q}_{metric}_ms")
            if xs:
                ax.plot(xs, ys, marker="o", label=q)
        ax.set(title=f"{metric.upper()} (ms)", xlabel=x_label)
        ax.legend()
    ax = axes[1][0]
    for key in ("request_throughput", "request_goodput"):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="o", label=key)
    ax.set(title="throughput and goodput (req/s)", xlabel=x_label)
    ax.legend()
    ax = axes[1][1]
    drawn = False
    for key in ("j_per_output_token", "j_per_total_token"):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="o", label=key)
            drawn = True
    ax.set(title="energy per token (J)", xlabel=x_label)
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "energy not measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Every point in tokens/s per user x tokens/s per GPU, the Pareto frontier joined, points labelled by load."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [r for r in rows if r.get("tokens_per_user") is not None and r.get("tokens_per_gpu") is not None]
    ax.scatter([r["tokens_per_user"] for r in pts], [r["tokens_per_gpu"] for r in pts], label="points")
    for r in pts:
        ax.annotate(f"{r['load']:g}", (r["tokens_per_user"], r["tokens_per_gpu"]), fontsize=8)
    front = pareto_frontier(pts)
    ax.plot([r["tokens_per_user"] for r in front], [r["tokens_per_gpu"] for r in front], color="C1",
            label="Pareto frontier")
    ax.set(xlabel="tokens/s per user", ylabel="tokens/s per GPU", title="throughput vs interactivity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
