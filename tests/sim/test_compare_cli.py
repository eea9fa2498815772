"""``rlserve compare`` and the comparison helpers: every heuristic judged, unfit routers reported and skipped."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.experiments import HEURISTICS, best_per_metric, gains_vs_best


def test_compare_skips_a_router_for_another_cluster_size_and_writes_the_rest(tmp_path, flat_ppo_checkpoint) -> None:
    """A flat PPO checkpoint is for 4 replicas; on a 2-replica scenario it is reported and skipped, and the
    heuristics are still compared, printed and written (it used to abort after running them all)."""
    ppo = f"ppo:{flat_ppo_checkpoint}"
    scenario = tmp_path / "two.yaml"
    scenario.write_text(
        "name: two\ncluster:\n  defaults: {model: llama-2-7b, gpu: a100-80gb}\n  replicas: [{count: 2}]\n"
        "workload:\n  num_requests: 60\n  arrival: {kind: poisson, qps: 4}\n"
        "  lengths: {kind: fixed, prompt_tokens: 200, output_tokens: 20}\n")
    out = tmp_path / "c.json"
    res = CliRunner().invoke(app, ["compare", "-s", str(scenario), "--routers", f"{ppo},least_outstanding,llmd",
                                   "--seeds", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    squeezed = "".join(res.output.split())  # the console wraps long lines (the path) anywhere
    assert "".join(f"skipped {ppo}: router 'ppo' routes over 4 replicas only".split()) in squeezed
    assert "best heuristic per metric" in res.output
    doc = json.loads(out.read_text())
    assert set(doc["routers"]) == {"least_outstanding", "llmd"} and set(doc["skipped"]) == {ppo}
    assert doc["routers"]["llmd"]["finished"]["mean"] == 60 and doc["routers"]["llmd"]["rejected"]["mean"] == 0
    assert doc["max_tokens"] == "fixed:2048"


def test_best_per_metric_takes_each_metric_from_its_own_winner() -> None:
    def agg(e2e: float, slo: float) -> dict[str, dict[str, float]]:
        cols = {c: 1.0 for c in ("TTFT p50 ms", "TTFT p99 ms", "TPOT p99 ms", "E2E p99 s", "J/tok", "preempt",
                                 "finished", "tok/s")}
        return {**{c: {"mean": v} for c, v in cols.items()}, "E2E mean s": {"mean": e2e}, "SLO %": {"mean": slo}}

    aggregated = {"a": agg(2.0, 90.0), "b": agg(3.0, 99.0), "ours": agg(2.5, 95.0)}
    best = best_per_metric(aggregated, ["a", "b"])
    assert (best["E2E mean s"], best["SLO %"]) == ("a", "b")
    gains = gains_vs_best(aggregated["ours"], aggregated, best)
    assert gains["E2E mean s"] == 1 - 2.5 / 2.0 and gains["SLO %"] == 95 / 99 - 1
    assert "least_expected_latency" in HEURISTICS and "llmd" in HEURISTICS
