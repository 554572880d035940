"""Losses of scalar preference models: Bradley–Terry reward models and safety cost models.

Pure tensor functions: scores in, loss out. Convention for cost models: a positive cost
means unsafe, a negative cost safe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, *, center_weight: float = 0.0, l2_weight: float = 0.0
) -> torch.Tensor:
    """``−log σ(r_w − r_l)`` averaged over pairs, plus optional regularisers.

    Both keep the otherwise shift-invariant scores near zero, so a reward model can be
    used as PPO's reward without an offset: ``center_weight·|mean(r_w + r_l)|``
    (LLaVA-RLHF) and ``l2_weight·mean(r²)`` over both responses (Safe RLHF).
    """
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center_weight:
        loss = loss + center_weight * (chosen + rejected).mean().abs()
    if l2_weight:
        loss = loss + l2_weight * torch.cat([chosen, rejected]).square().mean()
    return loss


def cost_loss(
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    harmful_sign: torch.Tensor,
    harmless_sign: torch.Tensor,
    *,
    l2_weight: float = 1e-3,
) -> torch.Tensor:
    """Safe RLHF cost-model loss for pairs (more harmful ``y_h``, less harmful ``y_s``).

    ``−log σ(C_h − C_s) − log σ(s_h·C_h) − log σ(s_s·C_s) + η·mean(C²)``, averaged over
    pairs. The signs are +1 for an unsafe and −1 for a safe response (Safe RLHF), or the
    negated graded harmlessness −3…3 (Safe RLHF-V), where 0 leaves the sign term without
    gradient and larger magnitudes push the cost further from zero.
    """
    ranking = -F.logsigmoid(harmful - harmless)
    sign = -F.logsigmoid(harmful_sign * harmful) - F.logsigmoid(harmless_sign * harmless)
    loss = (ranking + sign).mean()
    if l2_weight:
        loss = loss + l2_weight * torch.cat([harmful, harmless]).square().mean()
    return loss


def pairwise_accuracy(better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """Share of pairs the model orders correctly (ties count as wrong)."""
    return (better > worse).float().mean()


def sign_accuracy(costs: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Share of responses whose cost has the labelled sign; unlabelled (sign 0) rows skipped."""
    labelled = signs != 0
    if not labelled.any():
        return costs.new_tensor(float("nan"))
    return ((costs[labelled] > 0) == (signs[labelled] > 0)).float().mean()


ENSEMBLE_AGGREGATIONS = ("mean", "worst_case", "uncertainty_weighted")


def aggregate_ensemble(scores: torch.Tensor, aggregation: str = "mean", *, uncertainty_weight: float = 1.0,
                       higher_is_better: bool = True) -> torch.Tensor:
    """One score per answer from K members' scores ``(K, N)`` (Coste et al., ICLR 2024).

    ``mean``: (1/K) Σ r_k. ``worst_case`` (WCO): the most pessimistic member, min_k r_k for
    a reward and max_k c_k for a cost. ``uncertainty_weighted`` (UWO): mean ∓ λ·var, the
    variance over members taken with 1/K (population variance), subtracted for a reward
    and added for a cost, so the policy gains nothing where the members disagree.
    """
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"ensemble scores must be (members, answers), got shape {tuple(scores.shape)}")
    mean = scores.mean(0)
    if aggregation == "mean":
        return mean
    if aggregation == "worst_case":
        return scores.amin(0) if higher_is_better else scores.amax(0)
    if aggregation == "uncertainty_weighted":
        penalty = uncertainty_weight * scores.var(0, unbiased=False)
        return mean - penalty if higher_is_better else mean + penalty
    raise ValueError(f"unknown ensemble aggregation {aggregation!r}; choose from {', '.join(ENSEMBLE_AGGREGATIONS)}")
