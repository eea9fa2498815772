"""Energy per token of the DQN energy controller vs every baseline, on held-out workloads.

For each energy scenario (steady, diurnal ramp, bursty; one Llama-3-8B server on an H200 in the simulator) and
each held-out workload seed (0..N-1; training draws its workloads from seeds >= 2**20), five controllers serve
the same requests: static max clock (no cap, 1980 MHz: how GPUs serve by default), Clipper (AIMD on the cap at
max clock), EAIS-style (perf-model-predicted cheapest pair meeting the SLO), the best static (cap, clock) pair
found by grid search on other seeds, and the DQN. Energy per token = simulated GPU energy (busy + idle, first
arrival to last completion) / (prompt + output tokens); SLO attainment = fraction of requests meeting TTFT and
TPOT thresholds.

Targets (issue 6): >= 35% less energy per token than static max clock at >= 99% SLO attainment, and better
than Clipper and EAIS. The last two lines are ``energy_saving_vs_max_clock=<mean over scenarios and seeds>``
and ``energy_slo_attainment=<mean DQN attainment over scenarios and seeds>``.

    python benchmarks/energy_savings.py                                  # the shipped checkpoint
    python benchmarks/energy_savings.py --checkpoint runs/energy/policy.pt --seeds 5
    python benchmarks/energy_savings.py --train runs/energy_bench         # train first (~25 min), then evaluate
    python benchmarks/energy_savings.py --quick                           # smoke run (short workloads)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlserve.envs.energy_eval import default_grid_caps, evaluate_controllers, grid_search_static, savings_vs
from rlserve.envs.energy_train import load_train_config, train_energy
from rlserve.policies.energy.action_space import ActionSpace
from rlserve.policies.energy.dqn_controller import CHECKPOINT_KIND, SHIPPED_CHECKPOINT
from rlserve.rl.checkpoints import load_checkpoint
from rlserve.scenario import load_scenario

SCENARIOS = ("energy_steady", "energy_diurnal", "energy_bursty")
ADAPTIVE_BASELINES = ["clipper", "eais"]
GRID_SEED_BASE = 500_000  # grid search seeds: held out from training and disjoint from the evaluation seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="policy.pt (default: the shipped checkpoint)")
    ap.add_argument("--train", type=Path, default=None,
                    help="train with configs/train/energy.yaml into DIR first (then evaluate its best.pt)")
    ap.add_argument("--seeds", type=int, default=5, help="held-out evaluation seeds per scenario")
    ap.add_argument("--grid-seeds", type=int, default=2, help="seeds for the static grid search")
    ap.add_argument("--quick", action="store_true", help="short workloads, 2 seeds (a smoke run)")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    checkpoint = args.checkpoint or SHIPPED_CHECKPOINT
    if args.train is not None:
        t0 = time.perf_counter()
        result = train_energy(load_train_config("energy"), args.train)
        checkpoint = args.train / ("best.pt" if (args.train / "best.pt").is_file() else "policy.pt")
        print(f"trained {result.steps} steps in {result.episodes} episodes, {time.perf_counter() - t0:.0f} s wall")
    meta = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)["metadata"]
    space = ActionSpace.from_dict(meta["action_space"])
    # every controller decides at the interval the DQN was trained with (one deployment, one control period)
    interval_s = float(meta.get("env", {}).get("interval_s", 1.0))
    seeds = range(2 if args.quick else args.seeds)
    report: dict[str, object] = {"checkpoint": str(checkpoint), "interval_s": interval_s}
    dqn_savings, dqn_slo = [], []
    for name in SCENARIOS:
        scn = load_scenario(name)
        if args.quick:
            scn = scn.with_num_requests(600)
        t0 = time.perf_counter()
        grid = grid_search_static(scn, range(GRID_SEED_BASE, GRID_SEED_BASE + args.grid_seeds),
                                  caps=default_grid_caps(space, scn),
                                  clocks_mhz=space.sm_clocks_mhz, interval_s=interval_s, action_space=space)
        dqn = f"dqn:{checkpoint}"
        specs = ["static", "clipper", "eais", grid.best, dqn]
        results = evaluate_controllers(specs, scn, seeds, action_space=space, interval_s=interval_s)
        if interval_s != 1.0:  # the adaptive baselines also at their usual 1 s period: the DQN must beat both
            for spec, res in evaluate_controllers(ADAPTIVE_BASELINES, scn, seeds, action_space=space).items():
                results[f"{spec}@1s"] = res
                specs.append(f"{spec}@1s")
        saving = savings_vs(results, "static")
        print(f"\n== {name} ({len(seeds)} held-out seeds, decisions every {interval_s:g} s, "
              f"{time.perf_counter() - t0:.0f} s; best static pair {grid.best}) ==")
        print(f"{'controller':<20} {'J/token':>9} {'saving':>14} {'SLO %':>14} {'TTFT p99 ms':>12} "
              f"{'TPOT p99 ms':>12} {'E2E p99 s':>10} {'clock':>6} {'cap':>5}")
        for spec in specs:
            a = results[spec].aggregate()
            label = "dqn" if spec == dqn else ("best static " + spec[7:] if spec == grid.best else spec)
            print(f"{label:<20} {a['energy_per_token_j']['mean']:9.4f} "
                  f"{saving[spec]['mean'] * 100:7.1f}±{saving[spec]['ci95'] * 100:4.1f}% "
                  f"{a['slo_attainment']['mean'] * 100:8.2f}±{a['slo_attainment']['ci95'] * 100:4.2f} "
                  f"{a['ttft_p99_s']['mean'] * 1e3:12.0f} {a['tpot_p99_s']['mean'] * 1e3:12.1f} "
                  f"{a['e2e_p99_s']['mean']:10.1f} {a['mean_sm_clock_mhz']['mean']:6.0f} "
                  f"{a['mean_concurrency_cap']['mean']:5.0f}")
        dqn_savings += [1.0 - r["energy_per_token_j"] / b["energy_per_token_j"]
                        for r, b in zip(results[dqn].per_seed, results["static"].per_seed, strict=True)]
        dqn_slo += [r["slo_attainment"] for r in results[dqn].per_seed]
        verdict = {b: results[dqn].aggregate()["energy_per_token_j"]["mean"]
                   < results[b].aggregate()["energy_per_token_j"]["mean"] for b in specs if b not in ("static", dqn)}
        print("dqn uses less energy per token than: "
              + ", ".join(f"{'best static' if k == grid.best else k}={v}" for k, v in verdict.items()))
        report[name] = {"best_static": grid.best, "saving_vs_max_clock": saving,
                        "aggregate": {s: results[s].aggregate() for s in specs},
                        "per_seed": {s: results[s].per_seed for s in specs}}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nDQN over all scenarios: saving {np.mean(dqn_savings) * 100:.1f}% (min {np.min(dqn_savings) * 100:.1f}%), "
          f"SLO attainment {np.mean(dqn_slo) * 100:.2f}% (min {np.min(dqn_slo) * 100:.2f}%)")
    print(f"energy_saving_vs_max_clock={np.mean(dqn_savings):.4f}")
    print(f"energy_slo_attainment={np.mean(dqn_slo):.4f}")


if __name__ == "__main__":
    main()
