"""The trained DQN as an energy controller: observation -> greedy action -> (cap, clock).

The checkpoint carries what the network was trained with (action space, observation config, layer widths), so
the deployed controller rebuilds exactly that; the SLO used for the slack features is the deployment's own.
Inference is greedy (argmax Q): exploration exists only during training. A decision means "these settings for
the next interval", so the policy should run at the interval it was trained with (:func:`checkpoint_interval_s`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlserve.errors import BackendError, InputError
from rlserve.policies.energy.action_space import ActionSpace
from rlserve.policies.energy.base import ControlContext, EnergyDecision, register_controller
from rlserve.policies.energy.qnet import DuelingQNetwork
from rlserve.policies.energy.state import EnergyStateBuilder, EnergyStateConfig
from rlserve.rl.checkpoints import load_checkpoint
from rlserve.snapshot import ClusterSnapshot

CHECKPOINT_KIND = "dqn_energy"
#: The shipped policy (``dqn`` without a path): Llama-3-8B on an H200, trained by ``rlserve train energy
#: --config energy`` (docs/energy.md has the numbers and the command).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[2] / "data" / "checkpoints" / "energy_dqn_h200_llama3_8b.pt"


def checkpoint_interval_s(checkpoint: str | Path = SHIPPED_CHECKPOINT) -> float | None:
    """The control interval a DQN checkpoint was trained with (None for checkpoints that do not record it)."""
    interval = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)["metadata"].get("env", {}).get("interval_s")
    return None if interval is None else float(interval)


@register_controller("dqn")
class DQNController:
    """Greedy policy of a trained dueling Q-network (``dqn:PATH`` in specs; ``dqn`` = the shipped one)."""

    name = "dqn"

    def __init__(self, context: ControlContext, checkpoint: str | Path = SHIPPED_CHECKPOINT) -> None:
        data = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND)
        meta: dict[str, Any] = data["metadata"]
        try:
            self.action_space = ActionSpace.from_dict(meta["action_space"])
            state_config = EnergyStateConfig(**meta["state_config"])
            hidden = tuple(int(h) for h in meta["hidden_sizes"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"checkpoint {checkpoint} lacks the energy metadata ({exc}); "
                             "was it written by rlserve train energy?") from None
        if self.action_space != context.action_space:
            warnings.warn(f"checkpoint {checkpoint} was trained on another action space; using the checkpoint's "
                          f"(clocks {self.action_space.min_clock_mhz:g}-{self.action_space.max_clock_mhz:g} MHz)",
                          stacklevel=2)
        trained = meta.get("env", {}).get("interval_s")
        self.trained_interval_s = None if trained is None else float(trained)
        if self.trained_interval_s is not None and abs(self.trained_interval_s - context.interval_s) > 1e-9:
            warnings.warn(f"checkpoint {checkpoint} was trained to decide every {self.trained_interval_s:g} s, this "
                          f"run decides every {context.interval_s:g} s: its rates and horizon will be off "
                          f"(pass --interval-s {self.trained_interval_s:g})", stacklevel=2)
        space = self.action_space
        factors = (len(space.concurrency_caps), len(space.sm_clocks_mhz)) if meta.get("factored_advantage") else None
        self.q = DuelingQNetwork(state_config.dim, space.n_actions, hidden, factors)
        self.q.load_state_dict(data["agent"]["q"])  # a shape mismatch raises: never silently random weights
        self.q.eval()
        self.context = context
        self.max_cap = context.max_num_seqs
        self.state = EnergyStateBuilder(state_config, context.slo, self.action_space)
        self.name = f"dqn:{checkpoint}"
        self.last_q: np.ndarray | None = None

    def decide(self, snapshot: ClusterSnapshot, replica: int) -> EnergyDecision:
        """Greedy action for the current observation (caps above ``max_num_seqs`` are clipped to it)."""
        obs = self.state.build(snapshot, replica)
        with torch.no_grad():
            q = self.q(torch.from_numpy(obs).unsqueeze(0))[0].numpy()
        self.last_q = q
        best = int(np.argmax(q))  # a NaN's or +inf's index when there is one
        if not q[best] - q[best] == 0:
            raise BackendError(f"the DQN produced non-finite Q-values for this observation (a corrupt checkpoint or "
                               f"observation {obs.tolist()}); no decision taken, the last settings stay")
        d = self.action_space.decode_action(best)
        return EnergyDecision(min(d.concurrency_cap, self.max_cap), d.sm_clock_mhz)

    def reset(self, seed: int | None = None) -> None:
        """Forget the previous snapshot."""
        self.state.reset()
