"""Energy-aware routing vs the latency routers on a heterogeneous cluster: J/token and latency side by side.

Each router serves the same requests (held-out seeds 0..N-1) of a heterogeneous scenario (default
``heterogeneous``: two H100 and two A40 replicas of Llama-2-7B) at the scenario's load and at lower loads,
where the choice of replica matters most for energy (idle replicas keep drawing idle power, busy ones differ in
joules per token). Columns: energy per token (all replicas, idle included), TTFT/TPOT p99, SLO attainment.

    python benchmarks/energy_routing.py --seeds 3 --loads 0.5 1.0
"""

from __future__ import annotations

import argparse

import numpy as np

from rlserve.experiments import run_router
from rlserve.metrics import Summary, mean_ci95
from rlserve.policies.energy_router import EnergyAwareRouter
from rlserve.scenario import Scenario, load_scenario
from rlserve.sim import ClusterSimulator

LATENCY_ROUTERS = ("round_robin", "least_outstanding", "join_shortest_queue", "power_of_two",
                   "least_expected_latency")


def run_energy_aware(scn: Scenario, seed: int) -> Summary:
    router = EnergyAwareRouter(scn.cluster, scn.slo)
    router.reset(seed)
    sim = ClusterSimulator(scn.cluster, scn.build_workload(seed), seed=seed)
    sim.run(router)
    return sim.finish().summary(scn.slo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="heterogeneous")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0], help="fractions of the scenario's qps")
    args = ap.parse_args()
    base = load_scenario(args.scenario)
    for load in args.loads:
        scn = base.with_qps(base.workload.arrival.qps * load)
        print(f"\n== {scn.name} at {load:g}x load ({scn.workload.arrival.qps:g} req/s), {args.seeds} seeds ==")
        print(f"{'router':<24} {'J/token':>9} {'TTFT p99 ms':>12} {'TPOT p99 ms':>12} {'SLO %':>8}")
        rows = {}
        for name in (*LATENCY_ROUTERS, "energy_aware"):
            summaries = [run_energy_aware(scn, s) if name == "energy_aware" else
                         run_router(scn, name, s).summary(scn.slo) for s in range(args.seeds)]
            ept = mean_ci95([s.energy_per_token_j for s in summaries])
            rows[name] = ept[0]
            print(f"{name:<24} {ept[0]:9.4f} {np.mean([s.ttft_s['p99'] for s in summaries]) * 1e3:12.0f} "
                  f"{np.mean([s.tpot_s['p99'] for s in summaries]) * 1e3:12.1f} "
                  f"{np.mean([s.slo_attainment for s in summaries]) * 100:8.2f}", flush=True)
        best = min(LATENCY_ROUTERS, key=rows.__getitem__)
        print(f"energy_aware vs the most frugal latency router ({best}): "
              f"{(1 - rows['energy_aware'] / rows[best]) * 100:.1f}% less energy per token")


if __name__ == "__main__":
    main()
