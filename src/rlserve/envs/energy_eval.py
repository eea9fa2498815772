"""Evaluating energy controllers on held-out workloads, the static grid search and the block-size sweep.

Every controller runs through :func:`~rlserve.envs.energy_sim.run_controller` on the same workloads (seeds
below :data:`~rlserve.envs.energy_env.TRAIN_WORKLOAD_SEED_MIN`, never used in training), so differences are the
controllers'. Per seed a run reports energy per token (the simulator's GPU energy over the whole run, idle
included, per prompt + output token), SLO attainment, p99 TTFT/TPOT/E2E and the mean clock and cap; across seeds
the mean and its 95% confidence half-width (:func:`rlserve.metrics.mean_ci95`). Each (controller x seed) run is
an independent cell that :func:`rlserve.parallel.map_cells` runs in this process or as a Ray task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlserve.envs.energy_env import TRAIN_WORKLOAD_SEED_MIN
from rlserve.envs.energy_sim import ControlRun, run_controller
from rlserve.errors import ConfigError
from rlserve.metrics import mean_ci95
from rlserve.parallel import IN_PROCESS, Parallel, map_cells
from rlserve.policies.energy.action_space import ActionSpace
from rlserve.policies.energy.base import ControlContext, make_controller
from rlserve.scenario import Scenario
from rlserve.sim import build_perf_model

#: What each run reports (keys of :func:`run_metrics`), in table order.
METRICS = ("energy_per_token_j", "energy_per_output_token_j", "slo_attainment", "ttft_p99_s", "tpot_p99_s",
           "e2e_p99_s", "mean_sm_clock_mhz", "mean_concurrency_cap", "output_tokens_per_s",
           "clock_changes_per_min", "cap_changes_per_min", "transition_time_frac")


def control_context(scenario: Scenario, action_space: ActionSpace, interval_s: float = 1.0) -> ControlContext:
    """What controllers know about the scenario's server (a fresh perf model: EAIS changes its clock)."""
    replica = scenario.cluster.replicas[0]
    return ControlContext(action_space=action_space, slo=scenario.slo, max_num_seqs=replica.max_num_seqs,
                          interval_s=interval_s, perf=build_perf_model(replica))


def run_metrics(run: ControlRun) -> dict[str, float]:
    """The per-run numbers of :data:`METRICS`."""
    s = run.summary
    return {
        "energy_per_token_j": _num(s.energy_per_token_j),
        "energy_per_output_token_j": _num(s.energy_per_output_token_j),
        "slo_attainment": s.slo_attainment,
        "ttft_p99_s": s.ttft_s["p99"],
        "tpot_p99_s": s.tpot_s["p99"],
        "e2e_p99_s": s.e2e_s["p99"],
        "mean_sm_clock_mhz": run.trace.time_weighted_mean("sm_clock_mhz"),
        "mean_concurrency_cap": run.trace.time_weighted_mean("concurrency_cap"),
        "output_tokens_per_s": s.output_token_throughput_per_s,
        **run.switching(),
    }


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)


@dataclass
class ControllerResult:
    """One controller on one scenario over several seeds."""

    controller: str
    per_seed: list[dict[str, float]] = field(default_factory=list)
    runs: list[ControlRun] = field(default_factory=list)

    def aggregate(self) -> dict[str, dict[str, float]]:
        """``{metric: {"mean": .., "ci95": ..}}`` over seeds."""
        out = {}
        for m in METRICS:
            mean, half = mean_ci95([r[m] for r in self.per_seed])
            out[m] = {"mean": mean, "ci95": half}
        return out


def check_eval_seeds(seeds: Sequence[int]) -> None:
    """Evaluation seeds must be below the training range, or the evaluation is not held out."""
    bad = [s for s in seeds if not 0 <= s < TRAIN_WORKLOAD_SEED_MIN]
    if bad:
        raise ConfigError(f"evaluation seeds {bad[:5]} fall in the training range; use seeds in "
                          f"[0, {TRAIN_WORKLOAD_SEED_MIN})")


@dataclass(frozen=True)
class ControllerCell:
    """One controller on one seed's workload of a scenario."""

    spec: str
    scenario: Scenario
    seed: int
    action_space: ActionSpace
    interval_s: float
    keep_run: bool


def run_controller_cell(cell: ControllerCell) -> tuple[dict[str, float], ControlRun | None]:
    """Run one cell (a Ray task body, or a plain call in this process): its metrics, and the run if asked for."""
    scn = cell.scenario
    controller = make_controller(cell.spec, control_context(scn, cell.action_space, cell.interval_s), seed=cell.seed)
    run = run_controller(controller, scn.cluster, scn.build_workload(cell.seed), scn.slo,
                         interval_s=cell.interval_s, seed=cell.seed, transition=scn.clock_transition)
    return run_metrics(run), (run if cell.keep_run else None)


