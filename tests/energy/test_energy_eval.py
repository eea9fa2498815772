"""Evaluation helpers, training entry point and CLI on short real-simulator runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.envs.energy_env import with_block_size
from rlserve.envs.energy_eval import (
    best_by,
    best_static_global,
    check_eval_seeds,
    control_context,
    default_grid_caps,
    evaluate_controllers,
    grid_search_static,
    lowest_feasible_clock,
    pick_best,
    savings_vs,
)
from rlserve.envs.energy_sim import run_controller
from rlserve.envs.energy_train import EnergyTrainConfig, load_train_config
from rlserve.errors import ConfigError, InputError
from rlserve.policies.energy import ActionSpace, make_controller
from rlserve.scenario import load_scenario

SPACE = ActionSpace.for_gpu(345.0, 1980.0, 15.0, num_clocks=4, concurrency_caps=(8, 64, 256))


def test_grid_search_picks_the_cheapest_pair_meeting_the_target(small_scenario: Path) -> None:
    scn = load_scenario(small_scenario)
    res = grid_search_static(scn, [500_000], caps=[256], clocks_mhz=SPACE.sm_clocks_mhz, action_space=SPACE)
    rows = {r["controller"]: r for r in res.table}
    feasible = [r for r in rows.values() if r["slo_attainment_min"] >= 0.99]
    assert feasible and res.best == min(feasible, key=lambda r: r["energy_per_token_j"])["controller"]
    assert rows[res.best]["energy_per_token_j"] < rows["static:256@1980"]["energy_per_token_j"]


def test_evaluation_same_workloads_and_savings(small_scenario: Path) -> None:
    scn = load_scenario(small_scenario)
    results = evaluate_controllers(["static", "static:256@1200", "clipper"], scn, [0, 1], action_space=SPACE,
                                   keep_runs=True)
    s = savings_vs(results, "static")
    assert s["static"]["mean"] == 0.0 and s["static:256@1200"]["mean"] > 0.1
    run = results["static:256@1200"].runs[0]
    assert set(run.trace.sm_clock_mhz) == {1200.0} and run.summary.num_finished == 300
    assert best_by(results) in results
    again = run_controller(make_controller("static:256@1200", control_context(scn, SPACE)), scn.cluster,
                           scn.build_workload(0), scn.slo, transition=scn.clock_transition)
    assert again.summary.energy_j == run.summary.energy_j  # deterministic for a seed


def test_training_seeds_are_not_evaluation_seeds() -> None:
    with pytest.raises(ConfigError, match="training range"):
        check_eval_seeds([0, 2**20])


def test_block_size_and_grid_caps() -> None:
    scn = load_scenario("energy_steady")
    assert with_block_size(scn, 64).cluster.replicas[0].block_size == 64
    import dataclasses

    fixed = dataclasses.replace(scn, cluster=scn.cluster.with_replicas(num_gpu_blocks=4000))
    assert with_block_size(fixed, 64).cluster.replicas[0].num_gpu_blocks == 1000  # same KV tokens, bigger blocks
    assert default_grid_caps(SPACE, scn) == [8, 64, 256]


def test_shipped_training_config_loads() -> None:
    cfg = load_train_config("energy")
    assert cfg.env.scenarios == ("energy_steady", "energy_diurnal", "energy_bursty")
    assert cfg.dqn.double and cfg.dqn.gamma > 0
    with pytest.raises(ConfigError, match="energy training config: unknown key .envs.; allowed: dqn, env"):
        EnergyTrainConfig.from_dict({"envs": {}})
    with pytest.raises(ConfigError, match="not found"):
        load_train_config("nope")


def test_dqn_controller_rejects_other_checkpoints(tmp_path: Path) -> None:
    from rlserve.rl.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "ppo.pt", {"x": 1}, kind="ppo_router")
    scn = load_scenario("energy_steady")
    with pytest.raises(InputError, match="expected 'dqn_energy'"):
        make_controller(f"dqn:{tmp_path / 'ppo.pt'}", control_context(scn, SPACE))
    save_checkpoint(tmp_path / "bare.pt", {"metadata": {}}, kind="dqn_energy")
    with pytest.raises(InputError, match="lacks the energy metadata"):
        make_controller(f"dqn:{tmp_path / 'bare.pt'}", control_context(scn, SPACE))


def test_cli_train_then_evaluate(small_scenario: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "env": {"scenarios": [str(small_scenario)], "caps": [8, 64, 256], "num_clocks": 4},
        "dqn": {"total_steps": 60, "learning_starts": 30, "batch_size": 8, "hidden_sizes": [16]}}))
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "energy", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "policy.pt").is_file() and (out / "config.yaml").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    header = (out / "progress.csv").read_text().splitlines()[0]
    assert "system/energy_per_output_token_j" in header and "rollout/distinct_actions" in header
    r = runner.invoke(app, ["evaluate", "energy", "--checkpoint", str(out / "policy.pt"), "-s", str(small_scenario),
                            "--seeds", "1", "--no-grid", "--json", str(tmp_path / "ev.json"),
                            "--plots", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "ev.json").read_text())["energy_small"]
    assert set(data["results"]) == {"static", "clipper", "eais", "slack", f"dqn:{out / 'policy.pt'}"}
    assert (tmp_path / "plots" / "energy_small_seed0.png").stat().st_size > 10_000
    assert (tmp_path / "plots" / "energy_small_pareto.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ["energy_steady", "energy_diurnal", "energy_bursty", "energy_kv_pressure"])
def test_energy_scenarios_are_one_server_with_ttft_and_tpot_slos(name: str) -> None:
    scn = load_scenario(name)
    assert len(scn.cluster.replicas) == 1 and scn.slo.ttft_s and scn.slo.tpot_s
    assert len(scn.build_workload(0)) == scn.workload.num_requests


def test_shipped_checkpoint_is_the_default_dqn_and_decides(small_scenario: Path) -> None:
    from rlserve.envs.energy_env import build_action_space
    from rlserve.envs.energy_sim import run_controller
    from rlserve.policies.energy.dqn_controller import SHIPPED_CHECKPOINT, checkpoint_interval_s

    assert SHIPPED_CHECKPOINT.is_file()
    scn = load_scenario(small_scenario)
    config = load_train_config("energy").env
    space = build_action_space(scn, config)
    assert checkpoint_interval_s() == config.interval_s  # the shipped policy is the shipped config's
    ctl = make_controller("dqn", control_context(scn, space, config.interval_s))
    run = run_controller(ctl, scn.cluster, scn.build_workload(0), scn.slo, interval_s=config.interval_s)
    assert run.summary.num_finished == 300
    assert set(run.trace.sm_clock_mhz) <= set(space.sm_clocks_mhz) and len(set(run.trace.sm_clock_mhz)) > 1


def test_a_checkpoint_run_at_another_interval_warns(small_scenario: Path) -> None:
    from rlserve.envs.energy_env import build_action_space

    scn = load_scenario(small_scenario)
    config = load_train_config("energy").env
    other = 2 * config.interval_s  # its rates and discount horizon would mean something else
    with pytest.warns(UserWarning, match=f"--interval-s {config.interval_s:g}"):
        make_controller("dqn", control_context(scn, build_action_space(scn, config), other))


def test_pruned_grid_stops_below_the_first_infeasible_clock_and_global_pair(small_scenario: Path) -> None:
    scn = load_scenario(small_scenario)
    space = ActionSpace.for_gpu(345.0, 1980.0, 15.0, num_clocks=8, concurrency_caps=(256,))
    full = grid_search_static(scn, [500_000], caps=[256], clocks_mhz=space.sm_clocks_mhz, action_space=space,
                              slo_target=0.999, prune=False)
    pruned = grid_search_static(scn, [500_000], caps=[256], clocks_mhz=space.sm_clocks_mhz, action_space=space,
                                slo_target=0.999)
    assert pruned.best == full.best and len(pruned.table) < len(full.table)  # same answer, fewer runs
    row = {"energy_per_token_j": 1.0, "slo_attainment_min": 1.0}
    tables = {"a": [{**row, "controller": "static:256@1980"}, {**row, "controller": "static:256@900",
                                                                "energy_per_token_j": 0.5}],
              "b": [{**row, "controller": "static:256@1980"}, {**row, "controller": "static:256@900",
                                                                "slo_attainment_min": 0.9}]}
    assert best_static_global(tables) == "static:256@1980"  # 900 MHz misses the SLO in scenario b
    assert pick_best(tables["a"]) == "static:256@900"
    assert pick_best(tables["b"], slo_target=0.95) == "static:256@1980"
    assert lowest_feasible_clock(tables["a"], 256) == 900.0 and lowest_feasible_clock(tables["b"], 256) == 1980.0
    assert lowest_feasible_clock(tables["a"], 64) is None
