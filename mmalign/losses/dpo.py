"""The DPO family and RLHF-V's Dense DPO, as pure functions of per-token log-probs.

Shapes: ``(pairs, tokens)`` for per-token values with a boolean mask of real response
tokens; ``(pairs,)`` for sequence scores. Reference values come in the same shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "ddpo")


def sequence_logps(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    normalize: bool = False,
) -> torch.Tensor:
    """Score of each response from its token log-probs, ``(pairs, tokens) -> (pairs,)``.

    Plain DPO sums the log-probs. Dense DPO weighs each token (γ on corrected segments,
    1 elsewhere) and, with ``normalize``, divides by N = Σ weights = |y_u| + γ|y_c| (the
    RLHF-V paper's form). With unit weights and ``normalize`` this is the mean log-prob
    that IPO uses.
    """
    w = mask.to(token_logps.dtype)
    if weights is not None:
        w = w * weights.to(token_logps.dtype)
    total = (token_logps * w).sum(-1)
    if normalize:
        total = total / w.sum(-1).clamp(min=torch.finfo(total.dtype).tiny)
    return total


def dynamic_beta(reward_margin: torch.Tensor, beta: float, weight: float = 0.5, k: float = 0.5) -> torch.Tensor:
    """MM-DPO's per-pair β from a reward-model margin δ = r(y_w) − r(y_l).

    β(δ) = β₀ · (1 + w · (1 − exp(−k·δ))): confident pairs (large δ) get a larger β.
    """
    return beta * (1 + weight * (1 - torch.exp(-k * reward_margin)))


@dataclass
class DPOOutput:
    losses: torch.Tensor  # (pairs,)
    chosen_rewards: torch.Tensor  # β · h(y_w), detached
    rejected_rewards: torch.Tensor  # β · h(y_l), detached

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float | torch.Tensor = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """Preference loss on sequence scores ``(pairs,)``; h(y) = score_π(y) − score_ref(y).

    - sigmoid / ddpo: −log σ(βΔ), Δ = h_w − h_l (ddpo differs only in how scores are
      weighted); with ``label_smoothing`` ε: −(1−ε) log σ(βΔ) − ε log σ(−βΔ) (conservative DPO)
    - robust: (−(1−ε) log σ(βΔ) + ε log σ(−βΔ)) / (1−2ε), the unbiased estimator under
      label noise ε (Chowdhury et al.; TRL's "robust")
    - hinge: max(0, 1 − βΔ)
    - ipo: (Δ − 1/(2β))², with scores that are mean token log-probs
    ``beta`` may be a ``(pairs,)`` tensor (dynamic β).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose from {', '.join(LOSS_TYPES)}")
    h_chosen = policy_chosen - reference_chosen
    h_rejected = policy_rejected - reference_rejected
    delta = h_chosen - h_rejected
    if loss_type in ("sigmoid", "ddpo"):
        losses = -F.logsigmoid(beta * delta)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "robust":
        if not 0 <= label_smoothing < 0.5:
            raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
        losses = (
            -(1 - label_smoothing) * F.logsigmoid(beta * delta) + label_smoothing * F.logsigmoid(-beta * delta)
        ) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # ipo
        losses = (delta - 1 / (2 * beta)) ** 2
    return DPOOutput(
        losses=losses,
        chosen_rewards=(beta * h_chosen).detach(),
        rejected_rewards=(beta * h_rejected).detach(),
    )


def sft_term(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token negative log-likelihood of the chosen responses (RPO-style term)."""
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)
