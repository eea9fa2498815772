import math
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rlserve.envs.router_reward import RewardCalculator, StepOutcome, load_balance_cv
from rlserve.envs.router_state import StateBuilder
from rlserve.envs.routing_env import LOOKAHEAD_TTFT_WEIGHT, RoutingEnv
from rlserve.envs.scenario_sampler import ARRIVAL_FAMILIES, FAST_GPUS, GPU_MIXES, LENGTH_FAMILIES, ScenarioSampler
from rlserve.errors import ConfigError
from rlserve.policies import make_router
from rlserve.rl.config import RewardConfig, StateConfig
from rlserve.scenario import load_scenario
from rlserve.sim import ClusterSimulator, simulate
from rlserve.sim.lookahead import simulate_lookahead
from rlserve.snapshot import ClusterSnapshot


def test_passes_gymnasium_env_checker():
    with warnings.catch_warnings():
        # the checker's advice about unbounded Box limits and about env specs (we build the env directly)
        warnings.filterwarnings("ignore", message=".*(infinity|spec).*")
        check_env(RoutingEnv(episode_requests=64), skip_render_check=True)


def _run(env, router, seed):
    obs, info = env.reset(seed=seed)
    assert obs.shape == env.observation_space.shape and np.isfinite(obs).all()
    rewards, costs, steps = [], 0.0, 0
    while True:
        obs, r, term, trunc, info = env.step(env.heuristic_action(router))
        assert not term and np.isfinite(obs).all()
        rewards.append(r)
        costs += info["rollout/reward/e2e_request_s"]
        steps += 1
        if trunc:
            return rewards, costs, steps


def test_episode_matches_simulator_and_cost_sums_to_latency():
    env = RoutingEnv(["heterogeneous"], episode_requests=300, reward=RewardConfig(mode="cost"))
    rewards, e2e_cost, steps = _run(env, "least_outstanding", seed=5)
    assert steps == 300  # one step per request, truncated after the last
    # the env dispatches exactly what the router would have done in the simulator itself
    scn = env.current.scenario
    ref = simulate(scn.cluster, env.sim.workload, make_router("least_outstanding", seed=env._router_seed))
    result = env.sim.finish()
    np.testing.assert_array_equal(result.records.replica, ref.records.replica)
    # Little's law: request-seconds charged inside the episode = E2E time spent before the last arrival
    last = env.sim.workload.arrival_s[-1]
    in_episode = np.minimum(result.records.finish_s, last) - result.records.arrival_s
    assert e2e_cost == pytest.approx(in_episode.sum(), rel=1e-6)
    assert sum(rewards) == pytest.approx(-(e2e_cost + sum_ttft(result.records, last)), rel=1e-6)


def sum_ttft(records, last):
    return (np.minimum(np.nan_to_num(records.first_token_s, nan=np.inf), last) - records.arrival_s).sum()


def test_capability_aware_teacher_earns_more_reward_on_heterogeneous_cluster():
    env = RoutingEnv(["heterogeneous"], episode_requests=400, reward=RewardConfig(mode="cost"))
    worse, _, _ = _run(env, "round_robin", seed=2)
    better, _, _ = _run(env, "least_expected_latency", seed=2)
    assert sum(better) > sum(worse)


def test_lookahead_teacher_labels_as_the_planner_routes_and_can_be_chosen_in_hindsight():
    env = RoutingEnv(["heterogeneous"], episode_requests=200, reward=RewardConfig(mode="cost"))
    _run(env, "lookahead", seed=4)
    ref, _ = simulate_lookahead(env.current.scenario.cluster, env.sim.workload, ttft_weight=LOOKAHEAD_TTFT_WEIGHT)
    np.testing.assert_array_equal(env.sim.finish().records.replica, ref.records.replica)
    env.reset(seed=4)
    # on a heterogeneous cluster the clairvoyant planner beats request counting in hindsight
    assert env.best_heuristic(["least_outstanding", "lookahead"]) == "lookahead"


def test_same_seed_same_episode():
    a, b = RoutingEnv(episode_requests=50), RoutingEnv(episode_requests=50)
    oa, ia = a.reset(seed=11)
    ob, ib = b.reset(seed=11)
    np.testing.assert_array_equal(oa, ob)
    assert ia == ib
    for act in [0, 3, 1, 2, 2]:
        np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])


