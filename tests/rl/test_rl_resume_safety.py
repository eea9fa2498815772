"""Kill, resume and corrupt files: the checkpoint's config rules on resume, nothing is logged twice or lost,
stale temporary files go, and a checkpoint with NaN weights is refused instead of deployed."""

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rl_toy_env import ArgmaxEnv
from test_rl_ppo import _cfg

from rlserve.errors import BackendError, ConfigError, InputError
from rlserve.rl.checkpoints import load_checkpoint, save_checkpoint
from rlserve.rl.logger import CSVWriter, Logger, ParquetWriter, TensorBoardWriter
from rlserve.rl.ppo import train


def _envs(n=2):
    return [ArgmaxEnv for _ in range(n)]


def test_resuming_to_a_larger_total_is_bit_identical_to_a_straight_run(tmp_path):
    """6 updates, then --resume to 12 == 12 updates straight: every tensor of the checkpoint, and the CSV rows."""
    fixed_lr = {"anneal_lr": False}
    train(_cfg(total_updates=12, ppo=fixed_lr), _envs(), out_dir=tmp_path / "a")
    train(_cfg(total_updates=6, ppo=fixed_lr), _envs(), out_dir=tmp_path / "b")
    resumed = train(_cfg(total_updates=12, ppo=fixed_lr), _envs(), out_dir=tmp_path / "b", resume=True)
    assert resumed.updates == 12
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer", "obs_normalizer", "return_scaler", "rng"):
        flat_a, flat_b = _flatten(a[key]), _flatten(b[key])
        assert flat_a.keys() == flat_b.keys(), key
        for k in flat_a:
            assert _equal(flat_a[k], flat_b[k]), f"{key}.{k}"
    rows_a = list(csv.reader((tmp_path / "a" / "metrics.csv").read_text().splitlines()))
    rows_b = list(csv.reader((tmp_path / "b" / "metrics.csv").read_text().splitlines()))
    assert [r[0] for r in rows_b[1:]] == [str(u) for u in range(1, 13)]  # every update once
    skip = {rows_a[0].index(c) for c in rows_a[0] if c.startswith("time/")}  # wall-clock columns
    assert [[v for i, v in enumerate(r) if i not in skip] for r in rows_a] == \
        [[v for i, v in enumerate(r) if i not in skip] for r in rows_b]


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list | tuple):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_resume_refuses_a_changed_config_unless_overridden(tmp_path):
    train(_cfg(total_updates=2), _envs(), out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"differs from the one stored .*ppo.lr: 0.003 -> 0.001"):
        train(_cfg(total_updates=2, ppo={"lr": 1e-3}), _envs(), out_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="total_updates: 2 -> 4 \\(the schedule is relative to it"):
        train(_cfg(total_updates=4), _envs(), out_dir=tmp_path, resume=True)  # anneal_lr is on
    result = train(_cfg(total_updates=4, ppo={"lr": 1e-3}), _envs(), out_dir=tmp_path, resume=True,
                   allow_config_change=True)
    assert result.updates == 4


def test_csv_and_parquet_rows_after_the_last_checkpoint_are_not_duplicated(tmp_path):
    for writer_cls, path in ((CSVWriter, tmp_path / "m.csv"), (ParquetWriter, tmp_path / "m.parquet")):
        log = Logger([writer_cls(path, ["x"])])
        for step in range(1, 6):  # the killed run logged 5 steps, its last checkpoint was at step 3
            log.record("x", step)
            log.dump(step)
        log.close()
        log = Logger([writer_cls(path, ["x"])])
        log.discard_after(3)
        for step in (4, 5, 6):
            log.record("x", step * 10)
            log.dump(step)
        log.close()
        if writer_cls is CSVWriter:
            steps = [r[0] for r in csv.reader(path.read_text().splitlines())][1:]
        else:
            steps = [str(int(s)) for s in pq.read_table(path).column("step").to_pylist()]
        assert steps == ["1", "2", "3", "4", "5", "6"], writer_cls


def test_tensorboard_events_after_the_last_checkpoint_are_purged_on_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = Logger([TensorBoardWriter(tmp_path / "tb")])
    for step in range(1, 6):
        log.record("x", step)
        log.dump(step)
    log.close()
    log = Logger([TensorBoardWriter(tmp_path / "tb")])
    log.discard_after(3)
    for step in (4, 5, 6):
        log.record("x", step * 10)
        log.dump(step)
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50), (6, 60)]


def test_parquet_metrics_reach_the_disk_before_close(tmp_path):
    path = tmp_path / "m.parquet"
    writer = ParquetWriter(path, ["x"], flush_every=5)
    for step in range(12):
        writer.write({"x": float(step)}, {}, step)
    # no close(): a killed run loses at most flush_every - 1 rows
    assert pq.read_table(path).num_rows == 10
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_stale_temporary_file_of_a_killed_write_is_removed(tmp_path):
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".policy.pt.xyz.tmp"  # another checkpoint's temp file: not ours to delete
    other.write_bytes(b"x")
    save_checkpoint(tmp_path / "checkpoint.pt", {"v": 1}, kind="unit")
    assert not stale.exists() and other.exists()


def test_a_checkpoint_with_nan_weights_is_refused_on_load(tmp_path):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    path = save_checkpoint(tmp_path / "ck.pt", {"model": model.state_dict(), "best_score": -float("inf")},
                           kind="unit")
    with pytest.raises(InputError, match=r"non-finite numbers \(NaN or inf\) in model.weight"):
        load_checkpoint(path, kind="unit")
    ok = save_checkpoint(tmp_path / "ok.pt", {"model": torch.nn.Linear(3, 2).state_dict(),
                                              "best_score": -float("inf")}, kind="unit")
    assert load_checkpoint(ok, kind="unit")["best_score"] == -float("inf")  # non-finite metadata floats are fine


def test_non_finite_logits_at_run_time_are_a_clear_error():
    from rlserve.policies import make_router
    from rlserve.snapshot import ClusterSnapshot, ReplicaState
    from rlserve.workload.request import Request

    router = make_router("ppo")
    state = ReplicaState(**dict.fromkeys(
        ("num_waiting", "num_running", "kv_blocks_used", "kv_blocks_total", "block_size", "max_num_seqs",
         "concurrency_cap", "num_preemptions_total", "pending_prefill_tokens", "pending_decode_tokens",
         "completed_total", "generated_tokens_total", "recent_ttft_s", "recent_e2e_s", "decode_tokens_per_s",
         "prefill_tokens_per_s", "kv_capacity_tokens", "sm_clock_mhz"), 1))
    n = 4  # the shipped checkpoint routes any cluster size
    snap = ClusterSnapshot(0.0, n, (state,) * n)
    assert 0 <= router.select(Request(0, 0.0, 10, 10), snap) < n
    real_step = router.actor.step
    router.actor.step = lambda obs, h: (np.full(n, np.nan, np.float32), real_step(obs, h)[1])
    with pytest.raises(BackendError, match="non-finite logits"):
        router.select(Request(1, 0.0, 10, 10), snap)
