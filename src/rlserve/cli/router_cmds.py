"""``rlserve train router`` and ``rlserve evaluate router``: the PPO router's training and its judgement.

Evaluation runs the checkpoint and every heuristic router on the same workloads (same seeds) and reports mean
and 95% confidence interval over seeds of each metric, the same columns ``rlserve compare`` shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TextColumn, TimeRemainingColumn
from rich.table import Table

from rlserve.cli.app import RayAddressOpt, WorkersOpt, console, evaluate_app, parallel_options, train_app
from rlserve.cli.progress import progress_bar
from rlserve.cli.sim_cmds import _fmt, _progress
from rlserve.errors import ConfigError
from rlserve.experiments import (
    COLUMNS,
    HEURISTICS,
    aggregate,
    best_per_metric,
    gains_vs_best,
    prepare_scenario,
    run_grid,
    runnable_routers,
)
from rlserve.outputs import check_output_directory, check_output_file

EVAL_FIRST_SEED = 1000  # training draws its workloads from the episode RNG; these seeds are evaluation-only


@train_app.command("router")
def train_router_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (checkpoint.pt, metrics, tb/).")],
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", "-s", help="Scenario(s) sampled per episode: built-in names, YAML paths, or 'randomized' "
        "(default: the config's env.scenarios).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training config YAML.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the checkpoint in --out bit-for-bit (with the config stored "
                                         "in it unless --config is given).")] = False,
    override_config: Annotated[bool, typer.Option(help="With --resume: train on with values that differ from the "
                                                  "checkpoint's config (else an error).")] = False,
    updates: Annotated[int | None, typer.Option(help="Override total_updates.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    export: Annotated[Path | None, typer.Option(help="Also write the best (validated) policy here as a small "
                                                "inference-only checkpoint, e.g. for shipping.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Collect PPO rollouts with this many Ray actors on a local Ray (needs rlserve[ray]); "
        "each owns ppo.num_envs / N environments.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Run the rollout actors on this Ray cluster (with --workers N actors, default 2).")]
    = None,
) -> None:
    """Train the PPO router: statistics stabilisation, behaviour cloning from heuristics, then PPO."""
    from rlserve.envs.router_training import train_router
    from rlserve.outputs import check_output_dir
    from rlserve.rl.config import load_config
    from rlserve.rl.ppo import CHECKPOINT_KIND, export_for_inference
    from rlserve.rl.rollout_workers import RolloutWorkers

    check_output_dir(out, resume=resume, run_files=("checkpoint.pt",))
    if export is not None:
        check_output_file(export, "--export")

    overrides: dict[str, object] = {}
    if scenario:
        overrides["env"] = {"scenarios": list(scenario)}
    if updates is not None:
        overrides["total_updates"] = updates
    if seed is not None:
        overrides["seed"] = seed
    if resume and config is None:  # the checkpoint's config is the source of truth
        from rlserve.rl.checkpoints import load_checkpoint

        stored = load_checkpoint(out / "checkpoint.pt", kind=CHECKPOINT_KIND)["config"]
        for key, value in overrides.items():
            stored[key] = {**stored[key], **value} if isinstance(value, dict) else value
        cfg = load_config(overrides=stored)
    else:
        cfg = load_config(config, overrides)
    rollout = None
    if workers is not None or ray_address is not None:
        # a local Ray gets one CPU per worker; on a cluster the learner stays here and N actors go there
        parallel = parallel_options(None if ray_address else workers, ray_address)
        rollout = RolloutWorkers(workers or 2, parallel)
    with progress_bar(console, TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), transient=False) as progress:
        task = progress.add_task("PPO updates", total=cfg.total_updates, stats="stabilising + cloning...")

        def report(update: int, total: int, s: dict[str, float]) -> None:
            stats = (f"return {s.get('rollout/ep_return_mean', float('nan')):.3g}  "
                     f"entropy {s['train/entropy']:.2f}  kl {s['train/kl']:.3f}  "
                     f"{s['time/decisions_per_s']:.0f} decisions/s")
            progress.update(task, completed=update, stats=stats)

        result = train_router(cfg, out, resume=resume, progress=report, rollout_workers=rollout,
                              allow_config_change=override_config)
    if result.bc_stats:
        console.print(f"behaviour cloning: accuracy {result.bc_stats['bc/accuracy']:.3f}")
    console.print(f"{result.updates} updates, {result.env_steps:,} decisions, {result.wall_s:.0f} s wall, "
                  f"{result.decisions_per_s:.0f} decisions/s during PPO; checkpoint: {result.checkpoint_path}")
    if result.worker_replacements:
        console.print(f"[yellow]{result.worker_replacements} rollout worker(s) died and were replaced[/]")
    if result.best_path is not None:
        console.print(f"best validated policy: {result.best_path} (score {result.best_score:+.3f} = mean gain over "
                      "the best heuristic per validation scenario)")
    if export is not None:
        source = result.best_path or result.checkpoint_path
        if source is None:
            raise ConfigError("nothing to export: checkpoints are disabled in the config")
        console.print(f"exported {export_for_inference(source, export)}")


@evaluate_app.command("router")
def evaluate_router_cmd(
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint.pt (default: the shipped one).")] = None,
    scenario: Annotated[str, typer.Option("--scenario", "-s", help="Built-in name or YAML path.")] = "heterogeneous",
    seeds: Annotated[int, typer.Option(help="Workload seeds (every router sees the same ones).")] = 5,
    first_seed: Annotated[int, typer.Option(help="First seed (held-out range).")] = EVAL_FIRST_SEED,
    num_requests: Annotated[int | None, typer.Option(help="Override the scenario's number of requests.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the comparison as JSON.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Directory for plots (metric bars with CIs, CDFs).")] = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """PPO router vs every heuristic on the same seeds: mean ± 95% CI of latency, throughput, SLO attainment."""
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    parallel = parallel_options(workers, ray_address)
    if json_out is not None:
        check_output_file(json_out, "--json")
    if plots is not None:
        check_output_directory(plots, "--plots")
    ppo = f"ppo:{checkpoint}" if checkpoint is not None else "ppo"
    scn = prepare_scenario(scenario, num_requests)
    _, unfit = runnable_routers(scn, [ppo])
    if unfit:
        raise ConfigError(unfit[ppo])
    routers = [ppo, *HEURISTICS]
    with _progress() as progress:
        grid = run_grid(scn, routers, list(range(first_seed, first_seed + seeds)), progress, parallel,
                        records_of_first_seed=plots is not None)
    summaries = {r: [run.summary for run in runs] for r, runs in grid.items()}
    wall = {r: sum(run.wall_s for run in runs) for r, runs in grid.items()}
    aggregated = {r: aggregate(s) for r, s in summaries.items()}
    table = Table(title=f"{scn.name}: mean ± 95% CI over seeds {first_seed}..{first_seed + seeds - 1}, "
                        f"max_tokens {scn.workload.max_tokens.source()}")
    table.add_column("router")
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    for r, agg in aggregated.items():
        table.add_row(r, *(f"{_fmt(agg[c]['mean'])} ± {_fmt(agg[c]['ci95'])}" for c, _ in COLUMNS))
    console.print(table)
    best = best_per_metric(aggregated, HEURISTICS)  # the best of every heuristic we ship, per metric
    gains = gains_vs_best(aggregated[ppo], aggregated, best)
    console.print("PPO vs the best heuristic of each metric (positive = PPO better): " + ", ".join(
        f"{col} {gains[col]:+.1%} vs {best[col]}" for col in ("E2E mean s", "TTFT p99 ms", "SLO %", "finished")),
        highlight=False)
    if json_out is not None:
        from rlserve.report.run_output import write_json

        write_json(json_out, {"scenario": scn.name, "seeds": list(range(first_seed, first_seed + seeds)),
                              "max_tokens": scn.workload.max_tokens.source(),
                              "checkpoint": str(checkpoint) if checkpoint else "shipped", "routers": aggregated,
                              "best_heuristic_per_metric": best, "gain_vs_best": gains, "wall_s": wall,
                              "runs": {r: [s.to_dict() for s in ss] for r, ss in summaries.items()}})
        console.print(f"wrote {json_out}")
    if plots is not None:
        from rlserve.report.run_output import latency_cdf_plot

        plots.mkdir(parents=True, exist_ok=True)
        metric_bars(aggregated, plots / "router_metrics.png", title=scn.name)
        latency_cdf_plot({r: runs[0].records for r, runs in grid.items() if runs[0].records is not None},
                         plots / "latency_cdf.png")
        console.print(f"wrote {plots / 'router_metrics.png'}, {plots / 'latency_cdf.png'}")


def metric_bars(aggregated: dict[str, dict[str, dict[str, float]]], path: Path, title: str) -> None:
    """One panel per metric: a bar per router with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("TTFT p50 ms", "TTFT p99 ms", "TPOT p99 ms", "E2E mean s", "E2E p99 s", "tok/s", "SLO %")
    routers = list(aggregated)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 4))
    for ax, m in zip(axes, metrics, strict=True):
        means = [aggregated[r][m]["mean"] for r in routers]
        errs = [aggregated[r][m]["ci95"] for r in routers]
        ax.bar(range(len(routers)), means, yerr=errs, capsize=3, color=["C3"] + ["C0"] * (len(routers) - 1))
        ax.set_xticks(range(len(routers)), routers, rotation=70, fontsize=7)
        ax.set_title(m, fontsize=9)
    fig.suptitle(f"{title}: mean ± 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
