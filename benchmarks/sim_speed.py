"""Simulator speed: simulated requests per wall-second on the Vidur reference workload.

Workload (issue 2): 4 replicas of CodeLlama-34B at TP2 on A100-80GB, Splitwise-conversation-like lengths
(lognormal, prompt mean 1155 / median 1020, output mean 211 / median 129), Poisson 12 QPS, prefill-priority
batching (Vidur's "vllm" scheduler), batch cap 128, block size 16, per-request metrics on, round-robin routing
(Vidur's default global scheduler). Vidur's event loop does ~650 simulated requests/s on this machine class.

Baseline measured in the same run: the same simulator with ``exact_steps=True`` (one engine iteration per
event, as Vidur steps), on the 1,000-request workload. Also reports a state-reading router
(least_outstanding), which builds a full snapshot at every arrival.

Usage: python benchmarks/sim_speed.py [--sizes 1000,10000,100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from rlserve.policies import make_router
from rlserve.scenario import scenario_from_dict
from rlserve.sim import ClusterSimulator

VIDUR_REQ_PER_S = 650.0  # reference figure for Vidur's event loop on this machine class (issue 2)

SCENARIO = {
    "name": "vidur_reference",
    "cluster": {
        "defaults": {"gpu": "a100-80gb", "model": "codellama-34b", "tp": 2, "batching": "prefill_priority",
                     "max_num_seqs": 128, "block_size": 16},
        "replicas": [{"count": 4}],
    },
    "workload": {
        "num_requests": 10_000,
        "arrival": {"kind": "poisson", "qps": 12.0},
        "lengths": {"kind": "lognormal", "prompt_mean": 1155, "prompt_median": 1020, "output_mean": 211,
                    "output_median": 129},
        "max_total_tokens": 16_384,
    },
}


def measure(n: int, router: str = "round_robin", *, exact_steps: bool = False, repeat: int = 3) -> tuple[float, int]:
    """Best-of-``repeat`` simulated requests per wall-second, and the number of requests that finished."""
    scn = scenario_from_dict(SCENARIO).with_num_requests(n)
    workload = scn.build_workload(0)
    best = 0.0
    finished = 0
    for _ in range(repeat):
        sim = ClusterSimulator(scn.cluster, workload, exact_steps=exact_steps)
        t0 = time.perf_counter()
        sim.run(make_router(router, seed=0))
        result = sim.finish()
        wall = time.perf_counter() - t0
        best = max(best, n / wall)
        finished = int(result.records.finished.sum())
    return best, finished


def main() -> None:
    """Print one line per measurement, the speed-up over the same-run baseline, then the headline figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    baseline, _ = measure(1000, exact_steps=True, repeat=1)
    print(f"baseline (one iteration per event), 1000 requests: {baseline:,.0f} req/s")
    results = {}
    for n in sizes:
        rps, finished = measure(n, repeat=args.repeat if n <= 10_000 else 1)
        results[n] = rps
        print(f"round_robin        {n:>7,} requests: {rps:>9,.0f} req/s  ({finished:,} finished; "
              f"{rps / baseline:.1f}x the stepping baseline, {rps / VIDUR_REQ_PER_S:.0f}x Vidur's ~650)")
    rps_lo, _ = measure(10_000, "least_outstanding", repeat=1)
    print(f"least_outstanding   10,000 requests: {rps_lo:>9,.0f} req/s  (snapshot read at every arrival)")
    headline = results.get(10_000, next(iter(results.values())))
    print(f"sim_speed_req_per_s={headline:.0f}")


if __name__ == "__main__":
    main()
