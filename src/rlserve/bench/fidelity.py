"""Simulator fidelity against a real server: send one timed request stream to the server and to the calibrated
simulator, and compare TTFT, per-token ITL and E2E percentiles.

Shared by ``benchmarks/sim_fidelity.py``, ``benchmarks/sim_to_real_routing.py`` and the integration tests. The
simulator gets the real run's *actual* send times (client lag included), so both sides see the same arrivals; a
request's prompt is random token ids, distinct per request except for the shared prefix of a prefix group, so
vLLM's prefix cache hits exactly where the simulator's ``prefix_id`` says it does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlserve.bench.profile import TOKEN_ID_RANGE, StreamTrace, replay
from rlserve.metrics import RequestRecords, Slo, distribution
from rlserve.perf.config import PerfConfig
from rlserve.policies import make_router
from rlserve.sim import ClusterConfig, ClusterSimulator, ReplicaConfig, SimResult
from rlserve.sim.replica import PerfModel
from rlserve.workload import arrivals
from rlserve.workload.request import Workload

METRICS = ("ttft", "itl", "e2e")
PCTS = ("p50", "p90", "p99")


@dataclass(frozen=True)
class WorkloadSpec:
    """A held-out request stream: lengths uniform in the given ranges, arrivals at ``load`` x the simulated
    capacity (Poisson, or gamma with shape ``burstiness`` < 1 for bursts), optional shared prefixes."""

    name: str
    num_requests: int
    prompt: tuple[int, int]
    output: tuple[int, int]
    load: float  # fraction of the saturation throughput (the real server's, measured, in the benchmarks)
    burstiness: float = 1.0
    num_prefixes: int = 0
    prefix_tokens: int = 0
    note: str = ""


@dataclass
class Stream:
    """The concrete requests of one workload and seed."""

    prompts: list[list[int]]
    outputs: np.ndarray
    arrival_s: np.ndarray
    prefix_id: np.ndarray
    prefix_tokens: np.ndarray
    rate: float = 0.0


def make_stream(spec: WorkloadSpec, rate: float, seed: int) -> Stream:
    """Prompts (token ids), outputs and arrival times of ``spec`` at ``rate`` requests/s."""
    rng = np.random.default_rng(seed)
    n = spec.num_requests
    lo, hi = TOKEN_ID_RANGE
    plen = rng.integers(spec.prompt[0], spec.prompt[1] + 1, n)
    outputs = rng.integers(spec.output[0], spec.output[1] + 1, n)
    prefixes = [rng.integers(lo, hi, spec.prefix_tokens).tolist() for _ in range(spec.num_prefixes)]
    pid = rng.integers(0, spec.num_prefixes, n) if spec.num_prefixes else np.full(n, -1)
    prompts = [(prefixes[p] if p >= 0 else []) + rng.integers(lo, hi, int(k)).tolist() for p, k in zip(pid, plen,
                                                                                                   strict=True)]
    if spec.burstiness == 1.0:
        at = arrivals.poisson(rate, n, rng)
    else:
        at = arrivals.gamma(rate, spec.burstiness, n, rng)
    ptok = np.where(pid >= 0, spec.prefix_tokens, 0)
    return Stream(prompts, outputs.astype(np.int64), np.asarray(at, dtype=np.float64), pid.astype(np.int64),
                  ptok.astype(np.int64), rate)


def replica_config(calibration: str | Path, model_config: str | Path, *, num_gpu_blocks: int, block_size: int,
                   max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int) -> ReplicaConfig:
    """The simulated twin of a vLLM V1 server (chunked prefill, prefix caching on, as vLLM defaults)."""
    return ReplicaConfig(gpu="h100-sxm", model=str(model_config), block_size=block_size, num_gpu_blocks=num_gpu_blocks,
                         max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                         max_model_len=max_model_len, batching="chunked", enable_prefix_caching=True,
                         perf=PerfConfig(calibration=str(calibration)))


def simulate_stream(replicas: list[ReplicaConfig], stream: Stream, arrival_s: np.ndarray,
                    router: str = "round_robin", perf_models: list[PerfModel] | None = None) -> SimResult:
    """The simulator on the same requests, arriving at ``arrival_s`` (in request order; the result's rows are in
    arrival order)."""
    order = np.argsort(arrival_s, kind="stable")
    w = Workload(arrival_s=arrival_s[order] - arrival_s.min(),
                 prompt_tokens=np.array([len(stream.prompts[i]) for i in order], dtype=np.int64),
                 output_tokens=stream.outputs[order], max_tokens=stream.outputs[order],  # sent as max_tokens
                 prefix_id=stream.prefix_id[order],
                 prefix_tokens=stream.prefix_tokens[order])
    sim = ClusterSimulator(ClusterConfig(tuple(replicas)), w, perf_models=perf_models)
    sim.run(make_router(router, seed=0))
    return sim.finish()


def saturation_rate(replicas: list[ReplicaConfig], spec: WorkloadSpec, seed: int = 0,
                    perf_models: list[PerfModel] | None = None) -> float:
    """Requests/s the simulated cluster completes when every request of ``spec`` arrives at once."""
    s = make_stream(spec, 1.0, seed)
    res = simulate_stream(replicas, s, np.zeros(spec.num_requests), "least_outstanding", perf_models)
    return float(spec.num_requests / res.duration_s)


@dataclass
class Side:
    """TTFT, ITL and E2E percentiles of one run (seconds)."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)


