"""``rlserve train energy``, ``rlserve evaluate energy``, ``rlserve energy run`` and ``rlserve energy sweep``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rlserve.cli.app import RayAddressOpt, WorkersOpt, app, console, evaluate_app, parallel_options, train_app
from rlserve.cli.progress import progress_bar
from rlserve.errors import ConfigError
from rlserve.outputs import check_output_directory, check_output_file, parse_int_list

energy_app = typer.Typer(help="Run or study energy controllers (cap x SM clock).", no_args_is_help=True)
app.add_typer(energy_app, name="energy")

BASELINES = ("static", "clipper", "eais", "slack")
#: Evaluation seeds start at 0; the static grid search uses these instead, so it is not tuned on the test set.
GRID_SEED_BASE = 500_000

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Training config: a name in configs/train "
                                        "(energy) or a path to a YAML file.")]
ScenariosOpt = Annotated[list[str] | None, typer.Option("--scenario", "-s", help="Scenario name or YAML path "
                                                        "(repeat for several).")]


# ---------------------------------------------------------------------------------------------------- train
@train_app.command("energy")
def train_energy_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for checkpoints, logs, TensorBoard.")],
    config: Annotated[str | None, typer.Option(
        "--config", "-c", help="Training config: a name in configs/train (energy) or a path to a YAML file "
        "(default: energy; with --resume, the config stored in the checkpoint).")] = None,
    scenario: ScenariosOpt = None,
    total_steps: Annotated[int | None, typer.Option(help="Override dqn.total_steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override dqn.seed.")] = None,
    block_size: Annotated[int | None, typer.Option(help="Train for one KV block size (the sweep scheme).")] = None,
    reward: Annotated[str | None, typer.Option(help="Override env.reward (energy_per_token, greendls).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Play episodes on this many Ray actors (a local Ray; needs rlserve[ray]); the learner "
        "learns from them in order.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Run the episode actors on this Ray cluster (--workers N of them, default 2).")] = None,
    override_config: Annotated[bool, typer.Option(help="With --resume: train on with values that differ from the "
                                                  "checkpoint's config (else an error).")] = False,
) -> None:
    """Train the dueling double-DQN energy controller in the simulator."""
    import dataclasses

    from rlserve.envs.energy_train import (
        RUN_FILES,
        EnergyTrainConfig,
        load_train_config,
        stored_train_config,
        train_energy,
    )
    from rlserve.outputs import check_output_dir

    check_output_dir(out, resume=resume, run_files=RUN_FILES)
    cfg = stored_train_config(out) if resume and config is None else load_train_config(config or "energy")
    env_changes: dict[str, Any] = {}
    if scenario:
        env_changes["scenarios"] = tuple(scenario)
    if block_size is not None:
        env_changes["block_sizes"] = (block_size,)
    if reward is not None:
        env_changes["reward"], env_changes["reward_params"] = reward, {}
    cfg.env = dataclasses.replace(cfg.env, **env_changes)
    if total_steps is not None:
        cfg.dqn.total_steps = total_steps
    if seed is not None:
        cfg.dqn.seed = seed
    cfg = EnergyTrainConfig.from_dict(cfg.to_dict(), "the config with the command line's values")  # re-validated
    with progress_bar(console) as progress:
        task = progress.add_task("training (decisions)", total=cfg.dqn.total_steps)

        def on_episode(i: int, info: Mapping[str, Any]) -> None:
            m = info.get("episode_metrics", {})
            progress.update(task, advance=m.get("decisions", 0), description=(
                f"episode {i + 1}: {m.get('energy_per_output_token_j', float('nan')):.3f} J/out-token, "
                f"miss {m.get('slo_miss_rate', float('nan')):.3f}"))

        parallel = parallel_options(None if ray_address else workers, ray_address)
        n_workers = (workers or 2) if parallel.uses_ray else None
        result = train_energy(cfg, out, resume=resume, on_episode_end=on_episode, workers=n_workers,
                              parallel=parallel, allow_config_change=override_config)
    console.print(f"trained {result.steps} steps in {result.episodes} episodes ({result.wall_s:.0f} s); "
                  f"policy: {Path(out) / 'policy.pt'}")


# ---------------------------------------------------------------------------------------------------- evaluate
@evaluate_app.command("energy")
def evaluate_energy_cmd(
    checkpoint: Annotated[Path | None, typer.Option(help="policy.pt of a trained DQN (omit: baselines only).")]
    = None,
    scenario: ScenariosOpt = None,
    seeds: Annotated[int, typer.Option(help="Held-out workload seeds 0..N-1 per scenario.")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number here.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Directory for clock/cap/power plots (seed 0) and the "
                                               "Pareto view (energy vs P99 TTFT/TPOT/SLO, static frontier).")]
    = None,
    grid: Annotated[bool, typer.Option(help="Add the best static pair from a grid search (on other seeds).")]
    = True,
    grid_seeds: Annotated[int, typer.Option(help="Seeds for the grid search.")] = 2,
    config: ConfigOpt = "energy",
    interval_s: Annotated[float | None, typer.Option(help="Control interval in seconds (default: the "
                                                     "checkpoint's training interval, else 1 s).")] = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """DQN vs static max clock, Clipper, EAIS, the SLO-slack controller and the best static pair: energy per token,
    SLO, tail latency, clock changes (switching cost charged as the scenario says)."""
    from rlserve.envs.energy_eval import (
        as_json,
        default_grid_caps,
        evaluate_controllers,
        grid_search_static,
        savings_vs,
    )
    from rlserve.report.run_output import write_json

    parallel = parallel_options(workers, ray_address)
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1 (statistics over no runs are nan ± nan)")
    if grid and grid_seeds < 1:
        raise ConfigError("--grid-seeds must be >= 1 (or pass --no-grid)")
    if json_out is not None:
        check_output_file(json_out, "--json")
    if plots is not None:
        check_output_directory(plots, "--plots")
    space = _action_space(checkpoint, config, scenario)
    interval_s = _interval_s(interval_s, checkpoint)
    names = scenario or ["energy_steady", "energy_diurnal", "energy_bursty"]
    report: dict[str, Any] = {}
    for name in names:
        scn = _scenario(name)
        specs = list(BASELINES)
        best_static = None
        if grid:
            caps = default_grid_caps(space, scn)
            with progress_bar(console) as progress:
                task = progress.add_task(f"{scn.name}: static grid search",
                                         total=len(caps) * len(space.sm_clocks_mhz) * grid_seeds)
                best = grid_search_static(scn, range(GRID_SEED_BASE, GRID_SEED_BASE + grid_seeds), caps=caps,
                                          clocks_mhz=space.sm_clocks_mhz, interval_s=interval_s, action_space=space,
                                          on_run=lambda *_, t=task: progress.advance(t), parallel=parallel)
            best_static = best.best
            specs.append(best_static)
        if checkpoint is not None:
            specs.append(f"dqn:{checkpoint}")
        with progress_bar(console) as progress:
            task = progress.add_task(f"{scn.name}: evaluation", total=len(specs) * seeds)
            results = evaluate_controllers(specs, scn, range(seeds), action_space=space, interval_s=interval_s,
                                           keep_runs=plots is not None,
                                           on_run=lambda *_, t=task: progress.advance(t), parallel=parallel)
        savings = savings_vs(results, "static")
        _print_table(scn.name, results, savings)
        report[scn.name] = {"results": as_json(results), "saving_vs_max_clock": savings,
                            "best_static": best_static}
        if plots is not None:
            from rlserve.report.energy_plots import plot_control_traces

            path = plot_control_traces({k: r.runs[0].trace for k, r in results.items()},
                                       plots / f"{scn.name}_seed0.png", title=f"{scn.name}, seed 0")
            console.print(f"plot: {path}")
            console.print(f"plot: {_pareto(scn, space, interval_s, seeds, results, plots)}")
    if json_out is not None:
        write_json(json_out, report)
        console.print(f"wrote {json_out}")


def _pareto(scn: Any, space: Any, interval_s: float, seeds: int, results: dict[str, Any], plots: Path) -> Path:
    """Every static clock (uncapped) on the evaluation seeds, then the Pareto plot against the controllers."""
    from rlserve.envs.energy_eval import evaluate_controllers
    from rlserve.report.energy_plots import plot_pareto

    cap = scn.cluster.replicas[0].max_num_seqs
    specs = [f"static:{cap}@{f:g}" for f in space.sm_clocks_mhz]
    with progress_bar(console) as progress:
        task = progress.add_task(f"{scn.name} static frontier", total=len(specs) * seeds)
        grid = evaluate_controllers(specs, scn, range(seeds), action_space=space, interval_s=interval_s,
                                    on_run=lambda *_: progress.advance(task))

    def means(res: Any) -> dict[str, float]:
        return {k: v["mean"] for k, v in res.aggregate().items()}

    return plot_pareto({("dqn" if k.startswith("dqn:") else k): means(r) for k, r in results.items()},
                       {k: means(r) for k, r in grid.items()}, plots / f"{scn.name}_pareto.png",
                       title=f"{scn.name}: energy per token vs latency ({seeds} seeds)")


def _scenario(name: str) -> Any:
    from rlserve.scenario import load_scenario

    return load_scenario(name)


def _action_space(checkpoint: Path | None, config: str, scenarios: list[str] | None) -> Any:
    """The DQN's action space (from its checkpoint), else the training config's for the scenario's GPU."""
    from rlserve.envs.energy_env import build_action_space
    from rlserve.envs.energy_train import load_train_config
    from rlserve.policies.energy.action_space import ActionSpace

    if checkpoint is not None:
        from rlserve.policies.energy.dqn_controller import CHECKPOINT_KIND
        from rlserve.rl.checkpoints import load_checkpoint

        return ActionSpace.from_dict(load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)["metadata"]["action_space"])
    cfg = load_train_config(config)
    return build_action_space(_scenario((scenarios or list(cfg.env.scenarios))[0]), cfg.env)


