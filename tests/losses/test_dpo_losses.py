"""The DPO-family losses on hand-computed numbers (parity with TRL: tests/dpo/test_trl_parity.py)."""

import math

import pytest
import torch

from mmalign.losses.dpo import dpo_loss, dynamic_beta, sequence_logps, sft_term


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