def evaluate_controllers(specs: Sequence[str], scenario: Scenario, seeds: Sequence[int], *,
                         action_space: ActionSpace, interval_s: float = 1.0, keep_runs: bool = False,
                         on_run: Callable[[str, int, dict[str, float]], None] | None = None,
                         parallel: Parallel = IN_PROCESS) -> dict[str, ControllerResult]:
    """Run every controller spec (``static``, ``clipper``, ``eais``, ``static:C@F``, ``dqn:PATH``) on each seed.

    The (spec x seed) cells run in this process or as Ray tasks (``parallel``); either way the results are the same
    numbers, in the order of ``specs`` and ``seeds``. ``on_run(spec, seed, metrics)`` is called as each finishes.
    """
    check_eval_seeds(seeds)
    cells = [ControllerCell(spec, scenario, seed, action_space, interval_s, keep_runs)
             for spec in specs for seed in seeds]

    def done(i: int, out: tuple[dict[str, float], ControlRun | None]) -> None:
        if on_run is not None:
            on_run(cells[i].spec, cells[i].seed, out[0])

    outs = map_cells(run_controller_cell, cells, parallel, done)
    results = {spec: ControllerResult(spec) for spec in specs}
    for cell, (metrics, run) in zip(cells, outs, strict=True):
        results[cell.spec].per_seed.append(metrics)
        if run is not None:
            results[cell.spec].runs.append(run)
    return results


def savings_vs(results: Mapping[str, ControllerResult], baseline: str, metric: str = "energy_per_token_j",
               ) -> dict[str, dict[str, float]]:
    """Per controller: mean and 95% CI of the per-seed fractional saving ``1 - value / baseline value``."""
    base = [r[metric] for r in results[baseline].per_seed]
    out = {}
    for name, res in results.items():
        saving = [1.0 - r[metric] / b for r, b in zip(res.per_seed, base, strict=True)]
        mean, half = mean_ci95(saving)
        out[name] = {"mean": mean, "ci95": half}
    return out


@dataclass
class GridSearchResult:
    """The best spec of a search and the whole table (one row per spec tried, mean over seeds)."""

    best: str  # a controller spec, e.g. ``static:CAP@MHZ``
    slo_target: float
    table: list[dict[str, Any]]


def _row(spec: str, res: ControllerResult) -> dict[str, Any]:
    agg = res.aggregate()
    return {"controller": spec, "energy_per_token_j": agg["energy_per_token_j"]["mean"],
            "slo_attainment_mean": agg["slo_attainment"]["mean"],
            "slo_attainment_min": min(r["slo_attainment"] for r in res.per_seed),
            "ttft_p99_s": agg["ttft_p99_s"]["mean"], "tpot_p99_s": agg["tpot_p99_s"]["mean"]}


def pick_best(table: Sequence[dict[str, Any]], slo_target: float = 0.99) -> str:
    """The row with the lowest mean energy per token whose attainment on *every* seed meets ``slo_target``; if
    none does, the one closest to it (a baseline must exist even then)."""
    feasible = [row for row in table if row["slo_attainment_min"] >= slo_target]
    if not feasible:
        return str(max(table, key=lambda row: (row["slo_attainment_min"], -row["energy_per_token_j"]))["controller"])
    return str(min(feasible, key=lambda row: row["energy_per_token_j"])["controller"])


def search_specs(specs: Sequence[str], scenario: Scenario, seeds: Sequence[int], *, action_space: ActionSpace,
                 slo_target: float = 0.99, interval_s: float = 1.0,
                 on_run: Callable[[str, int, dict[str, float]], None] | None = None,
                 parallel: Parallel = IN_PROCESS) -> GridSearchResult:
    """Run every spec on every seed and pick the best (:func:`pick_best`): tuning any baseline's parameters.

    Search on seeds other than the evaluation seeds, or the tuned baseline is tuned on the test set.
    """
    results = evaluate_controllers(specs, scenario, seeds, action_space=action_space, interval_s=interval_s,
                                   on_run=on_run, parallel=parallel)
    table = [_row(spec, res) for spec, res in results.items()]
    return GridSearchResult(pick_best(table, slo_target), slo_target, table)


