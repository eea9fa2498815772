"""The compiled actor (the PPO router's inference path) against the torch ActorCritic it was extracted from."""

import numpy as np
import pytest
import torch
from torch import nn

from rlserve.policies.base import fair_argmax
from rlserve.policies.ppo_router import DEFAULT_CHECKPOINT, PPORouter
from rlserve.rl.actor_critic import ActorCritic
from rlserve.rl.actor_inference import CompiledActor
from rlserve.rl.normalizers import RunningNormalizer
from rlserve.scenario import load_scenario
from rlserve.sim import simulate

STATE_DIM, ACTIONS = 23, 5


def _random_model(seed: int, **net: object) -> ActorCritic:
    """A network with every parameter drawn at random (LayerNorm gains and biases included), so that logits are
    far from the near-zero ones of the orthogonal initialisation and every weight matters."""
    torch.manual_seed(seed)
    model = ActorCritic(STATE_DIM, ACTIONS, **net)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 1.5 / p.shape[1] ** 0.5))
    return model.eval()


NETWORKS = [
    {"hidden_size": 64, "proj_dim": 128},  # the shipped router's shape
    {"hidden_size": 16, "proj_dim": 32, "layer_n": 0, "gru_layers": 2, "bounded_logits": True},
    {"hidden_size": 32, "proj_dim": 48, "layer_n": 2, "bounded_logits": True, "logit_scale": 2.0},
    {"hidden_size": 8, "proj_dim": 16, "layer_n": 3, "gru_layers": 3},
]


@pytest.mark.parametrize("net", NETWORKS, ids=lambda n: "-".join(f"{k}={v}" for k, v in n.items()))
@pytest.mark.parametrize("start", ["episode_start", "mid_episode"])
def test_logits_and_hidden_state_equal_torch(net, start):
    model = _random_model(0, **net)
    actor = CompiledActor(model)
    rng = np.random.default_rng(1)
    layers = model.gru_layers
    if start == "episode_start":  # torch resets the hidden state where the mask is 0
        hxs, mask, h = torch.randn(2 * layers, 1, model.hidden_size), torch.zeros(1), actor.initial_state()
    else:
        hxs, mask = torch.randn(2 * layers, 1, model.hidden_size), torch.ones(1)
        h = hxs[:layers, 0].numpy().copy()
    largest = 0.0
    for _ in range(12):
        obs = np.clip(rng.normal(0.0, 3.0, STATE_DIM), -10, 10).astype(np.float32)
        logits, h = actor.step(obs, h)
        with torch.inference_mode():
            ref, hxs = model.get_logits(torch.from_numpy(obs).unsqueeze(0), hxs, mask)
        mask = torch.ones(1)
        assert logits.shape == (ACTIONS,) and h.shape == (layers, model.hidden_size) and h.dtype == np.float32
        np.testing.assert_allclose(logits, ref[0].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(h, hxs[:layers, 0].numpy(), rtol=0, atol=1e-5)
        largest = max(largest, float(np.abs(logits).max()))
    assert largest > 1.0  # the comparison is not between near-zero numbers


def test_weights_are_copied_once():
    model = _random_model(2)
    actor = CompiledActor(model)
    obs = np.ones(STATE_DIM, np.float32)
    before, _ = actor.step(obs, actor.initial_state())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # training the module further must not change an actor extracted earlier
    after, _ = actor.step(obs, actor.initial_state())
    np.testing.assert_array_equal(before, after)


def test_folded_normaliser_gives_the_bits_of_normalising_first():
    rng = np.random.default_rng(4)
    norm = RunningNormalizer(STATE_DIM, clip=3.0)
    norm.update(rng.normal(5.0, 2.0, (200, STATE_DIM)))
    norm.frozen = True
    model = _random_model(4)
    folded, plain = CompiledActor(model, norm), CompiledActor(model)
    h_folded = h_plain = folded.initial_state()
    clipped = 0
    for _ in range(10):
        raw = rng.normal(5.0, 8.0, STATE_DIM)  # wide: some features land beyond the clip
        clipped += int(np.sum(np.abs(norm.normalize(raw)) == 3.0))
        a, h_folded = folded.step(raw, h_folded)
        b, h_plain = plain.step(norm.normalize(raw), h_plain)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(h_folded, h_plain)
    assert clipped > 0
    with pytest.raises(ValueError, match="normaliser shape"):
        CompiledActor(model, RunningNormalizer(STATE_DIM + 1))


def test_a_layer_without_compiled_equivalent_is_an_error_not_skipped():
    model = _random_model(3)
    model.shared_mlp[2] = nn.Tanh()
    with pytest.raises(ValueError, match="no equivalent for Tanh"):
        CompiledActor(model)


class _TorchPath:
    """The PPO router's reference path: its own state builder and normaliser, then the torch network."""

    name = "ppo_torch"

    def __init__(self, router: PPORouter) -> None:
        self.router = router
        self.queue_k = router.queue_k
        self.hxs, self.mask = router.model.initial_state(1), torch.zeros(1)
        self.rng = np.random.default_rng(0)  # the router's tie-breaking generator after reset()

    def select(self, request, snapshot):
        r = self.router
        builder = r.builder_for(snapshot.num_replicas)
        raw = builder.build_set(snapshot, request) if r.replica_set else builder.build(snapshot, request)
        obs = r.normalizer.normalize(raw)
        with torch.inference_mode():
            logits, self.hxs = r.model.get_logits(torch.from_numpy(obs).unsqueeze(0), self.hxs, self.mask)
        self.mask = torch.ones(1)
        return fair_argmax(logits[0].numpy(), self.rng)  # ties (the two identical H100s) broken as the router does


@pytest.mark.filterwarnings("ignore:token caps shortened")
@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="the shipped checkpoint is built by training")
def test_shipped_checkpoint_routes_every_request_as_the_torch_network_does():
    scn = load_scenario("heterogeneous").with_num_requests(600)
    wl = scn.build_workload(1234)
    fast = simulate(scn.cluster, wl, PPORouter())
    reference = simulate(scn.cluster, wl, _TorchPath(PPORouter()))
    assert len(np.unique(fast.records.replica)) > 1  # a real routing episode, not one replica for everything
    np.testing.assert_array_equal(fast.records.replica, reference.records.replica)
