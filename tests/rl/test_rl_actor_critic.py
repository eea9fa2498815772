import torch

from rlserve.rl.actor_critic import ActorCritic


def test_sequence_replay_matches_step_by_step_with_resets():
    torch.manual_seed(0)
    model = ActorCritic(5, 3, hidden_size=8, proj_dim=16, gru_layers=2)
    t, n = 6, 2
    s = torch.randn(t, n, 5)
    masks = torch.ones(t, n)
    masks[0] = 0
    masks[3, 1] = 0  # env 1 starts a new episode at step 3
    h = torch.randn(4, n, 8)
    logits_seq, values_seq, h_seq = model(s, h, masks)
    step_h, step_logits = h, []
    for i in range(t):
        lg, step_h = model.get_logits(s[i], step_h, masks[i])
        step_logits.append(lg)
    torch.testing.assert_close(torch.stack(step_logits), logits_seq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_h, h_seq, rtol=1e-5, atol=1e-6)
    assert values_seq.shape == (t, n)


def test_reset_mask_makes_output_independent_of_previous_hidden_state():
    model = ActorCritic(4, 2, hidden_size=8, proj_dim=8)
    s = torch.randn(3, 4)
    a = model.act_value(s, torch.randn(2, 3, 8), torch.zeros(3), deterministic=True)
    b = model.act_value(s, torch.randn(2, 3, 8), torch.zeros(3), deterministic=True)
    torch.testing.assert_close(a[4], b[4])


def test_temperature_is_applied_identically_in_act_and_evaluate():
    torch.manual_seed(1)
    model = ActorCritic(4, 3, hidden_size=8, proj_dim=8)
    s, h, m = torch.randn(5, 4), model.initial_state(5), torch.zeros(5)
    action, logp, value, _, _ = model.act_value(s, h, m, temperature=2.5)
    logp2, entropy, value2, _, _ = model.evaluate_actions(s, h, m, action, temperature=2.5)
    torch.testing.assert_close(logp, logp2)
    torch.testing.assert_close(value, value2)
    cold, _, _, _, _ = model.evaluate_actions(s, h, m, action, temperature=1.0)
    assert not torch.allclose(cold, logp)


def test_unbounded_head_can_become_confident_and_bounded_head_is_scaled():
    model = ActorCritic(4, 4, hidden_size=8, proj_dim=8, bounded_logits=True, logit_scale=5.0)
    logits, _ = model.get_logits(torch.randn(64, 4) * 100, model.initial_state(64), torch.zeros(64))
    assert logits.abs().max() <= 5.0 + 1e-5
    assert ActorCritic(4, 4).logit_norm is None  # the seed's Tanh head is off by default
