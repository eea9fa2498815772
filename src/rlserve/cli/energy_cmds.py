"""``rlserve train energy``, ``rlserve evaluate energy``, ``rlserve energy run`` and ``rlserve energy sweep``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rlserve.cli.app import app, console, evaluate_app, train_app
from rlserve.errors import ConfigError
from rlserve.outputs import check_output_directory, check_output_file, parse_int_list

energy_app = typer.Typer(help="Run or study energy controllers (cap x SM clock).", no_args_is_help=True)
app.add_typer(energy_app, name="energy")

BASELINES = ("static", "clipper", "eais")
#: Evaluation seeds start at 0; the static grid search uses these instead, so it is not tuned on the test set.
GRID_SEED_BASE = 500_000

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Training config: a name in configs/train "
                                        "(energy) or a path to a YAML file.")]
ScenariosOpt = Annotated[list[str] | None, typer.Option("--scenario", "-s", help="Scenario name or YAML path "
                                                        "(repeat for several).")]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


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
    with _progress() as progress:
        task = progress.add_task("training (decisions)", total=cfg.dqn.total_steps)

        def on_episode(i: int, info: Mapping[str, Any]) -> None:
            m = info.get("episode_metrics", {})
            progress.update(task, advance=m.get("decisions", 0), description=(
                f"episode {i + 1}: {m.get('energy_per_output_token_j', float('nan')):.3f} J/out-token, "
                f"miss {m.get('slo_miss_rate', float('nan')):.3f}"))

        result = train_energy(cfg, out, resume=resume, on_episode_end=on_episode,
                              allow_config_change=override_config)
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
    plots: Annotated[Path | None, typer.Option(help="Directory for clock/cap/power plots (seed 0).")] = None,
    grid: Annotated[bool, typer.Option(help="Add the best static pair from a grid search (on other seeds).")]
    = True,
    grid_seeds: Annotated[int, typer.Option(help="Seeds for the grid search.")] = 2,
    config: ConfigOpt = "energy",
    interval_s: Annotated[float | None, typer.Option(help="Control interval in seconds (default: the "
                                                     "checkpoint's training interval, else 1 s).")] = None,
) -> None:
    """DQN vs static max clock, Clipper, EAIS and the best static pair: energy per token, SLO, tail latency."""
    from rlserve.envs.energy_eval import (
        as_json,
        default_grid_caps,
        evaluate_controllers,
        grid_search_static,
        savings_vs,
    )
    from rlserve.report.run_output import write_json

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
            best = grid_search_static(scn, range(GRID_SEED_BASE, GRID_SEED_BASE + grid_seeds),
                                      caps=default_grid_caps(space, scn), clocks_mhz=space.sm_clocks_mhz,
                                      interval_s=interval_s, action_space=space)
            best_static = best.best
            specs.append(best_static)
        if checkpoint is not None:
            specs.append(f"dqn:{checkpoint}")
        with _progress() as progress:
            task = progress.add_task(f"{scn.name}", total=len(specs) * seeds)
            results = evaluate_controllers(specs, scn, range(seeds), action_space=space, interval_s=interval_s,
                                           keep_runs=plots is not None,
                                           on_run=lambda *_, t=task: progress.advance(t))
        savings = savings_vs(results, "static")
        _print_table(scn.name, results, savings)
        report[scn.name] = {"results": as_json(results), "saving_vs_max_clock": savings,
                            "best_static": best_static}
        if plots is not None:
            from rlserve.report.energy_plots import plot_control_traces

            path = plot_control_traces({k: r.runs[0].trace for k, r in results.items()},
                                       plots / f"{scn.name}_seed0.png", title=f"{scn.name}, seed 0")
            console.print(f"plot: {path}")
    if json_out is not None:
        write_json(json_out, report)
        console.print(f"wrote {json_out}")


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
    controller: Annotated[str | None, typer.Option(help="static, clipper, eais, static:CAP@MHZ.")] = None,
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
) -> None:
    """The seed's offline block-size scheme: per workload, one controller per KV block size; the best size."""
    import dataclasses

    from rlserve.envs.energy_env import with_block_size
    from rlserve.envs.energy_eval import best_by, evaluate_controllers
    from rlserve.envs.energy_train import load_train_config, train_energy
    from rlserve.report.run_output import write_json

    sizes = parse_int_list(block_sizes, "--block-sizes", minimum=1)
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if json_out is not None:
        check_output_file(json_out, "--json")
    check_output_directory(out, "--out")
    cfg = load_train_config(config)
    report: dict[str, Any] = {}
    for name in scenario or list(cfg.env.scenarios):
        base = _scenario(name)
        per_size = {}
        for bs in sizes:
            run_dir = out / base.name / f"bs{bs}"
            policy = run_dir / "best.pt" if cfg.validation_seeds > 0 else run_dir / "policy.pt"
            if not policy.is_file():  # a finished run is reused: the sweep can be resumed
                env = dataclasses.replace(cfg.env, scenarios=(name,), block_sizes=(bs,))
                dqn = dataclasses.replace(cfg.dqn, total_steps=total_steps or cfg.dqn.total_steps)
                console.print(f"training {base.name} with block size {bs} -> {run_dir}")
                # a run killed before its policy was chosen continues from its checkpoint
                train_energy(dataclasses.replace(cfg, env=env, dqn=dqn), run_dir,
                             resume=(run_dir / "checkpoint.pt").is_file())
            space = _action_space(policy, config, [name])
            res = evaluate_controllers([f"dqn:{policy}"], with_block_size(base, bs), range(seeds), action_space=space)
            per_size[bs] = next(iter(res.values()))
        best = best_by(per_size)
        report[base.name] = {"best_block_size": best,
                             "per_block_size": {bs: r.aggregate() for bs, r in per_size.items()}}
        console.print(f"{base.name}: best block size {best}; "
                      + ", ".join(f"{bs}: {r.aggregate()['energy_per_token_j']['mean']:.4f} J/tok "
                                  f"({r.aggregate()['slo_attainment']['mean'] * 100:.2f}% SLO)"
                                  for bs, r in per_size.items()))
    if json_out is not None:
        write_json(json_out, report)