def real_side(start: float, traces: list[StreamTrace]) -> tuple[Side, np.ndarray]:
    """Percentiles of a real run, and its actual send offsets (the simulator's arrivals)."""
    send = np.array([t.send_s for t in traces])
    ttft = np.array([t.first_token_s - t.send_s for t in traces])
    e2e = np.array([t.finish_s - t.send_s for t in traces])
    gaps = np.array([g for t in traces for g in t.token_gaps()])
    side = Side({"ttft": distribution(ttft), "e2e": distribution(e2e), "itl": distribution(gaps)})
    return side, send - start


def sim_side(result: SimResult) -> Side:
    """The same percentiles from a simulation."""
    s = result.summary(Slo())
    return Side({"ttft": s.ttft_s, "e2e": s.e2e_s, "itl": s.itl_s or {}})


def relative_errors(sim: Side, real: Side) -> dict[str, float]:
    """``(sim - real) / real`` per metric and percentile, keys like ``ttft_p50`` (NaN where real is 0)."""
    return {f"{m}_{p}": ((sim.values[m][p] - real.values[m][p]) / real.values[m][p] if real.values[m][p] > 0
                         else float("nan")) for m in METRICS for p in PCTS}


def measure_capacity(url: str, model: str, spec: WorkloadSpec, seed: int) -> tuple[float, Stream, float,
                                                                                   list[StreamTrace]]:
    """Requests/s the real server completes when every request of ``spec`` arrives at once (its saturation
    throughput for this mix); also returns the stream and the replay (a calibration stream of its own)."""
    stream = make_stream(spec, 1.0, seed)
    stream.arrival_s = np.zeros(spec.num_requests)
    start, traces = run_real(url, model, stream)
    return spec.num_requests / (max(t.finish_s for t in traces) - start), stream, start, traces


def run_real(url: str, model: str, stream: Stream) -> tuple[float, list[StreamTrace]]:
    """Replay ``stream`` against a live server (see :func:`rlserve.bench.profile.replay`)."""
    return asyncio.run(replay(url, model, stream.prompts, stream.outputs.tolist(), stream.arrival_s.tolist()))


def records_of(start: float, traces: list[StreamTrace], prompts: list[int], replica: np.ndarray) -> RequestRecords:
    """Request records of a real replay (for summaries beside simulated ones)."""
    send = np.array([t.send_s for t in traces]) - start
    n = len(traces)
    return RequestRecords(
        arrival_s=send, prompt_tokens=np.asarray(prompts, np.int64),
        output_tokens=np.array([sum(k for _, k in t.chunks) for t in traces], np.int64), replica=replica,
        first_scheduled_s=np.full(n, np.nan), first_token_s=np.array([t.first_token_s for t in traces]) - start,
        finish_s=np.array([t.finish_s for t in traces]) - start, preemptions=np.zeros(n, np.int64),
        energy_j=np.full(n, np.nan))


def fresh_tokens(stream: Stream, seed: int) -> Stream:
    """The same lengths, prefix groups and arrivals with new token ids (a repeat must not hit the server's prefix
    cache with the previous repeat's prompts)."""
    rng = np.random.default_rng(seed)
    lo, hi = TOKEN_ID_RANGE
    groups = {int(p): rng.integers(lo, hi, int(k)).tolist()
              for p, k in zip(stream.prefix_id, stream.prefix_tokens, strict=True) if p >= 0}
    prompts = []
    for prompt, p, k in zip(stream.prompts, stream.prefix_id, stream.prefix_tokens, strict=True):
        head = groups[int(p)] if p >= 0 else []
        prompts.append(head + rng.integers(lo, hi, len(prompt) - int(k)).tolist())
    return Stream(prompts, stream.outputs, stream.arrival_s, stream.prefix_id, stream.prefix_tokens, stream.rate)