def test_state_dimension_and_feature_names():
    cfg = StateConfig(max_queue_requests_per_replica=4)
    sb = StateBuilder(4, cfg)
    # seed formula: N * (11 + 8 + 7K) + 3 + 7, plus our per-replica capability (3) and work (5), request (2)
    assert sb.get_state_dimension() == 4 * (11 + 8 + 28 + 3 + 5) + 3 + 7 + 2
    assert len(sb.feature_names()) == sb.get_state_dimension()
    plain = StateBuilder(2, StateConfig(enable_enhanced_features=False, include_capability=False,
                                        include_work=False, include_request=False))
    assert plain.get_state_dimension() == 2 * 11 + 3
    env = RoutingEnv(["heterogeneous"], episode_requests=20, state=cfg)
    obs, _ = env.reset(seed=0)
    for a in [0, 0, 0, 0, 0, 0]:
        obs, *_ = env.step(a)
    names = env.state_builder.feature_names()
    row = dict(zip(names, obs, strict=True))
    assert row["r0.q0_prompt_tokens"] > 0  # queue views are filled when the world provides them
    assert row["r0.rel_decode_speed"] == 1.0 and row["r2.rel_decode_speed"] < 0.5  # H100 vs A40
    assert row["r0.latency_gap_s"] >= 0 and min(row[f"r{i}.latency_gap_s"] for i in range(4)) == 0


def test_reward_modes_and_components():
    out = StepOutcome(dt_s=0.5, e2e_request_s=3.0, ttft_request_s=1.0, finished_e2e_s=np.array([2.0, 8.0]),
                      outstanding=np.array([1.0, 3.0]))
    r, info = RewardCalculator(RewardConfig(mode="cost", ttft_weight=2.0)).calculate_reward(out)
    assert r == -5.0 and info["rollout/reward/cost"] == 5.0
    assert load_balance_cv(np.array([1.0, 3.0])) == pytest.approx(0.5)
    calc = RewardCalculator(RewardConfig(mode="instant", latency_threshold_s=4.0, balance_weight=1.0))
    r, info = calc.calculate_reward(out)
    assert info["rollout/reward/threshold_penalty"] == pytest.approx(1 - math.exp(-1.0))
    assert r == pytest.approx(2 - 5.0 - 0.5 - (1 - math.exp(-1.0)))
    hybrid = RewardCalculator(RewardConfig(mode="hybrid"))
    r, info = hybrid.calculate_reward(out)
    assert set(info) == set(hybrid.component_keys())
    delta = RewardCalculator(RewardConfig(mode="delta", latency_threshold_s=100))
    delta.calculate_reward(out)
    r2, _ = delta.calculate_reward(out)  # same interval twice: no change, no penalty
    assert r2 == 0.0


def test_sampler_randomizes_clusters_and_rejects_wrong_sizes():
    sampler = ScenarioSampler(num_replicas=4)
    rng = np.random.default_rng(0)
    draws = [sampler.sample(rng, 100).params for _ in range(40)]
    assert any(len(set(d["gpus"])) > 1 for d in draws) and any(len(set(d["gpus"])) == 1 for d in draws)
    assert min(d["rho"] for d in draws) >= 0.3 and max(d["rho"] for d in draws) <= 1.1
    with pytest.raises(ConfigError, match="trained for 2-2 replicas"):
        ScenarioSampler(["heterogeneous"], num_replicas=2)


def test_sampler_covers_sizes_and_families_and_never_draws_held_out_ones():
    sampler = ScenarioSampler(num_replicas=(2, 16), holdout=["code", "two_tier"])
    rng = np.random.default_rng(1)
    draws = [sampler.sample(rng, 50).params for _ in range(300)]
    assert {d["replicas"] for d in draws} == set(range(2, 17))
    assert {d["lengths"] for d in draws} == set(LENGTH_FAMILIES) - {"code"}
    assert {d["gpu_mix"] for d in draws} == set(GPU_MIXES) - {"two_tier"}
    assert {d["arrival"] for d in draws} == set(ARRIVAL_FAMILIES)
    one_fast = [d for d in draws if d["gpu_mix"] == "one_fast"]
    assert all(sum(g in FAST_GPUS for g in d["gpus"]) == 1 for d in one_fast)
    only = ScenarioSampler(num_replicas=(4, 4), only=["code"])
    assert {only.sample(rng, 50).params["lengths"] for _ in range(20)} == {"code"}
    with pytest.raises(ConfigError, match="unknown scenario families"):
        ScenarioSampler(holdout=["cod"])


