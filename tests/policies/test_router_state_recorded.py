"""StateBuilder gives bit-identical observations on recorded snapshots (it was restructured for speed).

``data/router_snapshots.json.gz`` holds 240 snapshots recorded from three simulated scenarios (queue views on,
preemptions, one single-replica cluster, some decisions without a request) and a 64-bit digest of each
observation the builder produced for them, per state layout, *before* the speed work (commit 3e997c8). A
checkpoint's behaviour depends on every bit of its input, so equal-up-to-rounding is not enough.
"""

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from rlserve.envs.router_state import StateBuilder
from rlserve.rl.config import StateConfig
from rlserve.snapshot import ClusterSnapshot, QueuedRequestView, ReplicaState
from rlserve.workload.request import Request

RECORDED = json.loads(gzip.decompress((Path(__file__).parent / "data" / "router_snapshots.json.gz").read_bytes()))


def _view(q: dict) -> QueuedRequestView:
    """A recorded queue view; recorded before the field was named for what it holds (``output_tokens`` then)."""
    q = dict(q)
    q["max_tokens"] = q.pop("output_tokens", q.get("max_tokens"))
    return QueuedRequestView(**q)


def _snapshot(d: dict) -> tuple[ClusterSnapshot, Request | None]:
    reps = tuple(ReplicaState(**{**r, "queue": tuple(_view(q) for q in r["queue"])}) for r in d["replicas"])
    # recorded with the prefix id and length that requests carried then (the builder never read them)
    request = None if d["request"] is None else Request(*d["request"][:4])
    return ClusterSnapshot(d["time_s"], len(reps), reps, d["arrivals_total"]), request


def _digest(obs: np.ndarray) -> str:
    return hashlib.sha256(obs.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("layout", sorted(RECORDED["configs"]))
@pytest.mark.parametrize("run", RECORDED["runs"], ids=lambda r: r["scenario"])
def test_observations_are_bit_identical_to_the_recorded_ones(run, layout):
    decisions = [_snapshot(d) for d in run["decisions"]]
    builder = StateBuilder(decisions[0][0].num_replicas, StateConfig(**RECORDED["configs"][layout]))
    for i, ((snapshot, request), expected) in enumerate(zip(decisions, run["expected"][layout], strict=True)):
        obs = builder.build(snapshot, request)
        assert obs.dtype == np.float64 and obs.shape == (builder.get_state_dimension(),)
        assert _digest(obs) == expected, f"{run['scenario']}, layout {layout}: observation {i} changed"
