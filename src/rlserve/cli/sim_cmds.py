"""``rlserve simulate`` (one router, one seed) and ``rlserve compare`` (many routers x seeds, with CIs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rlserve.cli.app import RayAddressOpt, WorkersOpt, app, console, parallel_options
from rlserve.cli.progress import LoggedProgress, progress_bar
from rlserve.errors import ConfigError, RlserveError
from rlserve.experiments import (
    COLUMNS,
    HEURISTICS,
    aggregate,
    best_per_metric,
    compare_routers,
    prepare_scenario,
    run_router,
    runnable_routers,
)
from rlserve.metrics import Summary
from rlserve.outputs import check_output_directory, check_output_file
from rlserve.scenario import list_scenarios
from rlserve.sim import BATCHING_MODES

ScenarioOpt = Annotated[str, typer.Option("--scenario", "-s", help=f"Built-in name ({', '.join(list_scenarios())}) "
                                          "or path to a scenario YAML.")]
NumRequestsOpt = Annotated[int | None, typer.Option(help="Override the scenario's number of requests.")]
QpsOpt = Annotated[float | None, typer.Option(help="Override the scenario's mean request rate (req/s).")]
BatchingOpt = Annotated[str | None, typer.Option(help=f"Override every replica's batching mode {BATCHING_MODES}.")]


def _progress() -> LoggedProgress:
    """The standard bar; without a terminal it logs lines at a bounded rate."""
    return progress_bar(console)


def _fmt(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def summary_table(title: str, rows: dict[str, Summary]) -> Table:
    """One row per label with the standard columns."""
    table = Table(title=title)
    table.add_column("router")
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    for label, s in rows.items():
        table.add_row(label, *(_fmt(get(s)) for _, get in COLUMNS))
    return table


@app.command()
def simulate(
    scenario: ScenarioOpt = "homogeneous_light",
    router: Annotated[str, typer.Option("--router", "-r", help="Router name, or ppo:CHECKPOINT.")] = "round_robin",
    seed: Annotated[int, typer.Option(help="Workload and router seed.")] = 0,
    num_requests: NumRequestsOpt = None,
    qps: QpsOpt = None,
    batching: BatchingOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write requests.parquet, summary.json, "
                                                "timeline.parquet and latency_cdf.png here.")] = None,
    chrome_trace: Annotated[bool, typer.Option(help="With --output: also trace.json, the per-iteration "
                                               "timeline for chrome://tracing or Perfetto.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="With --output: 'rlserve' (default) or 'vidur' (also "
                                     "request_metrics.csv in Vidur's column names).")] = "rlserve",
) -> None:
    """Simulate one scenario with one router and print its summary."""
    if output is not None:
        check_output_directory(output, "--output")
    if fmt not in ("rlserve", "vidur"):
        raise ConfigError(f"--format must be 'rlserve' or 'vidur', got {fmt!r}")
    scn = prepare_scenario(scenario, num_requests, qps, batching)
    t0 = time.perf_counter()
    with _progress() as progress:
        result = run_router(scn, router, seed, progress, timeline=output is not None)
    wall_s = time.perf_counter() - t0
    summary = result.summary(scn.slo)
    console.print(summary_table(f"{scn.name} (seed {seed}, {summary.num_requests} requests, "
                                f"{result.duration_s:.0f} s simulated in {wall_s:.2f} s, "
                                f"max_tokens {scn.workload.max_tokens.source()})", {router: summary}))
    if result.rejected:
        console.print(f"[yellow]{result.rejected} requests were rejected (too long for the replica).[/]")
    if output is not None:
        from rlserve.report.run_output import save_run

        meta = {"scenario": scn.name, "router": router, "seed": seed, "wall_s": wall_s,
                "max_tokens": scn.workload.max_tokens.source()}
        paths = save_run(output, result.records, summary, meta, label=router)
        from rlserve.report.timeline import write_chrome_trace, write_timeline_parquet

        rows = result.timeline or ()
        paths["timeline"] = write_timeline_parquet(rows, Path(output) / "timeline.parquet")
        if chrome_trace:
            paths["trace"] = write_chrome_trace(rows, Path(output) / "trace.json")
        if fmt == "vidur":
            from rlserve.report.vidur import write_request_metrics

            paths["vidur"] = write_request_metrics(result.records, Path(output) / "request_metrics.csv")
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def parse_router_list(routers: str) -> list[str]:
    """``all`` = every heuristic (+ the shipped PPO router if available); else a comma-separated list."""
    if routers == "all":
        from rlserve.policies import ROUTERS, make_router

        names = list(HEURISTICS)
        if "ppo" in ROUTERS:
            try:
                make_router("ppo")
                names.append("ppo")
            except RlserveError as exc:  # no usable shipped checkpoint: heuristics only, and say so
                console.print(f"[yellow]ppo router left out: {exc}[/]")
        return names
    names = [r.strip() for r in routers.split(",") if r.strip()]
    if not names:
        raise ConfigError("--routers needs at least one router name (or 'all')")
    repeated = sorted({r for r in names if names.count(r) > 1})
    if repeated:  # a router listed twice would count its runs twice and shrink its confidence interval
        raise ConfigError(f"--routers lists {', '.join(repeated)} more than once")
    return names


@app.command()
def compare(
    scenario: ScenarioOpt = "heterogeneous",
    routers: Annotated[str, typer.Option(help="Comma-separated routers, or 'all'.")] = "all",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1); every router sees the same workloads.")] = 3,
    num_requests: NumRequestsOpt = None,
    qps: QpsOpt = None,
    batching: BatchingOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the comparison as JSON.")] = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Compare routers on one scenario over several seeds: mean and 95% CI per metric.

    A router that cannot route this cluster (a checkpoint made for another replica count) is reported and skipped;
    the others still run, print and are written.
    """
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    parallel = parallel_options(workers, ray_address)
    if json_out is not None:
        check_output_file(json_out, "--json")
    scn = prepare_scenario(scenario, num_requests, qps, batching)
    names, skipped = runnable_routers(scn, parse_router_list(routers))
    for name, why in skipped.items():
        console.print(f"[yellow]skipped {name}: {why}[/]")
    if not names:
        raise ConfigError("none of the routers can route this scenario's cluster")
    with _progress() as progress:
        results = compare_routers(scn, names, list(range(seeds)), progress, parallel)
    table = Table(title=f"{scn.name}: mean ± 95% CI over {seeds} seeds, max_tokens "
                        f"{scn.workload.max_tokens.source()}")
    table.add_column("router")
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    aggregated = {r: aggregate(s) for r, s in results.items()}
    for r, agg in aggregated.items():
        table.add_row(r, *(f"{_fmt(agg[c]['mean'])} ± {_fmt(agg[c]['ci95'])}" for c, _ in COLUMNS))
    console.print(table)
    heuristics = [r for r in names if r in HEURISTICS]
    best = best_per_metric(aggregated, heuristics) if heuristics else {}
    if best:
        console.print("best heuristic per metric: " + ", ".join(
            f"{col} {r} ({_fmt(aggregated[r][col]['mean'])})" for col, r in best.items()), highlight=False)
    if json_out is not None:
        from rlserve.report.run_output import write_json

        write_json(json_out, {"scenario": scn.name, "seeds": seeds, "max_tokens": scn.workload.max_tokens.source(),
                              "skipped": skipped, "best_heuristic_per_metric": best, "routers": aggregated,
                              "runs": {r: [s.to_dict() for s in ss] for r, ss in results.items()}})
        console.print(f"wrote {json_out}")
