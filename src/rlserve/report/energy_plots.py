"""Plots of energy-controller runs: SM clock, concurrency cap and GPU power over time, one line per controller."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rlserve.envs.energy_sim import ControlTrace


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
