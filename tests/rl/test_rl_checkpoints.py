import pickle

import numpy as np
import pytest
import torch

from rlserve.errors import InputError
from rlserve.rl.checkpoints import load_checkpoint, restore_rng_state, rng_state, save_checkpoint


def test_round_trip_with_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), eps=1e-5)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    env_rng = np.random.default_rng(7)
    env_rng.random()
    path = save_checkpoint(tmp_path / "ck.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                "rng": rng_state({"env": env_rng}), "step": 5}, kind="unit")
    expected_np, expected_torch = env_rng.random(), torch.rand(1)

    data = load_checkpoint(path, kind="unit")
    restore_rng_state(data["rng"], {"env": env_rng})
    assert env_rng.random() == expected_np
    assert torch.equal(torch.rand(1), expected_torch)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), eps=1e-5)
    opt2.load_state_dict(data["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1
    assert data["step"] == 5 and data["format_version"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"v": 1}, kind="unit")
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint(path, {"v": lambda: 0}, kind="unit")  # unpicklable payload fails mid-write
    assert load_checkpoint(path, kind="unit")["v"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_wrong_kind_missing_and_garbage_files(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {}, kind="dqn_energy")
    with pytest.raises(InputError, match="expected 'ppo_router'"):
        load_checkpoint(path, kind="ppo_router")
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", kind="x")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(bad, kind="x")
    with pytest.raises(InputError, match="no RNG state"):
        restore_rng_state(rng_state({}), {"env": np.random.default_rng()})
