"""The replica-set (permutation-equivariant) router network: equivariance by construction, any replica count, the
compiled inference copy against torch, and the shared-statistics normaliser."""

import numpy as np
import pytest
import torch

from rlserve.rl.actor_critic import MASKED_LOGIT, ReplicaSetActorCritic
from rlserve.rl.actor_inference import CompiledReplicaSetActor
from rlserve.rl.normalizers import ReplicaSetNormalizer

G, R, SLOTS = 9, 14, 16


def _random_model(seed: int, **net: object) -> ReplicaSetActorCritic:
    """Every parameter drawn at random (LayerNorms and the zero-initialised head included): logits far from 0."""
    torch.manual_seed(seed)
    model = ReplicaSetActorCritic(G, R, SLOTS, prior_feature=3, **net)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() <= 1 else 1.5 / p.shape[1] ** 0.5))
    return model.eval()


def _obs(rng: np.random.Generator, n: int, slots: int = SLOTS, loc: float = 0.0, scale: float = 2.0) -> np.ndarray:
    """A random replica-set vector with ``n`` replicas padded to ``slots`` (padding filled with junk on purpose)."""
    o = rng.normal(loc, scale, G + 1 + slots * R)
    o[G] = n
    return o


def _permute(obs: np.ndarray, perm: np.ndarray) -> np.ndarray:
    out = obs.copy()
    n = perm.size
    blocks = obs[G + 1: G + 1 + n * R].reshape(n, R)
    out[G + 1: G + 1 + n * R] = blocks[perm].ravel()
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_permuting_replicas_permutes_probabilities_mid_episode(n):
    model = _random_model(0)
    rng = np.random.default_rng(n)
    t, envs = 6, 3
    seq = np.stack([np.stack([_obs(rng, n) for _ in range(envs)]) for _ in range(t)])
    hxs = torch.randn(2, envs, model.hidden_size)  # mid-episode: a non-zero memory
    masks = torch.ones(t, envs)
    perm = rng.permutation(n)
    seq_p = np.stack([np.stack([_permute(seq[i, e], perm) for e in range(envs)]) for i in range(t)])
    with torch.no_grad():
        logits, values, h = model(torch.as_tensor(seq, dtype=torch.float32), hxs, masks)
        logits_p, values_p, h_p = model(torch.as_tensor(seq_p, dtype=torch.float32), hxs, masks)
    probs, probs_p = logits.softmax(-1), logits_p.softmax(-1)
    torch.testing.assert_close(probs_p[..., :n], probs[..., perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(values_p, values, rtol=0, atol=1e-6)
    torch.testing.assert_close(h_p, h, rtol=0, atol=1e-6)
    assert (logits[..., n:] == MASKED_LOGIT).all() and (probs[..., n:] == 0).all()
    assert float(probs.max()) > 1.5 / n or n == 1  # not a uniform policy: the comparison has teeth


def test_padding_width_does_not_matter():
    model = _random_model(1)
    rng = np.random.default_rng(2)
    wide = _obs(rng, 5)
    tight = wide[: G + 1 + 5 * R]
    h0 = model.initial_state(1)
    with torch.no_grad():
        a, va, _ = model(torch.as_tensor(wide, dtype=torch.float32).view(1, 1, -1), h0, torch.zeros(1, 1))
        b, vb, _ = model(torch.as_tensor(tight, dtype=torch.float32).view(1, 1, -1), h0, torch.zeros(1, 1))
    torch.testing.assert_close(a[..., :5], b, rtol=0, atol=1e-6)
    torch.testing.assert_close(va, vb, rtol=0, atol=1e-6)


def test_zero_initialised_head_starts_at_the_prior():
    torch.manual_seed(0)
    model = ReplicaSetActorCritic(G, R, SLOTS, prior_feature=3, prior_scale=2.0)
    obs = torch.as_tensor(_obs(np.random.default_rng(3), 7), dtype=torch.float32)
    with torch.no_grad():
        logits, _ = model.get_logits(obs.view(1, -1), model.initial_state(1), torch.zeros(1))
    reps = obs[G + 1:].view(SLOTS, R)
    torch.testing.assert_close(logits[0, :7], -2.0 * reps[:7, 3], rtol=1e-5, atol=1e-5)


def _normalizer(rng: np.random.Generator) -> ReplicaSetNormalizer:
    norm = ReplicaSetNormalizer(G, R, clip=4.0)
    batch = np.stack([_obs(rng, int(rng.integers(1, SLOTS + 1)), loc=1.0, scale=6.0) for _ in range(200)])
    norm.update(batch)
    norm.frozen = True
    return norm


def test_normaliser_shares_statistics_over_replicas_and_ignores_padding():
    rng = np.random.default_rng(4)
    norm = ReplicaSetNormalizer(G, R)
    a = _obs(rng, 3)
    norm.update(a[None])
    assert norm.replica.count == 3 and norm.globals.count == 1  # only the 3 present replicas count
    norm = _normalizer(rng)
    x = _obs(rng, 6)
    perm = rng.permutation(6)
    np.testing.assert_array_equal(norm.normalize(_permute(x, perm)), _permute(norm.normalize(x), perm))
    assert norm.normalize(x)[G] == 6  # the count passes through
    restored = ReplicaSetNormalizer(G, R)
    restored.load_state_dict(norm.state_dict())
    np.testing.assert_array_equal(restored.normalize(x), norm.normalize(x))


@pytest.mark.parametrize("net", [{}, {"hidden_size": 16, "proj_dim": 24, "layer_n": 0, "gru_layers": 2},
                                 {"hidden_size": 8, "proj_dim": 16, "layer_n": 2, "prior_feature": None}],
                         ids=["default", "small-2gru", "tiny-noprior"])
def test_compiled_actor_equals_torch_for_any_replica_count(net):
    prior = net.pop("prior_feature", 3) if "prior_feature" in net else 3
    torch.manual_seed(5)
    model = ReplicaSetActorCritic(G, R, SLOTS, prior_feature=prior, **net)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() <= 1 else 1.5 / p.shape[1] ** 0.5))
    model.eval()
    rng = np.random.default_rng(6)
    norm = _normalizer(rng)
    actor = CompiledReplicaSetActor(model, norm)
    h, hxs, mask = actor.initial_state(), model.initial_state(1), torch.zeros(1)
    largest = 0.0
    for n in (1, 3, 8, 16, 40, 2, 8):  # sizes change mid-episode; 40 is more than the training slots
        raw = _obs(rng, n, slots=n, loc=1.0, scale=6.0)
        logits, h = actor.step(raw, h)
        with torch.inference_mode():
            ref, hxs = model.get_logits(torch.from_numpy(norm.normalize(raw)).unsqueeze(0), hxs, mask)
        mask = torch.ones(1)
        assert logits.shape == (n,)
        np.testing.assert_allclose(logits, ref[0].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(h, hxs[: model.gru_layers, 0].numpy(), rtol=0, atol=1e-5)
        largest = max(largest, float(np.abs(logits).max()))
    assert largest > 1.0


def test_compiled_actor_is_equivariant():
    model = _random_model(7)
    rng = np.random.default_rng(8)
    actor = CompiledReplicaSetActor(model, _normalizer(rng))
    h = rng.normal(size=(1, model.hidden_size)).astype(np.float32)
    for n in (2, 8, 13):
        raw = _obs(rng, n, slots=n)
        perm = rng.permutation(n)
        a, ha = actor.step(raw, h)
        b, hb = actor.step(_permute(raw, perm), h)
        np.testing.assert_allclose(b, a[perm], rtol=0, atol=1e-6)
        np.testing.assert_allclose(hb, ha, rtol=0, atol=1e-6)
