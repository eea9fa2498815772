"""Router quality: every router we ship against the best of all of them, per scenario, with the information a proxy has.

For every built-in scenario with more than one replica, every registered heuristic (``HEURISTICS``: the request
counters, KV and latency estimators, and the prefix-aware routers production stacks run today: SGLang/vllm-router
``cache_aware``, llm-d's scorers, LMetric, production-stack ``loadaware``) and the PPO router route the same
workloads (seeds ``--first-seed`` .. ``+ --seeds - 1``; training never sees them). Printed per scenario:

- the best heuristic over all of them, per metric (mean E2E, P99 TTFT), by name, with its finished/rejected counts;
- the PPO router's gain over that best (``1 - PPO / best``, positive = PPO lower); "-" where the checkpoint cannot
  route the scenario's cluster (the shipped one is for 4 replicas);
- each prefix-aware router's (and least_expected_latency's) mean-E2E gain over least_outstanding;
- the clairvoyant lookahead's gain over the best heuristic: a planner that knows the true output lengths and
  drains every replica before each decision (``rlserve.sim.lookahead``), no deployable router; it says how much
  a scenario leaves to win at all.

The whole table is printed twice: with the scenarios' realistic declared ``max_tokens`` (what a proxy sees; the
default, ``fixed:2048``) and with ``max_tokens: exact``, an oracle where routers see the true output lengths. The
difference is what that information no deployment has was worth.

The last line is ``router_quality_min_gain_vs_best=<fraction>``: the worst scenario's mean-E2E gain of PPO over the
best heuristic, with realistic declared sizes (negative = PPO worse).

Default run: 2 seeds x 1,000 requests per scenario, a few minutes on 2 cores. ``--throughput`` also measures
PPO training decisions per second against the bare environment (the learning overhead).

    .venv/bin/python benchmarks/router_quality.py [--checkpoint CK] [--seeds 2] [--num-requests 1000] [--json out]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from rlserve.envs.router_training import make_env, train_router
from rlserve.experiments import HEURISTICS, runnable_routers
from rlserve.metrics import mean_ci95
from rlserve.policies import make_router
from rlserve.policies.ppo_router import DEFAULT_CHECKPOINT
from rlserve.rl.config import TrainConfig, from_dict, load_config
from rlserve.scenario import Scenario, list_scenarios, load_scenario
from rlserve.sim import simulate
from rlserve.sim.lookahead import simulate_lookahead
from rlserve.workload.config import MaxTokensConfig

BASELINE = "least_outstanding"
NEW = ("prefix_affinity", "llmd", "lmetric", "loadaware", "least_expected_latency")
LOOKAHEAD = "clairvoyant_lookahead"
METRICS = ("e2e_mean_s", "ttft_p99_s")


def _row(summary, res) -> dict[str, float]:  # noqa: ANN001 (a Summary and its SimResult)
    return {"e2e_mean_s": summary.e2e_s["mean"], "ttft_p99_s": summary.ttft_s["p99"],
            "finished": summary.num_finished, "rejected": res.rejected}


def run_scenario(scn: Scenario, ppo: str, seeds: list[int]) -> dict:  # noqa: D103
    """Every router (and the lookahead) on ``seeds`` of ``scn``: means over seeds and the comparisons."""
    routers, skipped = runnable_routers(scn, [*HEURISTICS, ppo])
    per: dict[str, list[dict[str, float]]] = {r: [] for r in [*routers, LOOKAHEAD]}
    for seed in seeds:
        workload = scn.build_workload(seed)
        for r in routers:
            res = simulate(scn.cluster, workload, make_router(r, seed=seed))
            per[r].append(_row(res.summary(scn.slo), res))
        res = simulate_lookahead(scn.cluster, workload, seed=seed)[0]
        per[LOOKAHEAD].append(_row(res.summary(scn.slo), res))
    agg = {r: {k: mean_ci95([row[k] for row in rows])[0] for k in rows[0]} for r, rows in per.items()}
    heur = [r for r in routers if r in HEURISTICS]
    best = {m: min(heur, key=lambda r, m=m: agg[r][m]) for m in METRICS}

    def gain(ours: str, theirs: str, m: str) -> float:
        return 1.0 - agg[ours][m] / agg[theirs][m]

    return {
        "scenario": scn.name, "max_tokens": scn.workload.max_tokens.source(), "metrics": agg, "best": best,
        "ppo_gain_vs_best": {m: gain(ppo, best[m], m) for m in METRICS} if ppo in agg else None,
        "ppo_skipped": skipped.get(ppo),
        "gain_vs_least_outstanding": {r: gain(r, BASELINE, "e2e_mean_s") for r in NEW},
        "lookahead_gain_vs_best": {m: gain(LOOKAHEAD, best[m], m) for m in METRICS},
    }


def training_throughput(cfg: TrainConfig, updates: int = 3) -> dict[str, float]:
    """Decisions/s of PPO training (rollouts + updates) vs the bare environment driven by a heuristic."""
    env = make_env(cfg)
    env.reset(seed=0)
    steps, t = 0, time.perf_counter()
    while time.perf_counter() - t < 10.0:
        _, _, _, trunc, _ = env.step(env.heuristic_action("least_outstanding"))
        steps += 1
        if trunc:
            env.reset(seed=steps)
    env_rate = steps / (time.perf_counter() - t)
    quick = load_config(overrides={**cfg.to_dict(), "total_updates": updates,
                                   "warm_start": {**cfg.to_dict()["warm_start"], "stabilization_steps": 64,
                                                  "enabled": False},
                                   "checkpoints": {"validation_interval": 0},
                                   "monitoring": {"enable_tensorboard": False, "metrics_export": "none"}})
    with tempfile.TemporaryDirectory() as tmp:
        result = train_router(quick, Path(tmp) / "run")
    return {"env_only_decisions_per_s": env_rate, "training_decisions_per_s": result.decisions_per_s,
            "training_over_env_ratio": result.decisions_per_s / env_rate}


def print_header() -> None:
    print(f"{'scenario':22s} {'best E2E (s)':32s} {'best P99 TTFT (ms)':32s} {'fin/rej':>9s} "
          f"{'PPO gain E2E/TTFT':>18s}  " + " ".join(f"{r[:10]:>10s}" for r in NEW) + f"  {'lookahead E2E/TTFT':>18s}")


def print_row(r: dict) -> None:
    """One scenario: best heuristics by name, PPO's gain, the new routers' gains, the lookahead's headroom."""
    m, b = r["metrics"], r["best"]
    e2e, ttft = b["e2e_mean_s"], b["ttft_p99_s"]
    pg = r["ppo_gain_vs_best"]
    ppo_gain = "-" if pg is None else f"{pg['e2e_mean_s']:+.3f}/{pg['ttft_p99_s']:+.3f}"
    la = r["lookahead_gain_vs_best"]
    print(f"{r['scenario']:22s} {e2e + ' ' + format(m[e2e]['e2e_mean_s'], '.3f'):32s} "
          f"{ttft + ' ' + format(m[ttft]['ttft_p99_s'] * 1e3, '.0f'):32s} "
          f"{m[e2e]['finished']:5.0f}/{m[e2e]['rejected']:<3.0f} {ppo_gain:>18s}  "
          + " ".join(f"{r['gain_vs_least_outstanding'][x]:+10.3f}" for x in NEW)
          + f"  {la['e2e_mean_s']:+.3f}/{la['ttft_p99_s']:+.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--num-requests", type=int, default=1000, help="requests per scenario and seed (0 = as shipped)")
    ap.add_argument("--scenarios", default="", help="comma-separated names (default: every multi-replica one)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--throughput", action="store_true", help="also measure PPO training decisions/s (~1 min)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="token caps shortened")
    torch.set_num_threads(1)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    names = args.scenarios.split(",") if args.scenarios else [
        n for n in list_scenarios() if len(load_scenario(n).cluster.replicas) > 1]
    ppo = f"ppo:{args.checkpoint}"
    report: dict = {"seeds": seeds, "checkpoint": str(args.checkpoint), "num_requests": args.num_requests}
    t0 = time.perf_counter()
    for mode in ("declared", "exact"):
        print(f"\n== max_tokens {'as the scenarios declare it (realistic)' if mode == 'declared' else 'EXACT: oracle'}"
              f" | gains: 1 - x / best, positive = lower; new routers: mean E2E gain over {BASELINE}")
        print_header()
        results = []
        for name in names:
            scn = load_scenario(name)
            if args.num_requests:
                scn = scn.with_num_requests(args.num_requests)
            if mode == "exact":
                scn = dataclasses.replace(scn, workload=dataclasses.replace(
                    scn.workload, max_tokens=MaxTokensConfig(kind="exact", tokens=None)))
            results.append(run_scenario(scn, ppo, seeds))
            print_row(results[-1])
        report[mode] = results
    print(f"\n{len(names)} scenarios x {len(seeds)} seeds x 2 modes in {time.perf_counter() - t0:.0f} s")
    if args.throughput:
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        tp = report["throughput"] = training_throughput(from_dict(TrainConfig, ck["config"]))
        print(f"training throughput: {tp['training_decisions_per_s']:.0f} decisions/s "
              f"(environment alone: {tp['env_only_decisions_per_s']:.0f}/s; ratio {tp['training_over_env_ratio']:.2f})")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    gains = [r["ppo_gain_vs_best"]["e2e_mean_s"] for r in report["declared"] if r["ppo_gain_vs_best"] is not None]
    print(f"router_quality_min_gain_vs_best={float(np.min(gains)) if gains else float('nan'):.4f}")


if __name__ == "__main__":
    main()
