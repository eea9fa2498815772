"""PPORouter: a trained PPO checkpoint behind the :class:`~rlserve.policies.base.Router` protocol.

The same object routes in the simulator and in the real proxy: it only reads the snapshot and the request, builds
the observation with the checkpoint's own state layout, normalises it with the statistics frozen at training time,
and runs the recurrent actor. Inference is deterministic by default (argmax); a fixed ``temperature`` samples
instead, from the router's own seeded generator. No exploration machinery (dynamic temperature, entropy) is
involved. Selected by name through the registry (``rlserve.policies``): ``ppo`` (the shipped 4-replica
checkpoint) or ``ppo:PATH``.

Decisions run on a compiled copy of the actor with the normaliser folded in
(:class:`~rlserve.rl.actor_inference.CompiledActor`), extracted once from the checkpoint's torch network, which
stays the training model and the reference (``self.model``): eager torch spent ~0.3 ms on each one-observation
forward pass, mostly dispatch overhead, three times the proxy's 100 us decision budget.

Layering note: this is the one policy that depends on the learning layers (``rl``, ``envs``): it needs the network
and the state builder it was trained with. The registry lives here, at the policies layer, so that every world
selects routers the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from rlserve.envs.router_state import StateBuilder
from rlserve.errors import BackendError, ConfigError
from rlserve.policies.base import fair_argmax
from rlserve.rl.actor_critic import ActorCritic, ReplicaSetActorCritic
from rlserve.rl.actor_inference import CompiledActor, CompiledReplicaSetActor
from rlserve.rl.checkpoints import load_checkpoint
from rlserve.rl.config import StateConfig, TrainConfig, from_dict
from rlserve.rl.normalizers import ReplicaSetNormalizer, RunningNormalizer
from rlserve.rl.ppo import CHECKPOINT_KIND, build_model, build_normalizer
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "ppo_router.pt"
MAX_REPLICAS = 64
"""Largest cluster a replica-set checkpoint accepts (the network has no limit; this bounds the decision time)."""


class PPORouter:
    """Routes with a trained actor-critic (see module docstring).

    Args:
        checkpoint: a ``checkpoint.pt`` written by ``rlserve train router``; default: the shipped one.
        temperature: ``None`` = argmax (default); a positive value samples from ``softmax(logits / T)``.
    """

    name = "ppo"

    def _sizes(self) -> str:
        return str(self.num_replicas) if self.num_replicas is not None else f"1-{MAX_REPLICAS}"

    def __init__(self, checkpoint: str | Path | None = None, *, temperature: float | None = None) -> None:
        path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        data = load_checkpoint(path, kind=CHECKPOINT_KIND)
        meta = data["metadata"]
        self.checkpoint = path
        cfg = from_dict(TrainConfig, data["config"])
        self.state_cfg = from_dict(StateConfig, meta["state"])
        layout = meta.get("replica_set_layout")
        self.replica_set = layout is not None
        self.model = build_model(cfg, data["obs_dim"], data["action_dim"], layout)
        self.model.load_state_dict(data["model"])  # strict: a mismatch raises, never random weights
        self.model.eval()  # the reference network; decisions run on its compiled copy
        self.normalizer = build_normalizer(cfg, data["obs_dim"], layout)
        self.normalizer.load_state_dict(data["obs_normalizer"])
        self.normalizer.frozen = True
        self.actor: CompiledActor | CompiledReplicaSetActor
        if isinstance(self.model, ReplicaSetActorCritic):
            assert isinstance(self.normalizer, ReplicaSetNormalizer)
            self.num_replicas: int | None = None  # any size
            self.actor = CompiledReplicaSetActor(self.model, self.normalizer)  # takes raw observations
        else:
            assert isinstance(self.model, ActorCritic) and isinstance(self.normalizer, RunningNormalizer)
            self.num_replicas = int(meta["num_replicas"])
            self.actor = CompiledActor(self.model, self.normalizer)
        self._builders: dict[int, StateBuilder] = {}
        self.state_builder = self.builder_for(self.num_replicas or 2)
        b = self.state_builder
        built: tuple[int, ...]
        expected: tuple[int, ...]
        if self.replica_set:
            built = (b.global_dimension(), b.replica_dimension())
            expected = (int(layout["global_dim"]), int(layout["replica_dim"]))
        else:
            built, expected = (b.get_state_dimension(),), (int(data["obs_dim"]),)
        if built != expected:
            raise ConfigError(f"checkpoint {path}: state layout gives {built} features but the network expects "
                              f"{expected}")
        if temperature is not None and not temperature > 0:
            raise ConfigError(f"temperature must be > 0 (or None for argmax), got {temperature}")
        self.temperature = temperature
        self.queue_k = self.state_cfg.max_queue_requests_per_replica  # worlds may fill this many views
        self.reset()

    def builder_for(self, n: int) -> StateBuilder:
        """The state builder for clusters of ``n`` replicas (one per size, made on first use)."""
        if n not in self._builders:
            self._builders[n] = StateBuilder(n, self.state_cfg)
        return self._builders[n]

    def supports(self, num_replicas: int) -> bool:
        """Whether this checkpoint can route a cluster of ``num_replicas`` replicas."""
        if self.num_replicas is not None:
            return num_replicas == self.num_replicas
        return 1 <= num_replicas <= MAX_REPLICAS

    def reset(self, seed: int | None = None) -> None:
        """Start a new run: empty history, zero hidden state, fresh sampling and tie-breaking generator."""
        self.state_builder.reset()
        self._hidden = self.actor.initial_state()
        self._rng = np.random.default_rng(seed if seed is not None else 0)
        self._warned_queue = False

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """The replica for ``request``: argmax of the policy (or a tempered sample)."""
        n = snapshot.num_replicas
        if not self.supports(n):
            raise ConfigError(f"this PPO checkpoint routes {self._sizes()} replicas, the cluster has {n}"
                              + ("; train one for this cluster size" if self.num_replicas is not None else ""))
        if n != self.state_builder.num_replicas:  # the cluster changed size: start over with its builder
            self.state_builder = self.builder_for(n)
            self.state_builder.reset()
            self._hidden = self.actor.initial_state()
        if self.queue_k and not self._warned_queue and any(r.outstanding and not r.queue for r in snapshot.replicas):
            warnings.warn("the checkpoint uses per-request queue features but the snapshot has no queue views; "
                          f"give the world queue_k={self.queue_k}", stacklevel=2)
            self._warned_queue = True
        if self.replica_set:
            obs = self.state_builder.build_set(snapshot, request)
        else:
            obs = self.state_builder.build(snapshot, request)
        logits, self._hidden = self.actor.step(obs, self._hidden)
        top = logits.max()  # NaN or +inf when there is one: one check suffices
        if not top - top == 0:
            raise BackendError(f"the PPO policy produced non-finite logits {logits.tolist()} for this snapshot (a "
                               "corrupt checkpoint or observation); no replica chosen")
        if self.temperature is None:
            return fair_argmax(logits, self._rng)
        z = logits.astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        return int(self._rng.choice(len(p), p=p / p.sum()))
