"""Energy per token of the DQN energy controller vs every baseline, on held-out workloads, clock switches charged.

For each energy scenario (steady, diurnal ramp, bursty, and the held-out family ``energy_heldout_*`` that no
controller was trained or tuned on; one Llama-3-8B server on an H200 in the simulator) and each held-out
workload seed (0..N-1; training draws its workloads from seeds >= 2**20), every controller serves the same
requests with the scenario's clock-transition cost charged (default: the old clock holds 50 ms after a
decision, then a 50 ms stall; ``--free-switching`` turns it off):

- static max clock (no cap, 1980 MHz: how GPUs serve by default; the reference of every saving);
- Clipper (AIMD on the cap at max clock), EAIS-style (perf-model-predicted cheapest pair meeting the SLO);
- the SLO-slack feedback controller, its parameters tuned per scenario on other seeds (``SLACK_GRID``);
- the best static (cap, clock) pair per scenario and the best single pair for all scenarios, both found by grid
  search on other seeds (progress on stderr);
- the DQN (the shipped checkpoint or ``--checkpoint``; several with ``--checkpoint A --checkpoint B``).

Then the same under the ``pessimistic`` power split (memory power mostly fixed, decode slowing more at low
clocks), with the static pair searched again under it. Energy per token = simulated GPU energy (busy + idle, first
arrival to last completion) / (prompt + output tokens); SLO attainment = fraction of requests meeting TTFT and
TPOT thresholds.

Targets (issue 17): on every scenario >= 99% SLO attainment and more saving than each baseline; overall >= 45%
less energy per token than static max clock. The last two lines are ``energy_saving_vs_max_clock=<mean over
scenarios and seeds>`` (the first DQN, default split) and ``energy_slo_attainment=<its worst scenario's mean>``.

    python benchmarks/energy_savings.py                                  # the shipped checkpoint, 5 seeds
    python benchmarks/energy_savings.py --checkpoint runs/energy_switching/best.pt --seeds 3 --grid-seeds 1
    python benchmarks/energy_savings.py --quick                           # smoke run (short workloads)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlserve.envs.energy_eval import (
    SLACK_GRID,
    best_static_global,
    evaluate_controllers,
    grid_search_static,
    lowest_feasible_clock,
    savings_vs,
    search_specs,
)
from rlserve.policies.energy.action_space import ActionSpace
from rlserve.policies.energy.dqn_controller import CHECKPOINT_KIND, SHIPPED_CHECKPOINT
from rlserve.rl.checkpoints import load_checkpoint
from rlserve.scenario import Scenario, load_scenario
from rlserve.sim.clock_transition import FREE_TRANSITION

SCENARIOS = ("energy_steady", "energy_diurnal", "energy_bursty", "energy_heldout_code")
GRID_SEED_BASE = 500_000  # grid search / tuning seeds: held out from training and disjoint from evaluation seeds


def progress(label: str) -> Any:
    """An ``on_run`` callback printing one line per finished run to stderr (progress also without a tty)."""
    count = [0]
    t0 = time.perf_counter()

    def on_run(spec: str, seed: int, m: dict[str, float]) -> None:
        count[0] += 1
        print(f"  [{label}] run {count[0]}: {spec} seed {seed}: {m['energy_per_token_j']:.4f} J/token, "
              f"SLO {m['slo_attainment'] * 100:.2f}% ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    return on_run


def with_split(scn: Scenario, split: str, free: bool) -> Scenario:
    replicas = tuple(dataclasses.replace(r, power_split=split) for r in scn.cluster.replicas)
    out = dataclasses.replace(scn, cluster=dataclasses.replace(scn.cluster, replicas=replicas))
    return dataclasses.replace(out, clock_transition=FREE_TRANSITION) if free else out


def run_split(split: str, args: argparse.Namespace, space: ActionSpace, interval_s: float,
              dqns: list[str]) -> dict[str, Any]:
    """Every scenario under one power split; returns per-scenario results and the DQNs' per-seed numbers."""
    seeds = range(2 if args.quick else args.seeds)
    grid_seeds = range(GRID_SEED_BASE, GRID_SEED_BASE + args.grid_seeds)
    scns = {}
    for name in SCENARIOS:
        scn = with_split(load_scenario(name), split, args.free_switching)
        scns[name] = scn.with_num_requests(600) if args.quick else scn
    if args.only is not None:  # the baselines are deterministic for a seed: an earlier full run's numbers still hold
        out: dict[str, Any] = {"scenarios": {}}
        for name, scn in scns.items():
            specs = list(dict.fromkeys(["static", *dqns, *args.only]))
            results = evaluate_controllers(specs, scn, seeds, action_space=space, interval_s=interval_s,
                                           on_run=progress(f"{split} {name} evaluation"))
            saving = savings_vs(results, "static")
            for spec in specs[1:]:
                a = {k: v["mean"] for k, v in results[spec].aggregate().items()}
                print(f"{split} {name} {spec}: saving {saving[spec]['mean'] * 100:.1f}"
                      f"±{saving[spec]['ci95'] * 100:.1f}%, SLO {a['slo_attainment'] * 100:.2f}%, clock changes/min "
                      f"{a['clock_changes_per_min']:.1f}, in transition {a['transition_time_frac'] * 100:.1f}%, "
                      f"mean clock {a['mean_sm_clock_mhz']:.0f}")
            out["scenarios"][name] = {"aggregate": {s: results[s].aggregate() for s in results},
                                      "per_seed": {s: results[s].per_seed for s in results}}
        return out
    grids, slack_best = {}, {}
    for name, scn in scns.items():  # tuning on the grid seeds first: the global static pair needs every table
        caps = [scn.cluster.replicas[0].max_num_seqs] if not args.grid_caps else args.grid_caps
        grids[name] = grid_search_static(scn, grid_seeds, caps=caps, clocks_mhz=space.sm_clocks_mhz,
                                         interval_s=interval_s, action_space=space,
                                         on_run=progress(f"{split} {name} static grid"))
        if not args.no_tuning:
            slack_best[name] = search_specs(SLACK_GRID, scn, grid_seeds, action_space=space, interval_s=interval_s,
                                            on_run=progress(f"{split} {name} slack tuning")).best
    # one pair for all: attainment falls with the clock, so the highest of the per-scenario lowest feasible
    # clocks is feasible everywhere; run it where the bisection did not, then pick among pairs run everywhere
    cap = next(iter(scns.values())).cluster.replicas[0].max_num_seqs
    lows = [lowest_feasible_clock(g.table, cap) for g in grids.values()]
    if all(f is not None for f in lows):
        candidate = f"static:{cap}@{max(f for f in lows if f is not None):g}"
        for name, scn in scns.items():
            if candidate not in {r["controller"] for r in grids[name].table}:
                grids[name].table.extend(search_specs([candidate], scn, grid_seeds, action_space=space,
                                                      interval_s=interval_s,
                                                      on_run=progress(f"{split} {name} global pair")).table)
    global_pair = best_static_global({n: g.table for n, g in grids.items()})
    out = {"global_static": global_pair, "scenarios": {}}
    for name, scn in scns.items():
        t0 = time.perf_counter()
        specs = ["static", "clipper", "eais", slack_best.get(name, "slack"), grids[name].best, global_pair, *dqns]
        specs = list(dict.fromkeys(specs))  # the per-scenario and the global pair may coincide
        results = evaluate_controllers(specs, scn, seeds, action_space=space, interval_s=interval_s,
                                       on_run=progress(f"{split} {name} evaluation"))
        saving = savings_vs(results, "static")
        print(f"\n== {name}, {split} power split ({len(seeds)} held-out seeds, decisions every {interval_s:g} s, "
              f"switching {'free' if args.free_switching else 'charged'}, {time.perf_counter() - t0:.0f} s) ==")
        print(f"{'controller':<34} {'J/token':>8} {'saving':>13} {'SLO %':>14} {'TTFT p99':>9} {'TPOT p99':>9} "
              f"{'clock':>6} {'clk chg/min':>11} {'cap chg/min':>11} {'in transition':>13}")
        labels = {}
        for spec in specs:
            label = spec
            if spec.startswith("dqn:"):
                label = "dqn" if spec == dqns[0] else f"dqn #{dqns.index(spec) + 1}"
            elif spec == grids[name].best:
                label = "best static (this scenario) " + spec[7:]
            elif spec == global_pair:
                label = "best static (global) " + spec[7:]
            labels[spec] = label
            a = results[spec].aggregate()
            print(f"{label:<34} {a['energy_per_token_j']['mean']:8.4f} "
                  f"{saving[spec]['mean'] * 100:6.1f}±{saving[spec]['ci95'] * 100:4.1f}% "
                  f"{a['slo_attainment']['mean'] * 100:8.2f}±{a['slo_attainment']['ci95'] * 100:4.2f} "
                  f"{a['ttft_p99_s']['mean'] * 1e3:7.0f}ms {a['tpot_p99_s']['mean'] * 1e3:7.1f}ms "
                  f"{a['mean_sm_clock_mhz']['mean']:6.0f} {a['clock_changes_per_min']['mean']:11.1f} "
                  f"{a['cap_changes_per_min']['mean']:11.1f} {a['transition_time_frac']['mean'] * 100:12.1f}%")
        dqn_agg = results[dqns[0]].aggregate()
        dqn_ept = dqn_agg["energy_per_token_j"]["mean"]
        beaten = {labels[b]: dqn_ept < results[b].aggregate()["energy_per_token_j"]["mean"]
                  for b in specs if b != "static" and not b.startswith("dqn:")}
        print(f"dqn at >= 99% SLO: {dqn_agg['slo_attainment']['mean'] >= 0.99}; uses less energy per token than: "
              + ", ".join(f"{k}={v}" for k, v in beaten.items()))
        out["scenarios"][name] = {
            "best_static": grids[name].best, "slack": slack_best.get(name, "slack"), "labels": labels,
            "saving_vs_max_clock": saving, "aggregate": {s: results[s].aggregate() for s in specs},
            "per_seed": {s: results[s].per_seed for s in specs}, "static_grid": grids[name].table}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, action="append", default=None,
                    help="policy.pt (default: the shipped checkpoint); repeat to compare several")
    ap.add_argument("--seeds", type=int, default=5, help="held-out evaluation seeds per scenario")
    ap.add_argument("--grid-seeds", type=int, default=2, help="seeds for the static grid search and slack tuning")
    ap.add_argument("--grid-caps", type=int, nargs="*", default=None,
                    help="caps of the static grid (default: uncapped only; caps never saved energy here)")
    ap.add_argument("--no-tuning", action="store_true", help="slack controller at its defaults (no tuning runs)")
    ap.add_argument("--splits", nargs="+", default=["default", "pessimistic"], help="power splits to report")
    ap.add_argument("--free-switching", action="store_true", help="clock changes cost nothing (the old simulator)")
    ap.add_argument("--only", nargs="*", default=None, metavar="SPEC",
                    help="no searches: static max clock, the DQN(s) and these controller specs only (the other "
                         "baselines: from an earlier run on the same seeds, which the simulator reproduces exactly)")
    ap.add_argument("--quick", action="store_true", help="short workloads, 2 seeds (a smoke run)")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    checkpoints = args.checkpoint or [SHIPPED_CHECKPOINT]
    meta = load_checkpoint(checkpoints[0], kind=CHECKPOINT_KIND)["metadata"]
    space = ActionSpace.from_dict(meta["action_space"])
    # every controller decides at the interval the DQN was trained with (one deployment, one control period)
    interval_s = float(meta.get("env", {}).get("interval_s", 1.0))
    dqns = [f"dqn:{c}" for c in checkpoints]
    report: dict[str, Any] = {"checkpoints": [str(c) for c in checkpoints], "interval_s": interval_s,
                              "free_switching": args.free_switching}
    for split in args.splits:
        report[split] = run_split(split, args, space, interval_s, dqns)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    for split in args.splits:
        per = report[split]["scenarios"]
        savings = [1.0 - r["energy_per_token_j"] / b["energy_per_token_j"] for n in per
                   for r, b in zip(per[n]["per_seed"][dqns[0]], per[n]["per_seed"]["static"], strict=True)]
        worst = min(per, key=lambda n: per[n]["aggregate"][dqns[0]]["slo_attainment"]["mean"])
        print(f"\nDQN, {split} split, over all scenarios: saving {np.mean(savings) * 100:.1f}% "
              f"(min run {np.min(savings) * 100:.1f}%); worst scenario SLO attainment "
              f"{per[worst]['aggregate'][dqns[0]]['slo_attainment']['mean'] * 100:.2f}% ({worst})")
    main_split = report[args.splits[0]]["scenarios"]
    savings = [1.0 - r["energy_per_token_j"] / b["energy_per_token_j"] for n in main_split
               for r, b in zip(main_split[n]["per_seed"][dqns[0]], main_split[n]["per_seed"]["static"], strict=True)]
    worst_slo = min(main_split[n]["aggregate"][dqns[0]]["slo_attainment"]["mean"] for n in main_split)
    print(f"energy_saving_vs_max_clock={np.mean(savings):.4f}")
    print(f"energy_slo_attainment={worst_slo:.4f}")


if __name__ == "__main__":
    main()
