"""Running statistics that turn raw observations and rewards into well-scaled network inputs and targets.

Two normalisers, both checkpointable through ``state_dict`` / ``load_state_dict``:

- :class:`RunningNormalizer` standardises a vector per feature, ``clip((x - mean) / sqrt(var + eps))``, with mean
  and variance tracked exactly by Welford's algorithm in Chan et al.'s batched form (numerically stable for
  millions of samples, unlike the naive sum / sum-of-squares form).
- :class:`ReturnScaler` divides rewards by the running standard deviation of the discounted return, the scaling
  SB3's ``VecNormalize`` and CleanRL use: the mean is *not* subtracted, so the sign of a reward (a penalty stays a
  penalty) and the optimal policy are unchanged.

Both can be frozen (``update`` becomes a no-op): at inference and evaluation time the statistics must stay
those the policy was trained with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlserve.errors import InputError


class RunningNormalizer:
    """Per-feature running mean/variance (Welford / Chan), clipped standardisation.

    Args:
        shape: shape of one sample (``(state_dim,)`` for observations, ``()`` for scalars).
        clip: standardised values are clipped to ``[-clip, clip]``; large outliers then cannot blow up a layer.
        eps: added to the variance, so constant features map to 0 instead of dividing by zero.
    """

    def __init__(self, shape: tuple[int, ...] | int, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.shape: tuple[int, ...] = (shape,) if isinstance(shape, int) else tuple(shape)
        self.clip = float(clip)
        self.eps = float(eps)
        self.count = 0
        self.mean = np.zeros(self.shape, np.float64)
        self.m2 = np.zeros(self.shape, np.float64)  # sum of squared deviations from the mean
        self.frozen = False
        self._scale: np.ndarray | None = None  # sqrt(var + eps), cached between updates (one per routing decision)

    @property
    def var(self) -> np.ndarray:
        """Population variance of everything seen so far (0 before two samples)."""
        return self.m2 / self.count if self.count > 1 else np.zeros(self.shape, np.float64)

    def update(self, x: np.ndarray) -> None:
        """Add one sample (shape ``self.shape``) or a batch (shape ``(n, *self.shape)``)."""
        if self.frozen:
            return
        batch = np.asarray(x, dtype=np.float64).reshape((-1, *self.shape))
        n = batch.shape[0]
        if n == 0:
            return
        b_mean = batch.mean(axis=0)
        b_m2 = ((batch - b_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = b_mean - self.mean
        # Chan et al. pairwise combination: exact for any batch size, reduces to Welford for n == 1.
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.count * n / total)
        self.count = total
        self._scale = None

    @property
    def scale(self) -> np.ndarray:
        """``sqrt(var + eps)``, the divisor of :meth:`normalize` (cached until the next update)."""
        if self._scale is None:
            self._scale = np.sqrt(self.var + self.eps)
        return self._scale

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Standardise and clip ``x`` (any leading batch shape); float32, ready for torch."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the exact statistics (plain lists, so checkpoints stay portable)."""
        return {"shape": list(self.shape), "clip": self.clip, "eps": self.eps, "count": self.count,
                "mean": self.mean.tolist(), "m2": self.m2.tolist(), "frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore statistics saved by :meth:`state_dict`.

        Raises:
            InputError: the saved shape differs from this normaliser's (a checkpoint for another state layout).
        """
        shape = tuple(state["shape"])
        if shape != self.shape:
            raise InputError(f"normalizer shape mismatch: checkpoint has {shape}, expected {self.shape}; "
                             "the checkpoint was trained with a different state layout")
        self.clip, self.eps, self.count = float(state["clip"]), float(state["eps"]), int(state["count"])
        self.mean = np.asarray(state["mean"], np.float64).reshape(self.shape)
        self.m2 = np.asarray(state["m2"], np.float64).reshape(self.shape)
        self.frozen = bool(state["frozen"])
        self._scale = None


class ReturnScaler:
    """Scales rewards by the running std of the discounted return of each environment.

    Args:
        num_envs: number of environments stepped in lockstep (one running return each).
        gamma: the discount of the return being tracked (use the agent's gamma).
        clip: scaled rewards are clipped to ``[-clip, clip]``.
    """

    def __init__(self, num_envs: int = 1, gamma: float = 0.99, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma = float(gamma)
        self.clip = float(clip)
        self.eps = float(eps)
        self.returns = np.zeros(num_envs, np.float64)
        self.stats = RunningNormalizer((), clip=np.inf, eps=eps)

    @property
    def frozen(self) -> bool:
        """Whether the statistics are fixed."""
        return self.stats.frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self.stats.frozen = value

    def update(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        """Advance each environment's discounted return by its reward; a done environment restarts at 0."""
        self.returns = self.returns * self.gamma + np.asarray(rewards, np.float64)
        self.stats.update(self.returns)
        self.returns[np.asarray(dones, bool)] = 0.0

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        """Rewards divided by the return's std (the mean is kept: the optimal policy does not change)."""
        scaled = np.asarray(rewards, np.float64) / np.sqrt(self.stats.var + self.eps)
        return np.clip(scaled, -self.clip, self.clip)

    def state_dict(self) -> dict[str, Any]:
        """Statistics and per-environment running returns."""
        return {"gamma": self.gamma, "clip": self.clip, "eps": self.eps, "returns": self.returns.tolist(),
                "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.gamma, self.clip, self.eps = float(state["gamma"]), float(state["clip"]), float(state["eps"])
        self.returns = np.asarray(state["returns"], np.float64)
        self.stats.load_state_dict(state["stats"])


class ReplicaSetNormalizer:
    """Standardisation for the replica-set layout (:class:`~rlserve.rl.actor_critic.ReplicaSetActorCritic`): one
    set of statistics for the global features and *one* for a replica's features, shared by every replica.

    Per-position statistics (a :class:`RunningNormalizer` over the flat vector) would scale replica 0's features
    differently from replica 3's and break the permutation equivariance the network has by construction; they
    would also tie the checkpoint to one cluster size. Here a replica's features are standardised the same way in
    any slot and for any count; only present replicas (slot < count) update the statistics; the count column
    passes through unchanged. Same interface as :class:`RunningNormalizer` where the trainer uses it.
    """

    def __init__(self, global_dim: int, replica_dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.global_dim, self.replica_dim = global_dim, replica_dim
        self.globals = RunningNormalizer(global_dim, clip, eps)
        self.replica = RunningNormalizer(replica_dim, clip, eps)
        self.clip = float(clip)

    @property
    def frozen(self) -> bool:
        """Whether the statistics are fixed."""
        return self.globals.frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self.globals.frozen = self.replica.frozen = value

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = np.asarray(x, np.float64)
        g = flat[..., : self.global_dim]
        count = flat[..., self.global_dim]
        reps = flat[..., self.global_dim + 1:]
        return g, count, reps.reshape(*reps.shape[:-1], -1, self.replica_dim)

    def update(self, x: np.ndarray) -> None:
        """Add a sample or a batch of replica-set vectors (the present replicas' rows only)."""
        if self.frozen:
            return
        g, count, reps = self._split(x)
        self.globals.update(g)
        present = np.arange(reps.shape[-2]) < count[..., None]
        self.replica.update(reps[present])

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Standardise and clip (any leading batch shape, any number of slots); float32, the count kept raw."""
        g, count, reps = self._split(x)
        out = np.concatenate([self.globals.normalize(g), count[..., None].astype(np.float32),
                              self.replica.normalize(reps).reshape(*reps.shape[:-2], -1)], axis=-1)
        return out

    def expanded(self, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and scale vectors for the flat layout with ``slots`` replicas (count column: mean 0, scale 1)."""
        mean = np.concatenate([self.globals.mean, [0.0], np.tile(self.replica.mean, slots)])
        scale = np.concatenate([self.globals.scale, [1.0], np.tile(self.replica.scale, slots)])
        return mean, scale

    def state_dict(self) -> dict[str, Any]:
        """Both statistics (see :meth:`RunningNormalizer.state_dict`)."""
        return {"layout": "replica_set", "global_dim": self.global_dim, "replica_dim": self.replica_dim,
                "globals": self.globals.state_dict(), "replica": self.replica.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Raises:
            InputError: the checkpoint has a flat normaliser or other feature widths.
        """
        if state.get("layout") != "replica_set":
            raise InputError("normalizer mismatch: the checkpoint has a flat normaliser, this network a replica-set "
                             "one; the checkpoint was trained with network.architecture: flat")
        self.globals.load_state_dict(state["globals"])
        self.replica.load_state_dict(state["replica"])
        self.clip = self.globals.clip


ObsNormalizer = RunningNormalizer | ReplicaSetNormalizer
"""Either observation normaliser (flat network / replica-set network)."""