def _interval_s(given: float | None, checkpoint: Path | None) -> float:
    """The control interval: the one given, else the DQN checkpoint's training interval, else 1 s."""
    if given is not None:
        return given
    if checkpoint is not None:
        from rlserve.policies.energy.dqn_controller import checkpoint_interval_s

        return checkpoint_interval_s(checkpoint) or 1.0
    return 1.0


def _print_table(title: str, results: dict[str, Any], savings: dict[str, Any]) -> None:
    table = Table(title=title)
    for col in ("controller", "J/token", "saving vs max clock", "SLO %", "TTFT p99 ms", "TPOT p99 ms", "E2E p99 s",
                "clock MHz", "cap"):
        table.add_column(col, justify="left" if col == "controller" else "right")
    for name, res in results.items():
        a = res.aggregate()

        def cell(metric: str, scale: float = 1.0, fmt: str = ".3f", agg: dict[str, Any] = a) -> str:
            return f"{agg[metric]['mean'] * scale:{fmt}} ± {agg[metric]['ci95'] * scale:{fmt}}"

        s = savings[name]
        table.add_row(name if len(name) < 40 else "dqn", cell("energy_per_token_j", fmt=".4f"),
                      f"{s['mean'] * 100:.1f}% ± {s['ci95'] * 100:.1f}", cell("slo_attainment", 100, ".2f"),
                      cell("ttft_p99_s", 1e3, ".0f"), cell("tpot_p99_s", 1e3, ".1f"), cell("e2e_p99_s", 1, ".1f"),
                      cell("mean_sm_clock_mhz", 1, ".0f"), cell("mean_concurrency_cap", 1, ".0f"))
    console.print(table)


