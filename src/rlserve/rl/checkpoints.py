"""Atomic checkpoint files and the random-number-generator states a bit-for-bit resume needs.

A checkpoint is one ``torch.save`` file holding a plain dict. What goes in it is the trainer's business (model,
optimizer, normalisers, counters, config...); this module guarantees two things every trainer needs:

- **Atomicity**: the payload is written to a temporary file in the target directory, flushed and fsynced, then
  ``os.replace``-d over the target. A crash mid-write leaves the previous checkpoint intact, never a truncated one;
  the temporary file such a crash leaves behind is removed by the next write of that checkpoint (one writer per
  checkpoint path is assumed, as in every trainer here).
- **Finite weights**: a checkpoint holding NaN or inf in any floating-point tensor is refused on load.
- **Safe, explicit loading**: files are read with ``weights_only=True`` (no arbitrary code from a pickle), and a
  ``kind`` tag stops a DQN checkpoint from being loaded into the PPO router (and vice versa) with a clear message.

RNG states: resuming must continue the *same* random streams, so :func:`rng_state` captures torch's global CPU
generator and any ``numpy.random.Generator`` objects the trainer owns (environments, samplers).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlserve.errors import ConfigError, InputError
from rlserve.outputs import write_atomic

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: Mapping[str, Any], *, kind: str) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + rename); returns the path.

    ``kind`` names what the checkpoint is for (``"ppo_router"``, ``"dqn_energy"``) and is checked on load.
    """
    data = {"format_version": FORMAT_VERSION, "kind": kind, **payload}
    return write_atomic(path, lambda f: torch.save(data, f))


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
        why = (str(exc).strip().splitlines() or [""])[0][:200]  # torch's messages run to many lines
        raise InputError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {why}); "
                         "is it a file written by rlserve?") from None
    if not isinstance(data, dict) or "kind" not in data:
        raise InputError(f"checkpoint {path} is not an rlserve checkpoint (no 'kind' entry)")
    if data["kind"] != kind:
        raise InputError(f"checkpoint {path} is a {data['kind']!r} checkpoint, expected {kind!r}")
    bad = _first_non_finite(data)
    if bad is not None:
        raise InputError(f"checkpoint {path} holds non-finite numbers (NaN or inf) in {bad}: it was written by a "
                         "run that diverged or was corrupted; use an earlier checkpoint or retrain")
    return data


def _first_non_finite(value: Any, where: str = "") -> str | None:
    """The path of the first floating-point tensor holding NaN or inf inside ``value`` (``None``: all finite).

    A policy with NaN weights would still "decide" (argmax of NaN logits is index 0: every request to replica 0),
    so such a file is refused at load time rather than deployed."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return where or "(top level)"
        return None
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


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


def config_changes(stored: Any, given: Any, where: str = "") -> list[str]:
    """``key: stored -> given`` for every leaf where two plain config dicts differ (lists compare as wholes)."""
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        out: list[str] = []
        for key in sorted(set(stored) | set(given), key=str):
            path = f"{where}.{key}" if where else str(key)
            out += config_changes(stored.get(key), given.get(key), path)
        return out
    norm = (lambda v: list(v) if isinstance(v, tuple) else v)  # noqa: E731 (tuples come back as lists)
    return [] if norm(stored) == norm(given) else [f"{where}: {stored!r} -> {given!r}"]


def check_resume_config(path: Path, stored: Mapping[str, Any], given: Mapping[str, Any], *, total_key: str,
                        schedule_depends_on_total: bool, allow_change: bool) -> None:
    """On resume the checkpoint's config is the source of truth: a differing value is an error unless allowed.

    Only ``total_key`` (how long to train) may grow without permission, and only when no schedule is defined
    relative to it (a learning rate annealed to 0 at the total): then the resumed run is bit-identical to a
    straight run to the new total.

    Raises:
        ConfigError: the values that differ, and how to proceed.
    """
    changes = [c for c in config_changes(stored, given) if not c.startswith(f"{total_key}:")]
    if stored.get(total_key) != given.get(total_key) and schedule_depends_on_total:
        changes.append(f"{total_key}: {stored.get(total_key)!r} -> {given.get(total_key)!r} (the schedule is "
                       "relative to it, so the resumed run would differ from a straight run)")
    if changes and not allow_change:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise ConfigError(f"--resume: the config differs from the one stored in {path} ({shown}); resume without "
                          "--config to use the stored one, or pass --override-config to train on with the change")
