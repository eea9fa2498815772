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
from rlserve.rl.actor_critic import ActorCritic
from rlserve.rl.actor_inference import CompiledActor
from rlserve.rl.checkpoints import load_checkpoint
from rlserve.rl.config import NetworkConfig, StateConfig, from_dict
from rlserve.rl.normalizers import RunningNormalizer
from rlserve.rl.ppo import CHECKPOINT_KIND
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "ppo_router_4x.pt"


class PPORouter:
    """Routes with a trained actor-critic (see module docstring).

    Args:
        checkpoint: a ``checkpoint.pt`` written by ``rlserve train router``; default: the shipped one.
        temperature: ``None`` = argmax (default); a positive value samples from ``softmax(logits / T)``.
    """

    name = "ppo"

    def __init__(self, checkpoint: str | Path | None = None, *, temperature: float | None = None) -> None:
        path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        data = load_checkpoint(path, kind=CHECKPOINT_KIND)
        meta = data["metadata"]
        self.checkpoint = path
        self.num_replicas = int(meta["num_replicas"])
        self.state_builder = StateBuilder(self.num_replicas, from_dict(StateConfig, meta["state"]))
        net = from_dict(NetworkConfig, data["config"]["network"])
        self.model = ActorCritic(data["obs_dim"], data["action_dim"], hidden_size=net.hidden_size,
                                 proj_dim=net.proj_dim, layer_n=net.layer_n, gru_layers=net.gru_layers,
                                 bounded_logits=net.bounded_logits, logit_scale=net.logit_scale)
        self.model.load_state_dict(data["model"])  # strict: a mismatch raises, never random weights
        self.model.eval()  # the reference network; decisions run on its compiled copy
        self.normalizer = RunningNormalizer(data["obs_dim"])
        self.normalizer.load_state_dict(data["obs_normalizer"])
        self.normalizer.frozen = True
        self.actor = CompiledActor(self.model, self.normalizer)  # takes raw observations
        if self.state_builder.get_state_dimension() != data["obs_dim"]:
            raise ConfigError(f"checkpoint {path}: state layout gives {self.state_builder.get_state_dimension()} "
                              f"features but the network expects {data['obs_dim']}")
        if temperature is not None and not temperature > 0:
            raise ConfigError(f"temperature must be > 0 (or None for argmax), got {temperature}")
        self.temperature = temperature
        self.queue_k = self.state_builder.cfg.max_queue_requests_per_replica  # worlds may fill this many views
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Start a new run: empty history, zero hidden state, fresh sampling generator."""
        self.state_builder.reset()
        self._hidden = self.actor.initial_state()
        self._rng = np.random.default_rng(seed if seed is not None else 0)
        self._warned_queue = False

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        """The replica for ``request``: argmax of the policy (or a tempered sample)."""
        if snapshot.num_replicas != self.num_replicas:
            raise ConfigError(f"this PPO checkpoint routes over {self.num_replicas} replicas, the cluster has "
                              f"{snapshot.num_replicas}; train one for this cluster size")
        if self.queue_k and not self._warned_queue and any(r.outstanding and not r.queue for r in snapshot.replicas):
            warnings.warn("the checkpoint uses per-request queue features but the snapshot has no queue views; "
                          f"give the world queue_k={self.queue_k}", stacklevel=2)
            self._warned_queue = True
        logits, self._hidden = self.actor.step(self.state_builder.build(snapshot, request), self._hidden)
        best = int(logits.argmax())  # argmax returns a NaN's or +inf's index when there is one: one check suffices
        if not logits[best] - logits[best] == 0:
            raise BackendError(f"the PPO policy produced non-finite logits {logits.tolist()} for this snapshot (a "
                               "corrupt checkpoint or observation); no replica chosen")
        if self.temperature is None:
            return best
        z = logits.astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        return int(self._rng.choice(len(p), p=p / p.sum()))
