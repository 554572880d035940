import math

import pytest
import torch

from mmalign.losses.ppo import (
    combined_advantage,
    gae,
    lagrange_loss,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    shaped_rewards,
)

MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_gae_by_hand_with_ragged_rows():
    rewards = torch.tensor([[0.0, 0.5, 1.0], [2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, MASK, gamma, lam)
    # row 0, backwards: V after the last token is 0
    d2 = 1.0 + 0 - 0.3
    d1 = 0.5 + gamma * 0.3 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.1
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    torch.testing.assert_close(adv[0], torch.tensor([a0, a1, a2]))
    # row 1: one token, δ = 2 − 0.4
    torch.testing.assert_close(adv[1], torch.tensor([1.6, 0.0, 0.0]))
    torch.testing.assert_close(ret, (adv + values) * MASK)


def test_padding_never_enters_gae_or_losses():
    rewards = torch.tensor([[0.0, 0.5, 1.0], [2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]])
    garbage = MASK.logical_not().float() * 1e3
    clean = gae(rewards, values, MASK)
    dirty = gae(rewards + garbage, values - garbage, MASK)
    torch.testing.assert_close(clean[0], dirty[0])
    torch.testing.assert_close(clean[1], dirty[1])
    logp, old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, 0, 0]]), torch.tensor([[-1.1, -1.9, -0.4], [-1.4, 0, 0]])
    adv = torch.tensor([[1.0, -1.0, 0.5], [2.0, 0, 0]])
    a = ppo_policy_loss(logp, old, adv, MASK)
    b = ppo_policy_loss(logp + garbage, old - garbage, adv + garbage, MASK)
    assert a.loss.item() == pytest.approx(b.loss.item()) and a.approx_kl.item() == pytest.approx(b.approx_kl.item())
    w = masked_whiten(adv + garbage, MASK)
    assert (w[~MASK] == 0).all()
    assert w[MASK].mean().item() == pytest.approx(0, abs=1e-6) and w[MASK].std(unbiased=False).item() == pytest.approx(1, abs=1e-3)


def test_shaped_rewards_put_the_score_on_the_last_real_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 9.0, 9.0]])
    ref = torch.tensor([[-1.5, -0.5, -1.0], [-1.0, 0.0, 0.0]])
    scores = torch.tensor([3.0, -100.0])
    rewards, kl = shaped_rewards(logp, ref, MASK, scores, kl_coef=0.1, clip=50)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -0.5, 0.0], [-1.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.05, 3.0], [0.1 - 50, 0.0, 0.0]]))
    costs, _ = shaped_rewards(logp, ref, MASK, torch.tensor([1.0, 2.0]), kl_coef=0.1, sign=1.0)
    torch.testing.assert_close(costs, torch.tensor([[0.05, -0.05, 1.0], [-0.1 + 2.0, 0.0, 0.0]]))


def test_ppo_clip_and_value_losses_by_hand():
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # token 0: ratio 1.5 -> clipped to 1.2: max(-1.5, -1.2) = -1.2; token 1: ratio 0.5: max(-0.5, -0.8) = -0.5
    assert out.loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    assert out.approx_kl.item() == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2)
    values, old_v, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    # token 0: (1-2)^2 = 1 vs clipped V 0.2: (0.2-2)^2 = 3.24 -> 3.24; token 1: 1 vs 1 -> 1
    assert ppo_value_loss(values, old_v, returns, mask, clip=0.2).item() == pytest.approx(0.5 * (3.24 + 1) / 2)
    assert ppo_value_loss(values, old_v, returns, mask, clip=None).item() == pytest.approx(0.5 * (1 + 1) / 2)


def test_combined_advantage():
    a_r, a_c = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(combined_advantage(a_r, a_c, 3.0), torch.tensor([(1 - 1.5) / 4, (-2 - 3) / 4]))
    lam = torch.tensor(1.0, requires_grad=True)
    assert not combined_advantage(a_r, a_c, lam).requires_grad  # λ is a constant for the policy


@pytest.mark.parametrize("mean_cost,direction", [(0.5, 1), (-0.5, -1)])
def test_lambda_rises_above_the_budget_and_falls_below(mean_cost, direction):
    log_lambda = torch.nn.Parameter(torch.tensor(0.0))
    opt = torch.optim.SGD([log_lambda], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        lagrange_loss(log_lambda, mean_cost, threshold=0.0).backward()
        opt.step()
    assert (log_lambda.exp().item() - 1.0) * direction > 0
    # one step by hand: d/dlogλ of −(J − d)·e^{logλ} at logλ = 0 is −(J − d)
    p = torch.nn.Parameter(torch.tensor(0.0))
    lagrange_loss(p, mean_cost, 0.2).backward()
    assert p.grad.item() == pytest.approx(-(mean_cost - 0.2))
