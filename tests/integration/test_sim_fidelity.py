"""Calibrate the simulator on a real vLLM (CPU) server and check it predicts a held-out request stream.

The small version of benchmarks/sim_fidelity.py: a short profiling design (lone prefills, decode batches) fitted
by least squares, written as a calibration file, referenced from a scenario's ``perf:`` section; then a held-out
Poisson stream replayed against the server and simulated with the actual send times. The bound is loose (the CI
machine has 2 shared cores); what must hold is that calibration brings the prediction closer than the GPU
catalogue's defaults for the same model (measured here: E2E p50 -28% calibrated, -73% with the defaults).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from rlserve.bench.calibrate import calibrate_server, model_spec
from rlserve.bench.fidelity import (
    WorkloadSpec,
    make_stream,
    real_side,
    relative_errors,
    replica_config,
    run_real,
    sim_side,
    simulate_stream,
)
from rlserve.bench.profile import ProfileDesign
from rlserve.perf.config import load_calibration
from rlserve.scenario import load_scenario
from rlserve.sim import ReplicaConfig


def test_calibrated_simulator_predicts_a_held_out_stream(vllm_server, tiny_model_dir: Path, tmp_path: Path) -> None:
    design = ProfileDesign(prefill_sizes=(16, 256, 1024), prefill_repeats=2, decode_batches=(1, 4, 8),
                           decode_contexts=(32, 512), decode_tokens=32, decode_repeats=2, budget_s=90.0)
    cal = calibrate_server(vllm_server.url, model_spec(str(tiny_model_dir)), design=design)
    assert cal.profile.complete and cal.fit is not None, cal.profile.missing
    assert cal.profile.block_size == 32 and cal.profile.num_gpu_blocks == 8192  # from /metrics
    path = cal.write(tmp_path / "calib.json", source="integration test")
    assert load_calibration(path)["complete"] is True

    # the file works from a scenario's perf: section
    scenario = {"cluster": {"replicas": [{"count": 1, "gpu": "h100", "model": str(tiny_model_dir / "config.json"),
                                          "block_size": 32, "num_gpu_blocks": 8192, "max_num_seqs": 16,
                                          "max_model_len": 2048, "perf": {"calibration": "calib.json"}}]},
                "workload": {"num_requests": 20, "arrival": {"kind": "poisson", "qps": 2},
                             "lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 20}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    calibrated = load_scenario(tmp_path / "s.yaml").cluster.replicas[0]
    assert calibrated.perf.knobs()["iteration_overhead_s"] == cal.fit.knobs["iteration_overhead_s"]

    spec = WorkloadSpec("held_out", 30, prompt=(32, 400), output=(8, 48), load=1.0)
    stream = make_stream(spec, rate=2.0, seed=5)
    start, traces = run_real(vllm_server.url, vllm_server.model_name, stream)
    real, sent = real_side(start, traces)
    twin = replica_config(path, tiny_model_dir / "config.json", num_gpu_blocks=8192, block_size=32,
                          max_num_seqs=16, max_num_batched_tokens=2048, max_model_len=2048)
    err = relative_errors(sim_side(simulate_stream([twin], stream, sent)), real)
    # the uncalibrated catalogue H100 for the same model
    default = ReplicaConfig(gpu="h100", model=str(tiny_model_dir / "config.json"), block_size=32,
                            num_gpu_blocks=8192, max_num_seqs=16, max_num_batched_tokens=2048, max_model_len=2048)
    err_default = relative_errors(sim_side(simulate_stream([default], stream, sent)), real)
    print(f"calibrated E2E p50 error {err['e2e_p50']:+.1%}, TTFT p50 {err['ttft_p50']:+.1%}; "
          f"catalogue defaults {err_default['e2e_p50']:+.1%}, {err_default['ttft_p50']:+.1%}")
    assert abs(err["e2e_p50"]) < 0.6 and abs(err["e2e_p50"]) < abs(err_default["e2e_p50"])
    assert np.isfinite(err["ttft_p50"]) and abs(err["ttft_p50"]) < abs(err_default["ttft_p50"])
