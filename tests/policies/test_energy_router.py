"""The energy-aware router: cheapest replica in marginal joules among those predicted to meet the SLO."""

from __future__ import annotations

import dataclasses

import numpy as np

from rlserve.metrics import Slo
from rlserve.policies.energy_router import EnergyAwareRouter
from rlserve.sim import ClusterConfig, ClusterSimulator, ReplicaConfig
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request, Workload

CLUSTER = ClusterConfig((ReplicaConfig(gpu="a40", model="llama-2-7b"),
                         ReplicaConfig(gpu="h100-sxm", model="llama-2-7b")))
SLO = Slo(ttft_s=2.0, tpot_s=0.1)


def test_prefers_the_efficient_gpu_and_spills_over_when_it_is_busy() -> None:
    router = EnergyAwareRouter(CLUSTER, SLO)
    router.reset(0)
    req = Request(0, 0.0, 1000, 200)
    # per token, the H100 replica costs fewer dynamic joules than the A40 one
    assert router.marginal_energy_j(1, 0, req, 200) < router.marginal_energy_j(0, 0, req, 200)
    w = Workload.from_arrays(np.array([0.0]), np.array([1000]), np.array([200]))
    sim = ClusterSimulator(CLUSTER, w)
    snap = sim.snapshot()
    assert router.select(req, snap) == 1
    # a prefill backlog on the H100 that would use up the TTFT budget sends the request to the A40
    h100 = snap.replicas[1]
    busy = dataclasses.replace(h100, pending_prefill_tokens=int(h100.prefill_tokens_per_s * 1.5))
    assert router.select(req, ClusterSnapshot(snap.time_s, 2, (snap.replicas[0], busy))) == 0
