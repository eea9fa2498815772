"""Discrete-event simulator of a vLLM cluster (the environment every policy trains in)."""

from rlserve.sim.cluster import ClusterSimulator, ReplicaStats, SimResult, build_perf_model, simulate
from rlserve.sim.config import BATCHING_MODES, ClusterConfig, ReplicaConfig

__all__ = [
    "BATCHING_MODES",
    "ClusterConfig",
    "ClusterSimulator",
    "ReplicaConfig",
    "ReplicaStats",
    "SimResult",
    "build_perf_model",
    "simulate",
]
