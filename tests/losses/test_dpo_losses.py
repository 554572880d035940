"""The DPO-family losses on hand-computed numbers (parity with TRL: tests/dpo/test_trl_parity.py)."""

import math

import pytest
import torch

from mmalign.losses.dpo import (
    bco_pair_loss,
    dpo_loss,
    dynamic_beta,
    mdpo_loss,
    mix_losses,
    orpo_loss,
    sequence_logps,
    sft_term,
    simpo_loss,
)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# policy chosen/rejected, reference chosen/rejected: h_w = 0.5, h_l = -1.0, delta = 1.5
PC, PR, RC, RR = torch.tensor([-4.0]), torch.tensor([-7.0]), torch.tensor([-4.5]), torch.tensor([-6.0])


def test_sigmoid_by_hand():
    out = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert out.loss.item() == pytest.approx(-logsig(0.15), abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(0.05) and out.rejected_rewards.item() == pytest.approx(-0.1)


def test_label_smoothing_robust_hinge_ipo_by_hand():
    eps, b = 0.1, 0.5
    cdpo = dpo_loss(PC, PR, RC, RR, beta=b, label_smoothing=eps).loss.item()
    assert cdpo == pytest.approx(-(1 - eps) * logsig(0.75) - eps * logsig(-0.75), abs=1e-7)
    robust = dpo_loss(PC, PR, RC, RR, beta=b, loss_type="robust", label_smoothing=eps).loss.item()
    assert robust == pytest.approx((-(1 - eps) * logsig(0.75) + eps * logsig(-0.75)) / (1 - 2 * eps), abs=1e-7)
    assert dpo_loss(PC, PR, RC, RR, beta=b, loss_type="hinge").loss.item() == pytest.approx(0.25)
    assert dpo_loss(PC, PR, RC, RR, beta=2.0, loss_type="hinge").loss.item() == 0.0
    assert dpo_loss(PC, PR, RC, RR, beta=b, loss_type="ipo").loss.item() == pytest.approx((1.5 - 1.0) ** 2)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")


def test_dense_dpo_score_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    mask = torch.tensor([[True, True, True, False]])
    weights = torch.tensor([[1.0, 5.0, 1.0, 5.0]])  # token 1 corrected; token 3 is padding
    assert sequence_logps(logps, mask).item() == -6.0
    assert sequence_logps(logps, mask, weights).item() == -1 - 10 - 3
    # RLHF-V normalisation: N = |y_u| + γ|y_c| = 2 + 5
    assert sequence_logps(logps, mask, weights, normalize=True).item() == pytest.approx(-14 / 7)
    assert sequence_logps(logps, mask, normalize=True).item() == pytest.approx(-2.0)


def test_dynamic_beta_and_sft_term():
    beta = dynamic_beta(torch.tensor([0.0, 2.0]), 0.1, weight=0.5, k=0.5)
    torch.testing.assert_close(beta, torch.tensor([0.1, 0.1 * (1 + 0.5 * (1 - math.exp(-1)))]))
    # a per-pair beta tensor feeds the loss elementwise
    losses = dpo_loss(PC.repeat(2), PR.repeat(2), RC.repeat(2), RR.repeat(2), beta=beta).losses
    assert losses[0].item() == pytest.approx(-logsig(0.15)) and losses[1] < losses[0]
    mask = torch.tensor([[True, True, False]])
    assert sft_term(torch.tensor([[-1.0, -3.0, -9.0]]), mask).item() == 2.0


def test_bco_pair_by_hand():
    # h_w = 0.5, h_l = -1.0, beta 0.5: rewards 0.25 and -0.5 against a baseline of 0.1
    out = bco_pair_loss(PC - RC, PR - RR, beta=0.5, delta=0.1)
    assert out.loss.item() == pytest.approx(-logsig(0.25 - 0.1) - logsig(0.5 + 0.1), abs=1e-7)
    assert out.chosen_rewards.item() == 0.25 and out.rejected_rewards.item() == -0.5


def test_simpo_by_hand():
    # mean token log-probs -1.2 (chosen) and -2.0 (rejected), beta 2, margin 0.5
    out = simpo_loss(torch.tensor([-1.2]), torch.tensor([-2.0]), beta=2.0, gamma=0.5)
    assert out.loss.item() == pytest.approx(-logsig(2.0 * 0.8 - 0.5), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-2.4)
    # a larger target margin asks for more: the loss grows
    assert simpo_loss(torch.tensor([-1.2]), torch.tensor([-2.0]), gamma=1.5).loss > out.loss


def test_orpo_by_hand():
    c, r = -0.5, -1.5  # mean token log-probs
    odds = lambda m: m - math.log(1 - math.exp(m))  # noqa: E731 (log odds)
    out = orpo_loss(torch.tensor([c]), torch.tensor([r]), lam=0.25)
    expected = -c + 0.25 * -logsig(odds(c) - odds(r))
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.parts["nll"].item() == pytest.approx(0.5) and out.chosen_rewards.item() == pytest.approx(-0.125)


def test_mdpo_by_hand():
    # h_w = 0.5, h_l = -1.0; the chosen answer with a corrupted image: h_w' = 0.2
    out = mdpo_loss(PC - RC, PR - RR, torch.tensor([0.2]), beta=0.5, conditional_weight=1.0, anchor_weight=0.5,
                    anchor=0.1)
    dpo, cond, anchor = -logsig(0.5 * 1.5), -logsig(0.5 * 0.3), -logsig(0.25 - 0.1)
    assert out.loss.item() == pytest.approx(dpo + cond + 0.5 * anchor, abs=1e-6)
    assert out.parts["conditional"].item() == pytest.approx(cond, abs=1e-6)
    # with both extra terms off it is DPO
    plain = mdpo_loss(PC - RC, PR - RR, torch.tensor([0.2]), beta=0.5, conditional_weight=0, anchor_weight=0)
    assert plain.loss.item() == pytest.approx(dpo_loss(PC, PR, RC, RR, beta=0.5).loss.item(), abs=1e-7)


def test_mixed_loss_is_the_weighted_sum_of_its_parts():
    sigmoid = dpo_loss(PC.repeat(2), PR.repeat(2), RC.repeat(2), RR.repeat(2), beta=0.1)
    bco = bco_pair_loss((PC - RC).repeat(2), (PR - RR).repeat(2), beta=0.1, delta=0.0)
    sft = orpo_loss(torch.tensor([-0.5, -0.7]), torch.tensor([-1.0, -1.0]), lam=0.0)  # the NLL alone
    mixed = mix_losses([sigmoid, bco, sft], [0.8, 0.2, 1.0], ["sigmoid", "bco_pair", "sft"])
    torch.testing.assert_close(mixed.losses, 0.8 * sigmoid.losses + 0.2 * bco.losses + sft.losses)
    assert mixed.parts["bco_pair"][0].item() == pytest.approx(0.2 * bco.losses[0].item())
    assert torch.equal(mixed.chosen_rewards, sigmoid.chosen_rewards)
    with pytest.raises(ValueError, match="one weight and one name per loss"):
        mix_losses([sigmoid, bco], [1.0], ["sigmoid", "bco_pair"])
