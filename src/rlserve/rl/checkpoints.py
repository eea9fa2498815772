"""Atomic checkpoint files and the random-number-generator states a bit-for-bit resume needs.

A checkpoint is one ``torch.save`` file holding a plain dict. What goes in it is the trainer's business (model,
optimizer, normalisers, counters, config...); this module guarantees two things every trainer needs:

- **Atomicity**: the payload is written to a temporary file in the target directory, flushed and fsynced, then
  ``os.replace``-d over the target. A crash mid-write leaves the previous checkpoint intact, never a truncated one.
- **Safe, explicit loading**: files are read with ``weights_only=True`` (no arbitrary code from a pickle), and a
  ``kind`` tag stops a DQN checkpoint from being loaded into the PPO router (and vice versa) with a clear message.

RNG states: resuming must continue the *same* random streams, so :func:`rng_state` captures torch's global CPU
generator and any ``numpy.random.Generator`` objects the trainer owns (environments, samplers).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlserve.errors import InputError

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: Mapping[str, Any], *, kind: str) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + rename); returns the path.

    ``kind`` names what the checkpoint is for (``"ppo_router"``, ``"dqn_energy"``) and is checked on load.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format_version": FORMAT_VERSION, "kind": kind, **payload}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, *, kind: str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check its kind.

    Raises:
        InputError: the file is missing, unreadable, or a checkpoint of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; pass the .pt file written by training")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt/foreign files
        raise InputError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                         "is it a file written by rlserve?") from exc
    if not isinstance(data, dict) or "kind" not in data:
        raise InputError(f"checkpoint {path} is not an rlserve checkpoint (no 'kind' entry)")
    if data["kind"] != kind:
        raise InputError(f"checkpoint {path} is a {data['kind']!r} checkpoint, expected {kind!r}")
    return data


def rng_state(generators: Mapping[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """Torch's global CPU RNG state plus the bit-generator state of each named numpy generator."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": {name: g.bit_generator.state for name, g in (generators or {}).items()},
    }


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, np.random.Generator] | None = None) -> None:
    """Put torch's global RNG and each named numpy generator back to a state from :func:`rng_state`.

    Raises:
        InputError: a generator asked for is not in the saved state.
    """
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    for name, g in (generators or {}).items():
        if name not in saved:
            raise InputError(f"checkpoint holds no RNG state for {name!r}; it was written by another trainer")
        g.bit_generator.state = saved[name]