def grid_search_static(scenario: Scenario, seeds: Sequence[int], *, caps: Sequence[int],
                       clocks_mhz: Sequence[float], slo_target: float = 0.99, interval_s: float = 1.0,
                       action_space: ActionSpace | None = None, prune: bool = True,
                       on_run: Callable[[str, int, dict[str, float]], None] | None = None,
                       parallel: Parallel = IN_PROCESS) -> GridSearchResult:
    """The static (cap, clock) with the lowest mean energy per token whose SLO attainment on *every* seed meets
    ``slo_target`` (the best a fixed setting can do, chosen with hindsight on these seeds).

    With ``prune`` (default) each cap's clocks are not all run: attainment only falls as the clock does, so a
    bisection finds the lowest clock that meets the target (about log2 of the clocks), and the search then
    walks up from it while energy per token keeps falling (energy is U-shaped in the clock, so the cheapest
    feasible clock is the lowest one or just above it). ``prune=False`` runs the whole grid. ``on_run(spec, seed,
    metrics)`` reports progress. ``parallel`` fans the cells out (:func:`evaluate_controllers`): the whole grid at
    once without ``prune``, each bisection step's seeds with it (the steps depend on each other).
    """
    space = action_space or ActionSpace(tuple(sorted(set(caps))), tuple(sorted(set(clocks_mhz))))
    rows: dict[str, dict[str, Any]] = {}

    def row(cap: int, f: float) -> dict[str, Any]:
        spec = f"static:{cap}@{f:g}"
        if spec not in rows:
            rows[spec] = search_specs([spec], scenario, seeds, action_space=space, slo_target=slo_target,
                                      interval_s=interval_s, on_run=on_run, parallel=parallel).table[0]
        return rows[spec]

    clocks = sorted(set(clocks_mhz))
    if not prune:
        specs = [f"static:{cap}@{f:g}" for cap in caps for f in clocks]
        table = search_specs(specs, scenario, seeds, action_space=space, slo_target=slo_target,
                             interval_s=interval_s, on_run=on_run, parallel=parallel).table
        return GridSearchResult(pick_best(table, slo_target), slo_target, table)
    for cap in caps:
        lo, hi = 0, len(clocks) - 1  # invariant: clocks[hi] is feasible (or it is the max clock)
        if row(cap, clocks[hi])["slo_attainment_min"] < slo_target:
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if row(cap, clocks[mid])["slo_attainment_min"] >= slo_target:
                hi = mid
            else:
                lo = mid + 1
        k = hi
        while k + 1 < len(clocks) and row(cap, clocks[k + 1])["energy_per_token_j"] < row(cap, clocks[k])[
                "energy_per_token_j"]:
            k += 1
    table = list(rows.values())
    return GridSearchResult(pick_best(table, slo_target), slo_target, table)


def best_static_global(tables: Mapping[str, Sequence[dict[str, Any]]], slo_target: float = 0.99) -> str:
    """One static pair for every scenario: among the pairs searched in all of them and meeting ``slo_target`` on
    every seed of every scenario, the lowest mean (over scenarios) energy per token; if none, the pair whose
    worst attainment is highest."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for table in tables.values():
        for row in table:
            rows.setdefault(row["controller"], []).append(row)
    common = {spec: rs for spec, rs in rows.items() if len(rs) == len(tables)}
    if not common:
        raise ConfigError("no static pair was searched in every scenario")
    merged = [{"controller": spec, "energy_per_token_j": sum(r["energy_per_token_j"] for r in rs) / len(rs),
               "slo_attainment_min": min(r["slo_attainment_min"] for r in rs)} for spec, rs in common.items()]
    return pick_best(merged, slo_target)


def lowest_feasible_clock(table: Sequence[dict[str, Any]], cap: int, slo_target: float = 0.99) -> float | None:
    """The lowest clock of ``static:CAP@MHZ`` rows meeting ``slo_target`` on every seed (None: none does)."""
    clocks = [float(r["controller"].rpartition("@")[2]) for r in table
              if r["controller"].startswith(f"static:{cap}@") and r["slo_attainment_min"] >= slo_target]
    return min(clocks) if clocks else None


#: The SLO-slack controller's tuning grid (LOW,HIGH,UP_STEPS,CALM_S): hysteresis band, raise step and dwell.
SLACK_GRID = tuple(f"slack:{lo:g},{hi:g},{up},{calm:g}" for lo, hi in ((0.5, 0.8), (0.6, 0.9))
                   for up, calm in ((2, 2.0), (3, 1.0)))


def default_grid_caps(action_space: ActionSpace, scenario: Scenario) -> list[int]:
    """Caps a grid search tries: uncapped plus the space's three largest (smaller caps only queue requests and
    never saved energy in our scenarios; see docs/energy.md), to keep the search affordable."""
    max_seqs = scenario.cluster.replicas[0].max_num_seqs
    return sorted({max_seqs, *[c for c in action_space.concurrency_caps if c <= max_seqs][-3:]})


def best_by(results: Mapping[Any, ControllerResult], metric: str = "energy_per_token_j",
            slo_target: float = 0.99) -> Any:
    """The key whose mean ``metric`` is lowest among those meeting ``slo_target`` (mean attainment)."""
    ok = {k: r.aggregate() for k, r in results.items()}
    feasible = {k: a for k, a in ok.items() if a["slo_attainment"]["mean"] >= slo_target} or ok
    return min(feasible, key=lambda k: feasible[k][metric]["mean"])


def as_json(results: Mapping[str, ControllerResult]) -> dict[str, Any]:
    """Aggregates and per-seed numbers as plain data (write with ``rlserve.report.run_output.write_json``)."""
    return {name: {"aggregate": r.aggregate(), "per_seed": r.per_seed} for name, r in results.items()}
