"""Plots of energy-controller runs: SM clock, concurrency cap and GPU power over time, one line per controller."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlserve.envs.energy_sim import ControlTrace


def _save(fig: Any, path: str | Path, title: str) -> Path:
    """Title, tight layout, PNG at ``path`` (parents created); closes the figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_control_traces(traces: Mapping[str, ControlTrace], path: str | Path, *, title: str = "") -> Path:
    """Three stacked panels (clock, cap, power) sharing the time axis; writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    panels = (("sm_clock_mhz", "SM clock (MHz)"), ("concurrency_cap", "concurrency cap"), ("power_w", "GPU power (W)"))
    for name, trace in traces.items():
        for ax, (column, _) in zip(axes, panels, strict=True):
            ax.step(trace.time_s, getattr(trace, column), where="post", label=name, linewidth=1.0)
    for ax, (column, label) in zip(axes, panels, strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if column == "concurrency_cap":
            ax.set_yscale("log", base=2)
    axes[-1].set_xlabel("time (s)")
    axes[0].legend(loc="upper right", fontsize="small", ncol=2)
    return _save(fig, path, title)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (lower is better in both), sorted by the first."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def plot_pareto(controllers: Mapping[str, Mapping[str, float]], static_grid: Mapping[str, Mapping[str, float]],
                path: str | Path, *, title: str = "", slo_target: float = 0.99) -> Path:
    """Energy per token against P99 TTFT, P99 TPOT and SLO attainment: every static clock (grey, with the
    frontier they span) and every controller (labelled markers), so a user sees the trade-off, not one point.

    Each mapping value holds mean ``energy_per_token_j``, ``ttft_p99_s``, ``tpot_p99_s``, ``slo_attainment``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    panels = (("ttft_p99_s", "P99 TTFT (ms)", 1e3), ("tpot_p99_s", "P99 TPOT (ms)", 1e3),
              ("slo_attainment", "SLO attainment (%, higher is better)", 100.0))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        xs = [m[key] * scale for m in static_grid.values()]
        ys = [m["energy_per_token_j"] for m in static_grid.values()]
        ax.scatter(xs, ys, color="0.6", s=18, label="static clocks")
        sign = -1.0 if key == "slo_attainment" else 1.0  # attainment: higher is better
        front = pareto_front([(sign * x, y) for x, y in zip(xs, ys, strict=True)])
        ax.plot([sign * x for x, _ in front], [y for _, y in front], color="0.4", linewidth=1.0,
                label="static frontier")
        for name, m in controllers.items():
            ax.scatter([m[key] * scale], [m["energy_per_token_j"]], s=46, marker="D", label=name)
        if key == "slo_attainment":
            ax.axvline(slo_target * 100, color="red", linewidth=0.8, linestyle="--")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("energy per token (J)")
    axes[-1].legend(loc="best", fontsize="x-small")
    return _save(fig, path, title)
