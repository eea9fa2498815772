"""The real energy loop against a real rlserve proxy over HTTP on 127.0.0.1, in front of the fake OpenAI server
(rlserve.testing; a vLLM CPU server is used in tests/integration/test_energy_vllm.py). Clocks go to a FAKE NVML
(tests/energy/fake_nvml.py: there is no GPU here and tests must never touch a real GPU's clocks)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_nvml import FakeNvml
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.envs.energy_eval import control_context
from rlserve.envs.energy_train import EnergyTrainConfig, train_energy
from rlserve.metrics import Slo
from rlserve.policies.energy import ActionSpace, ControlContext, EnergyDecision, make_controller
from rlserve.scenario import load_scenario
from rlserve.serve import ProxyConfig, ReplicaSpec, proxy_in_thread
from rlserve.serve.clock_actuator import ClockActuator
from rlserve.serve.energy_loop import EnergyLoop, ProxyAdmin, replica_state_from_json
from rlserve.snapshot import ClusterSnapshot, QueuedRequestView
from rlserve.telemetry.gpu import GpuSample, NullGpuMonitor
from rlserve.testing.fake_openai_server import FakeServerConfig, serve_in_thread

SPACE = ActionSpace.for_gpu(345.0, 1980.0, 15.0, num_clocks=6, concurrency_caps=(4, 8, 256))


class Script:
    """A controller that plays a fixed list of decisions and records what it saw."""

    name = "script"

    def __init__(self, decisions: list[EnergyDecision]) -> None:
        self.decisions, self.seen = decisions, []

    def reset(self, seed: int | None = None) -> None:
        self.seen.clear()

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        self.seen.append(snapshot)
        return self.decisions[min(len(self.seen) - 1, len(self.decisions) - 1)]


@pytest.fixture
def proxy_url() -> Iterator[str]:
    cfg = FakeServerConfig(tokens_per_response=40, inter_token_delay_s=0.01)
    with serve_in_thread(cfg) as server:
        proxy_cfg = ProxyConfig(replicas=(ReplicaSpec(server.base_url, max_num_seqs=64),), port=0,
                                health_interval_s=0.2, metrics_interval_s=0.2)
        with proxy_in_thread(proxy_cfg) as proxy:
            yield proxy.url


def load(url: str, n: int, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                http.post(url + "/v1/completions", json={"model": "fake-model", "prompt": "hi " * 50,
                                                          "max_tokens": 40})

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads[0]


def test_loop_sets_caps_in_the_proxy_and_clocks_via_nvml(proxy_url: str) -> None:
    nvml = FakeNvml(n_gpus=1)
    script = Script([EnergyDecision(4, 1200.0), EnergyDecision(8, 1000.0), EnergyDecision(8, 1000.0)])
    stop = threading.Event()
    load(proxy_url, 6, stop)
    admin = ProxyAdmin(proxy_url)
    try:
        loop = EnergyLoop(script, admin, ClockActuator([0], apply=True, nvml=nvml), NullGpuMonitor("test"),
                          interval_s=0.3)
        decisions = loop.run(duration_s=1.0)
        state = admin.replica_state(0)
    finally:
        stop.set()
        admin.close()
    assert len(decisions) >= 3
    assert [d.concurrency_cap for d in decisions[:2]] == [4, 8]
    assert state.concurrency_cap == 64  # the loop's cap is removed when it ends: the proxy is uncapped again
    sets = [c for c in nvml.calls if c[0] == "set"]
    assert sets == [("set", 0, 1200, 1200), ("set", 0, 990, 990)]  # changes only, snapped to supported clocks
    assert nvml.locked[0] is None  # restored when the loop ended
    later = script.seen[-1].replicas[0]
    assert later.sm_clock_mhz == 990.0 and later.completed_total > 0  # the controller sees what was set
    assert script.seen[-1].arrivals_total >= later.completed_total + later.num_running


def test_the_loop_gives_back_the_cap_the_replica_had_before_it(proxy_url: str) -> None:
    admin = ProxyAdmin(proxy_url)
    try:
        admin.set_concurrency_cap(0, 16)  # set by the operator before the controller starts
        loop = EnergyLoop(Script([EnergyDecision(4, 1200.0)]), admin, ClockActuator([0], nvml=FakeNvml(1)),
                          NullGpuMonitor("test"), interval_s=0.1)
        decisions = loop.run(duration_s=0.25)
        after = admin.concurrency_cap(0)
    finally:
        admin.close()
    assert decisions and decisions[0].concurrency_cap == 4
    assert after == 16


def test_gpu_monitor_fields_fill_energy_power_and_busy_time(proxy_url: str) -> None:
    class StubGpu:  # what GpuMonitor returns, without NVML
        samples = [GpuSample(0.0, (300.0,), (1000.0,), (50.0,), (10.0,), (1980.0,), (60.0,), (float("nan"),)),
                   GpuSample(0.1, (310.0,), (1031.0,), (100.0,), (10.0,), (1980.0,), (60.0,), (float("nan"),))]

        def current(self) -> GpuSample:
            return self.samples[-1]

        def trace(self, since_s: float | None = None) -> list[GpuSample]:
            return self.samples

    admin = ProxyAdmin(proxy_url)
    try:
        loop = EnergyLoop(Script([EnergyDecision(8, 1980.0)]), admin, ClockActuator([0], nvml=FakeNvml(1)),
                          StubGpu(), interval_s=1.0)  # type: ignore[arg-type]
        loop.snapshot()
        snap = loop.snapshot()
    finally:
        admin.close()
    r = snap.replicas[0]
    assert r.energy_j == 1031.0 and r.power_w == 310.0
    assert r.busy_s is not None and r.busy_s > 0  # 75% mean utilisation x elapsed time


def test_replica_state_json_round_trip() -> None:
    from rlserve.snapshot import ReplicaState

    state = ReplicaState(1, 2, 3, 100, 16, 64, 8, 0, 10, 20, 5, 50, 0.1, 1.0, 80.0, 9000.0, 1600, 1980.0,
                         queue=(QueuedRequestView(0.5, 10, 0, 10, 5, 0),))
    assert replica_state_from_json(dataclasses.asdict(state)) == state


def test_a_sim_trained_checkpoint_drives_the_real_loop(proxy_url: str, small_scenario: Path, tmp_path: Path) -> None:
    cfg = EnergyTrainConfig.from_dict({
        "env": {"scenarios": [str(small_scenario)], "caps": [4, 8, 256], "num_clocks": 6},
        "dqn": {"total_steps": 40, "learning_starts": 20, "batch_size": 8, "hidden_sizes": [16]}})
    train_energy(cfg, tmp_path / "run")
    scn = load_scenario(small_scenario)
    ctx = control_context(scn, SPACE)
    controller = make_controller(f"dqn:{tmp_path / 'run' / 'policy.pt'}", ctx)
    admin = ProxyAdmin(proxy_url)
    try:
        loop = EnergyLoop(controller, admin, ClockActuator([0], nvml=FakeNvml(1)), NullGpuMonitor("test"),
                          interval_s=0.2)
        decisions = loop.run(duration_s=0.5)
    finally:
        admin.close()
    assert decisions and all(d.concurrency_cap in (4, 8, 64) for d in decisions)  # 256 clipped to the replica's 64
    assert all(d.decision.sm_clock_mhz in SPACE.sm_clocks_mhz for d in decisions)
    assert not any(d.clock_applied for d in decisions)  # dry run


def test_cli_energy_run_dry_run(proxy_url: str) -> None:
    result = CliRunner().invoke(app, ["energy", "run", "--url", proxy_url, "--gpu-ids", "0", "--controller",
                                      "static:8@1200", "--duration-s", "0.6", "--interval-s", "0.2"])
    assert result.exit_code == 0, result.output
    assert "cap=   8 clock=  1200 MHz (dry run)" in result.output
    assert "clocks restored (none were changed)" in result.output


def test_cli_run_needs_one_policy(proxy_url: str) -> None:
    from rlserve.errors import ConfigError

    result = CliRunner().invoke(app, ["energy", "run", "--url", proxy_url, "--gpu-ids", "0"])
    assert isinstance(result.exception, ConfigError)


def test_context_helper_uses_the_scenario() -> None:
    scn = load_scenario("energy_steady")
    ctx = control_context(scn, SPACE)
    assert isinstance(ctx, ControlContext) and ctx.slo == Slo(ttft_s=1.0, tpot_s=0.04) and ctx.perf is not None
