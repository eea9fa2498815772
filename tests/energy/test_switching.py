"""Clock-switching cost (transition model, per-run reporting), minimum dwell / hysteresis, the SLO-slack
controller and the pessimistic power split, on synthetic snapshots and short real-simulator runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from test_controllers import SPACE, ctx, replica

from rlserve.envs.energy_eval import control_context, run_metrics
from rlserve.envs.energy_sim import run_controller
from rlserve.errors import ConfigError
from rlserve.perf import ReplicaPerfModel, get_gpu, get_model
from rlserve.perf.frequency import get_power_split
from rlserve.policies.energy import EnergyDecision, make_controller
from rlserve.scenario import load_scenario
from rlserve.sim.clock_transition import DEFAULT_TRANSITION, FREE_TRANSITION, ClockTransition
from rlserve.snapshot import ClusterSnapshot, QueuedRequestView


class Flip:
    """A controller alternating between two clocks every decision (the worst case for switching cost)."""

    name = "flip"

    def __init__(self, clocks: tuple[float, float] = (1980.0, 1005.0)) -> None:
        self.clocks, self.i = clocks, 0

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        self.i += 1
        return EnergyDecision(256, self.clocks[self.i % 2])

    def reset(self, seed: int | None = None) -> None:
        self.i = 0


def test_transition_config_parses_and_validates(small_scenario: Path, tmp_path: Path) -> None:
    assert load_scenario(small_scenario).clock_transition == DEFAULT_TRANSITION  # on by default
    assert ClockTransition.from_dict("off").free and ClockTransition.from_dict(None) == DEFAULT_TRANSITION
    assert ClockTransition.from_dict({"stall_s": 0.1}) == ClockTransition(0.05, 0.1, 0.0)
    src = "s.yaml: clock_transition"
    bad = {  # wrong type, out of range, unknown key, not finite: one line naming the file and the key
        "stall_s: input should be a valid number, got 'slow'": {"stall_s": "slow"},
        "stall_s: input should be greater than or equal to 0, got -1": {"stall_s": -1},
        "unknown key 'delay'; allowed: energy_j, latency_s, stall_s": {"delay": 1},
        "energy_j: input should be a finite number": {"energy_j": float("inf")},
        "expected a mapping with keys latency_s, stall_s, energy_j, or 'off'": "on",
    }
    for message, section in bad.items():
        with pytest.raises(ConfigError) as err:
            ClockTransition.from_dict(section, where=src)
        assert str(err.value).startswith(f"{src}: {message}") and "\n" not in str(err.value)
    doc = yaml.safe_load(small_scenario.read_text())
    doc["clock_transition"] = {"latency_s": 0.02, "stall_s": 0.0, "energy_j": 1.5}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_scenario(path).clock_transition == ClockTransition(0.02, 0.0, 1.5)


def test_switching_cost_is_charged_and_reported(small_scenario: Path) -> None:
    scn = load_scenario(small_scenario)
    w = scn.build_workload(0)
    free = run_controller(Flip(), scn.cluster, w, scn.slo, interval_s=0.5, transition=FREE_TRANSITION)
    costly = run_controller(Flip(), scn.cluster, w, scn.slo, interval_s=0.5,
                            transition=ClockTransition(latency_s=0.05, stall_s=0.1, energy_j=5.0))
    m_free, m = run_metrics(free), run_metrics(costly)
    # every decision changes the clock: 120 changes a minute at 0.5 s, each 0.15 s in transition
    assert m["clock_changes_per_min"] == pytest.approx(120.0, rel=0.02)
    assert m["transition_time_frac"] == pytest.approx(0.3, rel=0.02)
    assert m_free["transition_time_frac"] == 0.0
    assert m_free["clock_changes_per_min"] == pytest.approx(m["clock_changes_per_min"], rel=0.02)
    # stalls cost time; the transition energy (5 J per change) is charged on top of the same run's energy
    assert costly.summary.ttft_s["p99"] > free.summary.ttft_s["p99"]
    no_joules = run_controller(Flip(), scn.cluster, w, scn.slo, interval_s=0.5,
                               transition=ClockTransition(latency_s=0.05, stall_s=0.1, energy_j=0.0))
    assert no_joules.clock_changes == costly.clock_changes
    assert costly.summary.energy_j - no_joules.summary.energy_j == pytest.approx(5.0 * costly.clock_changes)
    # a static controller never changes the clock: switching cost changes nothing at all
    static = [run_controller(make_controller("static", control_context(scn, SPACE)), scn.cluster, w, scn.slo,
                             transition=t).summary.energy_j for t in (FREE_TRANSITION, DEFAULT_TRANSITION)]
    assert static[0] == static[1]


def test_dwell_holds_the_clock_and_lets_raises_through() -> None:
    class Script:
        name = "script"

        def __init__(self, clocks: list[float]) -> None:
            self.clocks = clocks

        def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
            return EnergyDecision(64, self.clocks[int(snapshot.time_s)])

        def reset(self, seed: int | None = None) -> None:
            pass

    from rlserve.policies.energy.dwell import DwellController

    script = [1980.0, 1005.0, 1200.0, 900.0, 1980.0, 1965.0, 600.0, 600.0]
    c = DwellController(Script(script), min_dwell_s=2.0, hysteresis_mhz=100.0)
    got = [c.decide(ClusterSnapshot(float(t), 1, (replica(),)), 0).sm_clock_mhz for t in range(len(script))]
    # t=1 lowering held (dwell), t=2 allowed (2 s since t=0), t=3 held, t=4 raise passes at once (fast up),
    # t=5 is within the hysteresis, t=6 lowering allowed again (2 s since the raise at t=4)
    assert got == [1980.0, 1980.0, 1200.0, 1200.0, 1980.0, 1980.0, 600.0, 600.0]
    slow_up = DwellController(Script(script), min_dwell_s=2.0, fast_up=False)
    assert slow_up.decide(ClusterSnapshot(0.0, 1, (replica(),)), 0).sm_clock_mhz == 1980.0
    wrapped = make_controller("static:16@1200+dwell=2+hyst=50", ctx())
    assert wrapped.name == "static:16@1200+dwell=2+hyst=50"
    assert wrapped.decide(ClusterSnapshot(0.0, 1, (replica(),)), 0) == EnergyDecision(16, 1200.0)
    with pytest.raises(ConfigError, match="not understood"):
        make_controller("static+wait=3", ctx())


def test_slack_controller_raises_fast_and_lowers_slowly() -> None:
    c = make_controller("slack:0.3,0.6,3,1", ctx())
    clocks = sorted(SPACE.sm_clocks_mhz)
    gen = 0

    def at(t: float, *, tokens: int = 400, oldest_s: float = 0.0) -> float:
        nonlocal gen
        gen += tokens
        queue = (QueuedRequestView(oldest_s, 500, 0, 500, 100, 0),) if oldest_s else ()
        snap = ClusterSnapshot(t, 1, (replica(generated_tokens_total=gen, queue=queue),))
        return c.decide(snap, 0).sm_clock_mhz

    assert at(0.0) == clocks[-1]
    # 8 running, 400 tokens per second: 20 ms per token of a 50 ms SLO = pressure 0.4: hold
    assert at(1.0) == clocks[-1] and at(2.0) == clocks[-1]
    # 800 tokens per second (10 ms, pressure 0.2): calm; one step down per second of calm
    assert at(3.0, tokens=800) == clocks[-1]
    assert at(4.0, tokens=800) == clocks[-2] and at(5.0, tokens=800) == clocks[-3]
    # the oldest request has waited 1.6 s of a 2 s TTFT SLO: pressure 0.8, three steps up at once (capped)
    assert at(6.0, tokens=800, oldest_s=1.6) == clocks[-1]
    with pytest.raises(ConfigError, match="LOW,HIGH"):
        make_controller("slack:1,2", ctx())


def test_pessimistic_split_saves_less_and_slows_decode_more() -> None:
    def decode_ratio(split: str, mhz: float) -> tuple[float, float]:
        m = ReplicaPerfModel(get_gpu("h200"), get_model("llama-3-8b"), power_split=get_power_split(split))
        t_max, e_max = m.step_cost([], 64, 64 * 1500)
        m.set_sm_clock(mhz)
        t, e = m.step_cost([], 64, 64 * 1500)
        return t / t_max, e / e_max

    t_def, e_def = decode_ratio("default", 1005)
    t_pes, e_pes = decode_ratio("pessimistic", 1005)
    assert e_pes > e_def + 0.08 and t_pes > t_def
    assert 1 - min(decode_ratio("pessimistic", f)[1] for f in range(600, 1981, 15)) < 0.29
    with pytest.raises(ConfigError, match="power_split"):
        get_power_split("rosy")


def test_pessimistic_split_is_a_scenario_option(small_scenario: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load(small_scenario.read_text())
    doc["cluster"]["defaults"]["power_split"] = "pessimistic"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    pes, base = load_scenario(path), load_scenario(small_scenario)
    assert pes.cluster.replicas[0].power_split == "pessimistic"
    w = base.build_workload(0)
    e = {}
    for name, scn in (("base", base), ("pes", pes)):
        runs = [run_controller(make_controller(spec, control_context(scn, SPACE)), scn.cluster, w, scn.slo)
                for spec in ("static", "static:256@1005")]
        e[name] = 1 - runs[1].summary.energy_j / runs[0].summary.energy_j
    assert e["pes"] < e["base"]
    assert dataclasses.replace(base.cluster.replicas[0], power_split="default") == base.cluster.replicas[0]


def test_pareto_front_and_plot(tmp_path: Path) -> None:
    from rlserve.report.energy_plots import pareto_front, plot_pareto

    assert pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (0.5, 9.0)]) == [(0.5, 9.0), (1.0, 5.0), (2.0, 3.0)]
    point = {"energy_per_token_j": 0.03, "ttft_p99_s": 0.2, "tpot_p99_s": 0.02, "slo_attainment": 0.995}
    grid = {f"static:256@{f}": {**point, "energy_per_token_j": 0.02 + f / 1e5, "ttft_p99_s": 300 / f}
            for f in (900, 1200, 1980)}
    out = plot_pareto({"slack": point}, grid, tmp_path / "p.png", title="t")
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
