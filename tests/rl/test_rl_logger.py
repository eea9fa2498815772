import csv
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlserve.errors import InputError
from rlserve.rl.logger import CSVWriter, Logger, ParquetWriter, StdoutWriter, TensorBoardWriter


def test_record_mean_and_stdout():
    out = io.StringIO()
    log = Logger([StdoutWriter(out)])
    log.record("train/lr", 0.1)
    log.record_mean("train/loss", 1.0)
    log.record_mean("train/loss", 3.0)
    assert log.dump(step=4) == {"train/lr": 0.1, "train/loss": 2.0}
    assert "step 4" in out.getvalue() and "train/loss" in out.getvalue()
    assert log.dump(step=5) == {}


def test_csv_fixed_schema_missing_values_and_resume(tmp_path):
    path = tmp_path / "m.csv"
    log = Logger([CSVWriter(path, ["a", "b"])])
    log.record("a", 1)
    log.record("b", 2)
    log.dump(1)
    log.record("a", 3)  # b missing in this dump: empty cell, columns unchanged
    log.dump(2)
    log.record("c", 1)
    with pytest.raises(KeyError, match="not in the CSV schema"):
        log.dump(3)
    log.close()
    resumed = CSVWriter(path)  # adopts the header of the existing file
    resumed.write({"b": 9.0}, {}, 4)
    resumed.close()
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows == [["step", "a", "b"], ["1", "1.0", "2.0"], ["2", "3.0", ""], ["4", "", "9.0"]]
    with pytest.raises(InputError, match="has columns"):
        CSVWriter(path, ["x"]).write({"x": 1.0}, {}, 5)


def test_parquet_schema(tmp_path):
    w = ParquetWriter(tmp_path / "m.parquet", ["a", "b"])
    w.write({"a": 1.0}, {}, 1)
    w.write({"a": 2.0, "b": 5.0}, {}, 2)
    w.close()
    table = pq.read_table(tmp_path / "m.parquet").to_pydict()
    assert table == {"step": [1.0, 2.0], "a": [1.0, 2.0], "b": [None, 5.0]}


def test_tensorboard_event_file_with_renamed_tags(tmp_path):
    log = Logger([TensorBoardWriter(tmp_path, rename={"train/": "PPO/", "rollout/reward": "Reward/"})])
    for step in range(3):
        log.record("train/entropy", 1.0 - step * 0.1)
        log.record("rollout/reward/total", -step)
        log.record_histogram("rollout/actions", np.array([0, 1, 1, 3]))
        log.dump(step)
    log.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert {"PPO/entropy", "Reward//total"} <= set(acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("PPO/entropy")] == pytest.approx([1.0, 0.9, 0.8])
    assert "rollout/actions" in acc.Tags()["histograms"]