def _permuted(snapshot: ClusterSnapshot, perm: np.ndarray) -> ClusterSnapshot:
    reps = snapshot.replicas
    return ClusterSnapshot(snapshot.time_s, snapshot.num_replicas, tuple(reps[i] for i in perm),
                           snapshot.arrivals_total)


@pytest.mark.filterwarnings("ignore:token caps shortened")
def test_replica_set_observation_is_blind_to_replica_order():
    # snapshots of a real heterogeneous run, fed to two builders: as listed, and with the replicas permuted
    scn = load_scenario("heterogeneous").with_num_requests(120)
    sim = ClusterSimulator(scn.cluster, scn.build_workload(0), seed=0)
    perm = np.array([2, 0, 3, 1])
    plain, permuted = StateBuilder(4), StateBuilder(4)
    router = make_router("least_expected_latency", seed=0)
    per = plain.replica_dimension()
    g = plain.global_dimension()
    while (req := sim.peek_arrival()) is not None:
        snap = sim.snapshot()
        a = plain.build_set(snap, req, slots=6)
        b = permuted.build_set(_permuted(snap, perm), req, slots=6)
        np.testing.assert_array_equal(b[: g + 1], a[: g + 1])
        blocks = a[g + 1:].reshape(6, per)
        np.testing.assert_array_equal(b[g + 1:].reshape(6, per)[:4], blocks[perm])
        assert a[g] == 4 and not blocks[4:].any()
        sim.dispatch(router.select(req, snap))
        sim.advance_to(sim.peek_arrival().arrival_s if sim.peek_arrival() is not None else sim.now)


@pytest.mark.filterwarnings("ignore:token caps shortened")
def test_replica_set_env_draws_cluster_sizes_into_one_padded_layout():
    env = RoutingEnv(episode_requests=8, replica_set=(2, 6))
    layout = env.replica_set_layout
    assert env.action_space.n == 6 and layout["slots"] == 6
    sizes = set()
    for seed in range(12):
        obs, info = env.reset(seed=seed)
        n = info["scenario"]["replicas"]
        sizes.add(n)
        assert obs.shape == env.observation_space.shape and obs[layout["global_dim"]] == n
        with pytest.raises(ValueError, match="outside"):
            env.step(n)
        obs, *_ = env.step(n - 1)
    assert len(sizes) > 2
    assert load_scenario("heterogeneous").cluster.replicas[0].gpu == "h100-sxm"


@pytest.mark.slow
def test_stable_baselines3_ppo_runs_on_the_env():
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", RoutingEnv(episode_requests=128), n_steps=128, batch_size=64, n_epochs=1, seed=0,
                device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256


@pytest.mark.filterwarnings("ignore:token caps shortened")
def test_prefix_and_kv_features_are_the_least_expected_latency_routers_own_numbers():
    from rlserve.policies.routers import LeastExpectedLatencyRouter, expected_output_tokens, kv_load

    scn = load_scenario("shared_prompts_kv").with_num_requests(150)
    sim = ClusterSimulator(scn.cluster, scn.build_workload(0), seed=0)
    builder = StateBuilder(len(scn.cluster.replicas), StateConfig(include_prefix_kv=True))
    names = builder.feature_names()
    router = make_router("least_expected_latency", seed=0)
    hits = 0.0
    while (req := sim.peek_arrival()) is not None:
        snap = sim.snapshot()
        row = dict(zip(names, builder.build(snap, req), strict=True))
        out = expected_output_tokens(req, snap)
        for i, r in enumerate(snap.replicas):
            est = LeastExpectedLatencyRouter.estimate_s(r, req, out)
            assert row[f"r{i}.expected_latency_s"] == pytest.approx(math.log1p(est), rel=1e-12)
            assert row[f"r{i}.kv_load"] == pytest.approx(kv_load(r, req, out), rel=1e-12)
            assert row[f"r{i}.prefix_hit_fraction"] == pytest.approx(r.prefix_hit_tokens / req.prompt_tokens)
            hits += row[f"r{i}.prefix_hit_fraction"]
        sim.dispatch(router.select(req, snap))
        nxt = sim.peek_arrival()
        sim.advance_to(nxt.arrival_s if nxt is not None else sim.now)
    assert hits > 0  # the scenario shares prefixes: the feature is exercised
