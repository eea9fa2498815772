"""Fixtures shared across test directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlserve.envs.router_state import StateBuilder
from rlserve.rl.checkpoints import save_checkpoint
from rlserve.rl.config import load_config
from rlserve.rl.ppo import CHECKPOINT_KIND, build_model, build_normalizer


@pytest.fixture(scope="session")
def flat_ppo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO router checkpoint of the seed's flat network for exactly 4 replicas (untrained, random weights): the
    kind of router that cannot route other cluster sizes (the shipped replica-set checkpoint routes any size)."""
    cfg = load_config(overrides={"network": {"architecture": "flat", "hidden_size": 8, "proj_dim": 8}})
    builder = StateBuilder(4, cfg.state)
    dim = builder.get_state_dimension()
    model = build_model(cfg, dim, 4)
    path = tmp_path_factory.mktemp("flat_ppo") / "flat4.pt"
    save_checkpoint(path, {"model": model.state_dict(), "obs_normalizer": build_normalizer(cfg, dim).state_dict(),
                           "obs_dim": dim, "action_dim": 4, "config": cfg.to_dict(),
                           "metadata": {"architecture": "flat", "num_replicas": 4, "replica_set_layout": None,
                                        "state": cfg.to_dict()["state"], "feature_names": builder.feature_names()},
                           "update": 0, "env_steps": 0, "wall_s": 0.0, "best_score": 0.0, "bc_stats": {}},
                    kind=CHECKPOINT_KIND)
    return path