# ---------------------------------------------------------------------------------------------------- run
@energy_app.command("run")
def run_cmd(
    url: Annotated[str, typer.Option(help="Base URL of the rlserve proxy in front of the vLLM server.")],
    gpu_ids: Annotated[str, typer.Option(help="NVML indices of the replica's GPUs, e.g. 0 or 0,1.")],
    controller: Annotated[str | None, typer.Option(help="static, clipper, eais, slack, static:CAP@MHZ; any with "
                                                 "+dwell=S+hyst=MHZ.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="policy.pt of a trained DQN.")] = None,
    scenario: Annotated[str, typer.Option(help="Scenario giving the SLO, GPU and model of the server.")]
    = "energy_steady",
    replica: Annotated[int, typer.Option(help="Index of the controlled replica in the proxy.")] = 0,
    interval_s: Annotated[float | None, typer.Option(help="Seconds between decisions (default: the DQN "
                                                     "checkpoint's training interval, else 1 s).")] = None,
    duration_s: Annotated[float | None, typer.Option(help="Stop after this long (default: until Ctrl-C).")]
    = None,
    apply_clocks: Annotated[bool, typer.Option("--apply-clocks", help="Really lock SM clocks through NVML "
                                               "(needs privileges); without it clock changes are only logged.")]
    = False,
    api_key: Annotated[str | None, typer.Option(envvar="RLSERVE_API_KEY", help="The proxy's API key.")] = None,
    config: ConfigOpt = "energy",
) -> None:
    """Control a live replica: cap through the proxy's admission control, SM clock through NVML."""
    from rlserve.envs.energy_eval import control_context
    from rlserve.policies.energy import make_controller
    from rlserve.serve.clock_actuator import ClockActuator
    from rlserve.serve.energy_loop import EnergyLoop, LoopDecision, ProxyAdmin
    from rlserve.telemetry.gpu import make_gpu_monitor

    if (controller is None) == (checkpoint is None):
        raise ConfigError("give exactly one of --controller NAME or --checkpoint policy.pt")
    ids = parse_int_list(gpu_ids, "--gpu-ids")
    scn = _scenario(scenario)
    space = _action_space(checkpoint, config, [scenario])
    if checkpoint is None and str(controller).split(":")[0] == "dqn":  # dqn (the shipped one) or dqn:PATH
        from rlserve.policies.energy.dqn_controller import SHIPPED_CHECKPOINT

        dqn_path: Path | None = Path(str(controller)[4:]) if ":" in str(controller) else SHIPPED_CHECKPOINT
    else:
        dqn_path = checkpoint
    interval_s = _interval_s(interval_s, dqn_path)
    ctx = control_context(scn, space, interval_s)
    ctl = make_controller(f"dqn:{checkpoint}" if checkpoint is not None else str(controller), ctx)
    gpu = make_gpu_monitor(ids, interval_s=min(0.1, interval_s))
    if not hasattr(gpu, "device_names"):
        console.print(f"[yellow]{getattr(gpu, 'reason', 'no GPU data')}[/]: observations lack power and energy")
    mode = "APPLIED" if apply_clocks else "dry run"

    def show(d: LoopDecision) -> None:
        power = f"{d.power_w:.0f} W" if d.power_w is not None else "n/a"
        console.print(f"t={d.time_s:7.1f}s cap={d.concurrency_cap:4d} clock={d.sm_clock_mhz:6.0f} MHz "
                      f"({mode}) running={d.num_running} waiting={d.num_waiting} power={power}", highlight=False)

    admin = ProxyAdmin(url, api_key=api_key)
    loop = EnergyLoop(ctl, admin, ClockActuator(ids, apply=apply_clocks), gpu, replica=replica,
                      interval_s=interval_s, on_decision=show)
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if in_main else None  # Ctrl-C: stop cleanly
    try:
        decisions = loop.run(duration_s=duration_s, stop=stop)
    finally:
        admin.close()
        if in_main:
            signal.signal(signal.SIGINT, previous)
    console.print(f"{len(decisions)} decisions; clocks restored" + ("" if apply_clocks else " (none were changed)"))


# ---------------------------------------------------------------------------------------------------- sweep
@energy_app.command("sweep")
def sweep_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="One training run per scenario and block size.")],
    block_sizes: Annotated[str, typer.Option(help="Comma-separated KV block sizes.")] = "16,32,64,128",
    config: ConfigOpt = "energy",
    scenario: ScenariosOpt = None,
    seeds: Annotated[int, typer.Option(help="Held-out evaluation seeds per scenario.")] = 3,
    total_steps: Annotated[int | None, typer.Option(help="Override dqn.total_steps per run.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the sweep's numbers here.")] = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """The seed's offline block-size scheme: per workload, one controller per KV block size; the best size.

    With --workers/--ray-address the missing trainings run as parallel Ray tasks, then every (block size x seed)
    evaluation does.
    """
    import dataclasses
    import functools

    from rlserve.envs.energy_env import with_block_size
    from rlserve.envs.energy_eval import ControllerCell, ControllerResult, best_by, run_controller_cell
    from rlserve.envs.energy_train import load_train_config, train_energy_cell
    from rlserve.parallel import map_cells
    from rlserve.report.run_output import write_json

    parallel = parallel_options(workers, ray_address)
    sizes = parse_int_list(block_sizes, "--block-sizes", minimum=1)
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if json_out is not None:
        check_output_file(json_out, "--json")
    check_output_directory(out, "--out")
    cfg = load_train_config(config)
    names = scenario or list(cfg.env.scenarios)
    bases = {name: _scenario(name) for name in names}
    runs = {(name, bs): out / bases[name].name / f"bs{bs}" for name in names for bs in sizes}
    policies = {k: d / "best.pt" if cfg.validation_seeds > 0 else d / "policy.pt" for k, d in runs.items()}
    jobs = []
    for (name, bs), run_dir in runs.items():
        if not policies[name, bs].is_file():  # a finished run is reused: the sweep can be resumed
            env = dataclasses.replace(cfg.env, scenarios=(name,), block_sizes=(bs,))
            dqn = dataclasses.replace(cfg.dqn, total_steps=total_steps or cfg.dqn.total_steps)
            jobs.append((dataclasses.replace(cfg, env=env, dqn=dqn), run_dir))
    with progress_bar(console) as progress:
        task = progress.add_task("training (one DQN per scenario x block size)", total=len(jobs))
        train = train_energy_cell
        if not parallel.uses_ray:  # in this process the running training also shows its episodes
            episodes = progress.add_task("episodes of the current training", total=None)
            train = functools.partial(train_energy_cell, on_episode_end=lambda *_: progress.advance(episodes))
        map_cells(train, jobs, parallel, lambda i, _: progress.update(
            task, advance=1, description=f"trained {jobs[i][1]}"))
    cells = [ControllerCell(f"dqn:{policies[k]}", with_block_size(bases[k[0]], k[1]), seed,
                            _action_space(policies[k], config, [k[0]]), 1.0, False)
             for k in runs for seed in range(seeds)]
    with progress_bar(console) as progress:
        task = progress.add_task("evaluation (block size x seed)", total=len(cells))
        outs = map_cells(run_controller_cell, cells, parallel, lambda *_: progress.advance(task))
    results = {k: ControllerResult(f"dqn:{policies[k]}") for k in runs}
    for i, k in enumerate(k for k in runs for _ in range(seeds)):
        results[k].per_seed.append(outs[i][0])
    report: dict[str, Any] = {}
    for name, base in bases.items():
        per_size = {bs: results[name, bs] for bs in sizes}
        best = best_by(per_size)
        report[base.name] = {"best_block_size": best,
                             "per_block_size": {bs: r.aggregate() for bs, r in per_size.items()}}
        console.print(f"{base.name}: best block size {best}; "
                      + ", ".join(f"{bs}: {r.aggregate()['energy_per_token_j']['mean']:.4f} J/tok "
                                  f"({r.aggregate()['slo_attainment']['mean'] * 100:.2f}% SLO)"
                                  for bs, r in per_size.items()))
    if json_out is not None:
        write_json(json_out, report)
