"""Evaluation fan-out over a real local Ray gives the numbers the single-process run gives for the same seeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.envs.energy_eval import evaluate_controllers, grid_search_static
from rlserve.errors import ConfigError
from rlserve.experiments import compare_routers, prepare_scenario, run_grid
from rlserve.parallel import INSTALL_HINT, Parallel, map_cells
from rlserve.policies.energy import ActionSpace
from rlserve.scenario import load_scenario

SPACE = ActionSpace.for_gpu(345.0, 1980.0, 15.0, num_clocks=3, concurrency_caps=(64, 256))
RAY2 = Parallel(workers=2)


def test_map_cells_keeps_the_order_of_the_cells(ray_local: Any) -> None:
    seen: list[int] = []
    cells = [3, -1, 4, -1, -5, 9, -2]  # a builtin: Ray workers cannot import functions defined in test modules
    assert map_cells(abs, cells, RAY2, lambda i, r: seen.append(i)) == [abs(x) for x in cells]
    assert sorted(seen) == list(range(7))  # every cell reported once, in whatever order it finished


def test_compare_routers_on_ray_equals_in_process(ray_local: Any) -> None:
    scn = prepare_scenario("heterogeneous", num_requests=300)
    routers, seeds = ["round_robin", "least_outstanding", "power_of_two"], [0, 1]
    here = compare_routers(scn, routers, seeds)
    there = compare_routers(scn, routers, seeds, parallel=RAY2)
    assert {r: [s.to_dict() for s in ss] for r, ss in there.items()} == \
        {r: [s.to_dict() for s in ss] for r, ss in here.items()}
    # the seeds differ, so a wrong gathering order would show
    assert here["round_robin"][0].to_dict() != here["round_robin"][1].to_dict()
    grid = run_grid(scn, routers, seeds, parallel=RAY2, records_of_first_seed=True)
    assert grid["round_robin"][0].records is not None and grid["round_robin"][1].records is None


def test_energy_evaluation_and_grid_search_on_ray_equal_in_process(ray_local: Any) -> None:
    scn = load_scenario("energy_steady").with_num_requests(200)
    specs = ["static", "clipper", "static:256@1162"]
    here = evaluate_controllers(specs, scn, [0, 1], action_space=SPACE)
    there = evaluate_controllers(specs, scn, [0, 1], action_space=SPACE, parallel=RAY2)
    assert {k: r.per_seed for k, r in there.items()} == {k: r.per_seed for k, r in here.items()}
    kw: dict[str, Any] = {"caps": [64, 256], "clocks_mhz": SPACE.sm_clocks_mhz, "action_space": SPACE}
    assert grid_search_static(scn, [500_000], **kw, parallel=RAY2) == grid_search_static(scn, [500_000], **kw)


def test_compare_cli_with_workers_writes_the_same_json(ray_local: Any, tmp_path: Path) -> None:
    args = ["compare", "-s", "homogeneous_light", "--num-requests", "200", "--routers", "round_robin,least_kv",
            "--seeds", "2"]
    runner = CliRunner()
    plain = runner.invoke(app, [*args, "--json", str(tmp_path / "a.json")])
    ray_run = runner.invoke(app, [*args, "--workers", "2", "--json", str(tmp_path / "b.json")])
    assert plain.exit_code == 0 and ray_run.exit_code == 0, ray_run.output
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())


def test_asking_for_ray_without_it_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'rlserve\[ray\]'"):
        map_cells(abs, [1], RAY2)
    from rlserve.cli.main import main

    monkeypatch.setattr(sys, "argv", ["rlserve", "compare", "--workers", "2", "--seeds", "1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {INSTALL_HINT}"  # one line, no traceback


def test_parallel_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        Parallel(workers=0)
    with pytest.raises(ConfigError, match="not both"):
        Parallel(workers=2, address="auto")
    assert not Parallel().uses_ray and Parallel(address="auto").uses_ray


@pytest.mark.filterwarnings("ignore:token caps shortened")  # the scenario's lognormal tail is capped, by design
def test_evaluate_router_cli_with_workers_matches_in_process(ray_local: Any, tmp_path: Path) -> None:
    args = ["evaluate", "router", "-s", "heterogeneous", "--seeds", "2", "--num-requests", "60"]
    runner = CliRunner()
    docs = []
    for extra, name in (([], "a.json"), (["--workers", "2"], "b.json")):
        res = runner.invoke(app, [*args, *extra, "--json", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        docs.append(json.loads((tmp_path / name).read_text()))
    assert "ppo" in docs[0]["routers"]  # the shipped PPO router ran in the Ray workers too
    for key in ("routers", "runs", "best_heuristic_per_metric", "gain_vs_best"):
        assert docs[1][key] == docs[0][key]


def test_energy_sweep_cli_with_workers_matches_in_process(ray_local: Any, tmp_path: Path) -> None:
    import yaml

    from rlserve.scenario import SCENARIO_DIR

    doc = yaml.safe_load((SCENARIO_DIR / "energy_steady.yaml").read_text())
    doc["workload"]["num_requests"], doc["name"] = 150, "energy_tiny"
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({
        "env": {"scenarios": [str(tmp_path / "tiny.yaml")], "caps": [64, 256], "num_clocks": 3},
        "dqn": {"total_steps": 40, "learning_starts": 20, "batch_size": 8, "hidden_sizes": [16]},
        "validation_seeds": 0}))
    runner = CliRunner()
    reports = []
    for extra, name in (([], "a"), (["--workers", "2"], "b")):
        res = runner.invoke(app, ["energy", "sweep", "-c", str(tmp_path / "train.yaml"), "--block-sizes", "16,64",
                                  "--seeds", "1", "-o", str(tmp_path / name), "--json", str(tmp_path / f"{name}.json"),
                                  *extra])
        assert res.exit_code == 0, res.output
        assert (tmp_path / name / "energy_tiny" / "bs64" / "policy.pt").is_file()
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert reports[1] == reports[0]
