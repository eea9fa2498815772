import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.envs.router_training import train_router
from rlserve.errors import ConfigError, InputError
from rlserve.policies import Router, make_router
from rlserve.policies.ppo_router import DEFAULT_CHECKPOINT, PPORouter
from rlserve.rl.checkpoints import save_checkpoint
from rlserve.rl.config import load_config
from rlserve.scenario import load_scenario
from rlserve.sim import ClusterConfig, simulate

TINY = {"total_updates": 2, "seed": 1,
        "network": {"hidden_size": 16, "proj_dim": 16},
        "ppo": {"num_envs": 2, "num_steps": 32, "chunk_len": 16, "num_minibatches": 2, "epochs": 1},
        "warm_start": {"stabilization_steps": 64, "bc_epochs": 2},
        "env": {"episode_requests": 48}, "checkpoints": {"validation_interval": 0}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo_router")
    result = train_router(load_config(overrides=TINY), out)
    return out, result


def test_training_writes_checkpoint_metrics_and_tensorboard(trained):
    out, result = trained
    assert result.updates == 2 and result.checkpoint_path == out / "checkpoint.pt"
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/approx_kl", "rollout/reward/total", "rollout/reward/e2e_request_s", "system/latency_s",
            "rollout/action/frac_3"} <= set(header)
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"PPO/policy_loss", "PPO/entropy", "PPO/clip_fraction", "Reward/total", "Reward/e2e_request_s",
            "System/throughput_rps", "System/balance_cv", "Actions/frac_0", "rollout/temperature"} <= tags
    assert "Actions/hist" in acc.Tags()["histograms"]


def test_validation_keeps_the_best_checkpoint(tmp_path):
    cfg = load_config(overrides={**TINY, "checkpoints": {"validation_interval": 1, "validation_scenarios": 1,
                                                         "validation_requests": 40}})
    result = train_router(cfg, tmp_path)
    scores = [h["validation/score"] for h in result.history]
    assert len(scores) == 2 and result.best_path == tmp_path / "best.pt"
    assert result.best_score == max(result.history[-1]["validation/best_score"], *scores)
    assert make_router(f"ppo:{result.best_path}").name == "ppo"


@pytest.mark.filterwarnings("ignore:token caps shortened")
def test_router_protocol_determinism_and_simulation(trained):
    out, _ = trained
    router = make_router(f"ppo:{out / 'checkpoint.pt'}", seed=0)
    assert isinstance(router, Router) and router.name == "ppo"
    scn = load_scenario("heterogeneous").with_num_requests(150)
    wl = scn.build_workload(3)
    a = simulate(scn.cluster, wl, router)
    b = simulate(scn.cluster, wl, make_router(f"ppo:{out / 'checkpoint.pt'}", seed=99))
    assert (a.records.replica == b.records.replica).all()  # argmax: independent of the seed
    sampled = PPORouter(out / "checkpoint.pt", temperature=5.0)
    sampled.reset(1)
    c = simulate(scn.cluster, wl, sampled)
    assert c.records.finished.all()


@pytest.mark.filterwarnings("ignore:token caps shortened")
def test_one_replica_set_checkpoint_routes_every_cluster_size(trained):
    out, _ = trained
    router = PPORouter(out / "checkpoint.pt")
    assert router.replica_set and router.num_replicas is None
    assert router.supports(1) and router.supports(64) and not router.supports(65)
    for name in ("energy_steady", "heterogeneous"):  # 1 and 4 replicas, one router object in turn
        scn = load_scenario(name).with_num_requests(60)
        result = simulate(scn.cluster, scn.build_workload(0), router)
        assert result.records.finished.all()


@pytest.mark.filterwarnings("ignore:token caps shortened")
def test_flat_checkpoint_refuses_other_sizes_and_wrong_checkpoints(tmp_path):
    flat = load_config(overrides={**TINY, "total_updates": 1, "network": {**TINY["network"], "architecture": "flat"}})
    out = tmp_path / "flat"
    train_router(flat, out)
    assert PPORouter(out / "checkpoint.pt").num_replicas == 4
    scn = load_scenario("energy_steady").with_num_requests(5)
    with pytest.raises(ConfigError, match="routes 4 replicas"):
        simulate(scn.cluster, scn.build_workload(0), PPORouter(out / "checkpoint.pt"))
    save_checkpoint(tmp_path / "dqn.pt", {}, kind="dqn_energy")
    with pytest.raises(InputError, match="expected 'ppo'"):
        make_router(f"ppo:{tmp_path / 'dqn.pt'}")
    with pytest.raises(ConfigError, match="temperature"):
        PPORouter(out / "checkpoint.pt", temperature=0.0)


