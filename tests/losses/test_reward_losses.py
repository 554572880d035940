import math

import pytest
import torch

from mmalign.losses.reward import bradley_terry_loss, cost_loss, pairwise_accuracy, sign_accuracy


def nls(x: float) -> float:  # -log sigmoid(x), by hand
    return math.log1p(math.exp(-x))


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    plain = (nls(1.0) + nls(-1.0)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(plain, abs=1e-6)
    # centering: |mean(r_w + r_l)| = |(1 + 1) / 2| = 1
    assert bradley_terry_loss(chosen, rejected, center_weight=0.1).item() == pytest.approx(plain + 0.1, abs=1e-6)
    # l2: mean of squares over the four scores = 0.5
    assert bradley_terry_loss(chosen, rejected, l2_weight=0.01).item() == pytest.approx(plain + 0.005, abs=1e-6)


def test_bradley_terry_is_shift_invariant_only_without_regularisers():
    c, r = torch.tensor([0.3, -1.2]), torch.tensor([0.1, 0.4])
    assert bradley_terry_loss(c + 5, r + 5).item() == pytest.approx(bradley_terry_loss(c, r).item(), abs=1e-6)
    assert bradley_terry_loss(c + 5, r + 5, center_weight=1e-3) > bradley_terry_loss(c, r, center_weight=1e-3)


def test_cost_loss_with_safe_unsafe_labels_by_hand():
    harmful, harmless = torch.tensor([2.0]), torch.tensor([-1.0])
    # ranking -log σ(3); unsafe sign +1: -log σ(2); safe sign -1: -log σ(-1 * -1)
    expected = nls(3.0) + nls(2.0) + nls(1.0) + 1e-3 * (4.0 + 1.0) / 2
    got = cost_loss(harmful, harmless, torch.tensor([1.0]), torch.tensor([-1.0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_graded_signs_weight_the_sign_term_and_zero_removes_its_gradient():
    harmful = torch.tensor([0.5], requires_grad=True)
    harmless = torch.tensor([0.2], requires_grad=True)
    # harmless rates: harmful -3 (sign +3), harmless 0 (sign 0 -> constant log 2)
    loss = cost_loss(harmful, harmless, torch.tensor([3.0]), torch.tensor([0.0]), l2_weight=0.0)
    assert loss.item() == pytest.approx(nls(0.3) + nls(1.5) + math.log(2), abs=1e-6)
    loss.backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # d/dC_s: only the ranking term, +σ(-(C_h - C_s))
    assert harmless.grad.item() == pytest.approx(sig(-0.3), abs=1e-6)
    # d/dC_h: ranking -σ(-0.3) and sign term -3 σ(-1.5)
    assert harmful.grad.item() == pytest.approx(-sig(-0.3) - 3 * sig(-1.5), abs=1e-6)


def test_accuracies():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])).item() == pytest.approx(1 / 3)
    costs = torch.tensor([0.5, -0.2, 0.1, -1.0])
    signs = torch.tensor([1.0, -1.0, -2.0, 0.0])  # last one unlabelled
    assert sign_accuracy(costs, signs).item() == pytest.approx(2 / 3)
    assert torch.isnan(sign_accuracy(costs, torch.zeros(4)))
