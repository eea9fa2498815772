"""Vidur's request_metrics.csv: what we write reads back to the same records; Vidur-only columns are optional."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlserve.errors import InputError
from rlserve.policies import make_router
from rlserve.report.vidur import COLUMNS, REQUEST_ID, read_request_metrics, write_request_metrics
from rlserve.sim import ClusterConfig, ReplicaConfig, simulate
from rlserve.workload.request import Workload


def test_request_metrics_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = Workload.from_arrays(np.cumsum(rng.exponential(0.1, 60)), rng.integers(10, 500, 60),
                             rng.integers(2, 200, 60))
    res = simulate(ClusterConfig((ReplicaConfig(num_gpu_blocks=60, block_size=16),)), w,
                   make_router("round_robin", seed=0))
    assert res.records.preemptions.sum() > 0  # the restarts column carries something
    path = write_request_metrics(res.records, tmp_path / "request_metrics.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header == [REQUEST_ID, *COLUMNS]
    back = read_request_metrics(path)
    rec = res.records
    for name in ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(getattr(back, name), getattr(rec, name) - rec.arrival_s[0], atol=1e-9)
    np.testing.assert_array_equal(back.preemptions, rec.preemptions)
    np.testing.assert_array_equal(back.output_tokens, rec.output_tokens)


def test_reading_a_file_without_the_needed_columns_names_them(tmp_path: Path) -> None:
    p = tmp_path / "request_metrics.csv"
    p.write_text("Request Id,request_e2e_time\n0,1.5\n")
    with pytest.raises(InputError, match="missing columns"):
        read_request_metrics(p)
    p.write_text("Request Id,request_e2e_time,prefill_e2e_time,request_num_prefill_tokens,"
                 "request_num_decode_tokens,request_inter_arrival_delay\n0,1.5,x,10,5,0\n")
    with pytest.raises(InputError, match="row 2: prefill_e2e_time"):
        read_request_metrics(p)