def test_shape_mismatch_is_an_error_not_random_weights(trained, tmp_path):
    out, _ = trained
    data = torch.load(out / "checkpoint.pt", weights_only=True)
    data["metadata"]["state"]["include_work"] = False  # layout no longer matches the network
    save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in data.items() if k not in ("kind", "format_version")},
                    kind="ppo")
    with pytest.raises(ConfigError, match="features but the network expects"):
        PPORouter(tmp_path / "bad.pt")


@pytest.mark.filterwarnings("ignore:token caps shortened")  # the scenario's lognormal tail is capped, by design
def test_cli_evaluate_router_json_and_plots(trained, tmp_path):
    out, _ = trained
    res = CliRunner().invoke(app, ["evaluate", "router", "--checkpoint", str(out / "checkpoint.pt"), "-s",
                                   "heterogeneous", "--seeds", "2", "--num-requests", "60", "--json",
                                   str(tmp_path / "e.json"), "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads((tmp_path / "e.json").read_text())
    assert set(doc["routers"]) >= {f"ppo:{out / 'checkpoint.pt'}", "least_outstanding", "join_shortest_queue"}
    assert doc["routers"]["least_outstanding"]["TTFT p99 ms"]["ci95"] >= 0
    assert (tmp_path / "plots" / "router_metrics.png").stat().st_size > 0


def test_cli_train_router_and_resume(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("network: {hidden_size: 16, proj_dim: 16}\ncheckpoints: {validation_interval: 0}\n"
                   "ppo: {num_envs: 2, num_steps: 32, chunk_len: 16, num_minibatches: 2, epochs: 1, "
                   "anneal_lr: false}\n"
                   "warm_start: {stabilization_steps: 32, bc_epochs: 1}\nenv: {episode_requests: 40}\n")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "router", "-o", str(tmp_path / "o"), "-c", str(cfg), "--updates", "1"])
    assert res.exit_code == 0, res.output
    # --resume without -c: the config stored in the checkpoint; only the total grows
    res = runner.invoke(app, ["train", "router", "-o", str(tmp_path / "o"), "--updates", "2",
                              "--resume", "--export", str(tmp_path / "small.pt")])
    assert res.exit_code == 0, res.output
    assert torch.load(tmp_path / "o" / "checkpoint.pt", weights_only=True)["update"] == 2
    small = torch.load(tmp_path / "small.pt", weights_only=True)
    assert "optimizer" not in small and small["update"] == 2
    assert make_router(f"ppo:{tmp_path / 'small.pt'}").supports(16)


@pytest.mark.filterwarnings("ignore:token caps shortened")
@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="the shipped checkpoint is built by training")
def test_shipped_checkpoint_is_capability_aware():
    scn = load_scenario("heterogeneous").with_num_requests(600)
    wl = scn.build_workload(1234)
    ppo = simulate(scn.cluster, wl, make_router("ppo", seed=0)).summary(scn.slo)
    lo = simulate(scn.cluster, wl, make_router("least_outstanding", seed=0)).summary(scn.slo)
    assert ppo.e2e_s["mean"] < lo.e2e_s["mean"] and ppo.ttft_s["p99"] < lo.ttft_s["p99"]


def test_router_training_resumes_bit_for_bit(tmp_path):
    # the routing environments are re-created by replaying each episode's seed and actions
    cfg = load_config(overrides={**TINY, "checkpoints": {"validation_interval": 0, "checkpoint_interval": 1},
                                 "total_updates": 3})
    straight = train_router(cfg, tmp_path / "a")
    train_router(cfg, tmp_path / "b", stop_after_updates=2)
    resumed = train_router(cfg, tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.filterwarnings("ignore:token caps shortened")
def test_replica_order_does_not_change_the_results(trained):
    # the same cluster and workload with the replicas listed in three orders: the same metrics within seed noise
    # (the network and the state are equivariant; only exact ties are broken at random, as heuristics do)
    out, _ = trained
    scn = load_scenario("heterogeneous").with_num_requests(400)
    wl = scn.build_workload(5)
    means = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        cluster = ClusterConfig(tuple(scn.cluster.replicas[i] for i in order))
        result = simulate(cluster, wl, PPORouter(out / "checkpoint.pt"))
        means.append(result.summary(scn.slo).e2e_s["mean"])
        fast = [i for i, j in enumerate(order) if scn.cluster.replicas[j].gpu == "h100-sxm"]
        assert np.isin(result.records.replica, fast).mean() > 0.5  # same behaviour: most traffic to the H100s
    median = float(np.median(means))
    assert max(abs(m - median) for m in means) / median < 0.01, means
