"""Running policies over (scenario x seed) and aggregating the results: one implementation for every verb.

``rlserve simulate``, ``compare``, ``evaluate router``, the benchmarks and (later) Ray tasks all call these
functions, so a number printed by one of them is the number the others would print for the same seeds. Nothing
here prints: progress is reported through an optional ``rich.progress.Progress``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from rich.progress import Progress

from rlserve.metrics import Summary, mean_ci95
from rlserve.scenario import Scenario, load_scenario
from rlserve.sim import ClusterSimulator, SimResult

HEURISTICS = ("random", "round_robin", "least_outstanding", "join_shortest_queue", "least_kv", "power_of_two",
              "least_expected_latency", "prefix_affinity", "llmd", "lmetric", "loadaware")
"""Every registered heuristic router, in the order tables show them."""

COLUMNS: tuple[tuple[str, Any], ...] = (
    ("finished", lambda s: s.num_finished),
    ("rejected", lambda s: (s.extra or {}).get("rejected", 0)),
    ("TTFT p50 ms", lambda s: s.ttft_s["p50"] * 1e3),
    ("TTFT p99 ms", lambda s: s.ttft_s["p99"] * 1e3),
    ("TPOT p99 ms", lambda s: s.tpot_s["p99"] * 1e3),
    ("E2E mean s", lambda s: s.e2e_s["mean"]),
    ("E2E p99 s", lambda s: s.e2e_s["p99"]),
    ("tok/s", lambda s: s.output_token_throughput_per_s),
    ("SLO %", lambda s: s.slo_attainment * 100),
    ("J/tok", lambda s: s.energy_per_token_j),
    ("preempt", lambda s: s.preemptions_total),
    ("prefix hit %", lambda s: (s.extra or {}).get("prefix_hit_rate", 0.0) * 100),
)
"""(label, getter) pairs of the standard comparison columns; seconds are shown in ms where the label says so."""


LOWER_IS_BETTER = ("TTFT p50 ms", "TTFT p99 ms", "TPOT p99 ms", "E2E mean s", "E2E p99 s", "J/tok", "preempt")
HIGHER_IS_BETTER = ("finished", "tok/s", "SLO %")
"""The columns a router is judged on, by direction (``rejected`` and ``prefix hit %`` are context, not goals)."""


def best_per_metric(aggregated: dict[str, dict[str, dict[str, float]]],
                    candidates: Sequence[str]) -> dict[str, str]:
    """For every judged column, the candidate router with the best mean (ties: the first listed)."""
    out = {}
    present = [r for r in candidates if r in aggregated]
    for col in (*LOWER_IS_BETTER, *HIGHER_IS_BETTER):
        sign = 1.0 if col in LOWER_IS_BETTER else -1.0
        values = [sign * aggregated[r][col]["mean"] for r in present]
        out[col] = present[values.index(min(values))]
    return out


def gains_vs_best(ours: dict[str, dict[str, float]], aggregated: dict[str, dict[str, dict[str, float]]],
                  best: dict[str, str]) -> dict[str, float]:
    """Relative gain of ``ours`` over the best router of each column, positive = ours is better
    (``1 - ours / best`` where lower is better, ``ours / best - 1`` where higher is better)."""
    out = {}
    for col, router in best.items():
        theirs, mine = aggregated[router][col]["mean"], ours[col]["mean"]
        if not theirs:
            out[col] = 0.0 if not mine else (-math.inf if col in LOWER_IS_BETTER else math.inf)
        else:
            out[col] = 1.0 - mine / theirs if col in LOWER_IS_BETTER else mine / theirs - 1.0
    return out


def runnable_routers(scn: Scenario, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``names`` split into the routers that can route ``scn``'s cluster and, for the others, why not."""
    from rlserve.errors import RlserveError
    from rlserve.policies import make_router
    from rlserve.policies.base import check_fits

    ok, skipped = [], {}
    for name in names:
        try:
            check_fits(make_router(name, seed=0), len(scn.cluster.replicas))
            ok.append(name)
        except RlserveError as exc:
            skipped[name] = str(exc)
    return ok, skipped


def prepare_scenario(scenario: str, num_requests: int | None = None, qps: float | None = None,
                     batching: str | None = None) -> Scenario:
    """Load a scenario and apply the common command-line overrides."""
    scn = load_scenario(scenario)
    if num_requests is not None:
        scn = scn.with_num_requests(num_requests)
    if qps is not None:
        scn = scn.with_qps(qps)
    if batching is not None:
        scn = dataclasses.replace(scn, cluster=scn.cluster.with_replicas(batching=batching))
    return scn


def run_router(scn: Scenario, router_spec: str, seed: int, progress: Progress | None = None, *,
               timeline: bool = False) -> SimResult:
    """Simulate ``scn`` with seed ``seed`` routed by ``router_spec``; advances ``progress`` per request
    (``timeline``: record the per-iteration timeline in the result)."""
    from rlserve.policies import make_router

    router = make_router(router_spec, seed=seed)
    workload = scn.build_workload(seed)
    sim = ClusterSimulator(scn.cluster, workload, seed=seed, timeline=timeline)
    task = progress.add_task(f"{router_spec} seed {seed}", total=len(workload)) if progress else None
    chunk = 2000
    for start in range(0, len(workload), chunk):
        stop = min(start + chunk, len(workload))
        until = float(workload.arrival_s[stop]) if stop < len(workload) else None
        sim.run(router, until_s=until)
        if progress is not None and task is not None:
            progress.update(task, completed=stop)
    if progress is not None and task is not None:
        progress.remove_task(task)
    return sim.finish()


def compare_routers(scn: Scenario, routers: list[str], seeds: list[int],
                    progress: Progress | None = None) -> dict[str, list[Summary]]:
    """Every router on every seed (same workloads for all routers)."""
    out: dict[str, list[Summary]] = {r: [] for r in routers}
    overall = progress.add_task("all runs", total=len(routers) * len(seeds)) if progress else None
    for seed in seeds:
        for r in routers:
            out[r].append(run_router(scn, r, seed, progress).summary(scn.slo))
            if progress is not None and overall is not None:
                progress.advance(overall)
    return out


def aggregate(summaries: list[Summary]) -> dict[str, dict[str, float]]:
    """Mean and 95% CI half-width over seeds for every standard column."""
    agg = {}
    for name, get in COLUMNS:
        mean, half = mean_ci95([float("nan") if get(s) is None else get(s) for s in summaries])
        agg[name] = {"mean": mean, "ci95": half}
    return agg
