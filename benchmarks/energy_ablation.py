"""Training ablations of the DQN energy controller, run in parallel (one torch thread per process).

Each variant is the shipped training config (``configs/train/energy.yaml``) with some keys overridden, trained
with its own budget, then scored on held-out workloads of every training scenario: seeds ``100..100+K-1``,
disjoint from training (>= 2**20), validation (700000+), the grid search (500000+) and the benchmark's
evaluation seeds (0..N-1), so choosing a variant here does not tune it on the numbers the benchmark reports.

    python benchmarks/energy_ablation.py variants.json --out runs/ablation --workers 14 --json summary.json

``variants.json`` maps a variant name to overrides with dotted keys, e.g.
``{"base": {}, "history": {"env.state.history": true}, "g95": {"env.state.history": true, "dqn.gamma": 0.95}}``.
Results are written to ``--json`` after every finished variant (a cut-short sweep keeps what finished).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlserve.envs.energy_env import build_action_space
from rlserve.envs.energy_eval import control_context, run_metrics
from rlserve.envs.energy_sim import run_controller
from rlserve.envs.energy_train import EnergyTrainConfig, load_train_config, train_energy
from rlserve.policies.energy import make_controller
from rlserve.scenario import load_scenario

ABLATION_SEED_BASE = 100


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a nested config dict) with dotted keys replaced, e.g. ``{"dqn.gamma": 0.95}``."""
    out = json.loads(json.dumps(base))
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def score(config: EnergyTrainConfig, policy: Path, seeds: int) -> dict[str, Any]:
    """Saving vs static max clock and SLO attainment of ``policy`` per scenario and overall."""
    per_scenario: dict[str, Any] = {}
    savings, slos = [], []
    for name in config.env.scenarios:
        scn = load_scenario(name)
        space = build_action_space(scn, config.env)
        s_list, a_list = [], []
        for seed in range(ABLATION_SEED_BASE, ABLATION_SEED_BASE + seeds):
            workload = scn.build_workload(seed)
            m = {}
            for spec in ("static", f"dqn:{policy}"):
                ctl = make_controller(spec, control_context(scn, space, config.env.interval_s), seed=seed)
                m[spec] = run_metrics(run_controller(ctl, scn.cluster, workload, scn.slo,
                                                     interval_s=config.env.interval_s, seed=seed,
                                                     transition=scn.clock_transition))
            s_list.append(1.0 - m[f"dqn:{policy}"]["energy_per_token_j"] / m["static"]["energy_per_token_j"])
            a_list.append(m[f"dqn:{policy}"]["slo_attainment"])
        per_scenario[name] = {"saving": float(np.mean(s_list)), "slo": float(np.mean(a_list))}
        savings += s_list
        slos += a_list
    return {"saving": float(np.mean(savings)), "slo": float(np.mean(slos)), "slo_min": float(np.min(slos)),
            "per_scenario": per_scenario}


def run_variant(job: tuple[str, dict[str, Any], dict[str, Any], Path, int]) -> tuple[str, dict[str, Any]]:
    """Train one variant and score its best.pt and its last policy.pt."""
    name, base, overrides, out_root, seeds = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    config = EnergyTrainConfig.from_dict(with_overrides(base, overrides))
    out = out_root / name
    try:
        result = train_energy(config, out)
        row: dict[str, Any] = {"overrides": overrides, "steps": result.steps, "train_s": result.wall_s}
        for which in ("best.pt", "policy.pt"):
            if (out / which).is_file():
                row[which] = score(config, out / which, seeds)
    except Exception as exc:  # noqa: BLE001 - a broken variant is reported, the others still run
        row = {"overrides": overrides, "error": f"{type(exc).__name__}: {exc}"}
    row["wall_s"] = time.perf_counter() - t0
    return name, row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", type=Path, help="JSON: {name: {dotted.key: value}}")
    ap.add_argument("--base", default="energy", help="training config to start from (name or path)")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--workers", type=int, default=max(1, mp.cpu_count() - 2))
    ap.add_argument("--seeds", type=int, default=3, help="held-out workloads per scenario")
    ap.add_argument("--json", type=Path, default=Path("ablation.json"))
    args = ap.parse_args()
    variants: dict[str, dict[str, Any]] = json.loads(args.variants.read_text())
    base = load_train_config(args.base).to_dict()
    jobs = [(name, base, ov, args.out, args.seeds) for name, ov in variants.items()]
    results: dict[str, Any] = {}
    with mp.get_context("spawn").Pool(min(args.workers, len(jobs))) as pool:
        for name, row in pool.imap_unordered(run_variant, jobs):
            results[name] = row
            args.json.write_text(json.dumps(results, indent=2))
            best = row.get("best.pt", {})
            print(f"{name}: saving {best.get('saving', float('nan')):.4f} slo {best.get('slo', float('nan')):.4f} "
                  f"({row['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
