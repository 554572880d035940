"""The DPO family and RLHF-V's Dense DPO, as pure functions of per-token log-probs.

Shapes: ``(pairs, tokens)`` for per-token values with a boolean mask of real response
tokens; ``(pairs,)`` for sequence scores. Reference values come in the same shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "ddpo")
#: losses on policy scores alone (no reference model); with the reference-based ones,
#: ``bco_pair`` and ``mdpo``, every loss the DPO trainer can mix
REFERENCE_FREE_LOSSES = ("simpo", "orpo", "sft")
PREFERENCE_LOSSES = (*LOSS_TYPES, "bco_pair", "mdpo", *REFERENCE_FREE_LOSSES)


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
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # named terms (pairs,), detached, for logs

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


def bco_pair_loss(
    h_chosen: torch.Tensor, h_rejected: torch.Tensor, *, beta: float = 0.1, delta: float | torch.Tensor = 0.0,
) -> DPOOutput:
    """BCO on pairs (TRL's ``bco_pair``; MPO's quality term): each response is judged on its own
    against a reward baseline δ (the running mean of β·h over the responses seen so far):
    −log σ(β h_w − δ) − log σ(−(β h_l − δ)). ``h`` = policy − reference sequence score."""
    chosen, rejected = beta * h_chosen, beta * h_rejected
    losses = -F.logsigmoid(chosen - delta) - F.logsigmoid(-(rejected - delta))
    return DPOOutput(losses=losses, chosen_rewards=chosen.detach(), rejected_rewards=rejected.detach())


def simpo_loss(
    chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, *, beta: float = 2.0, gamma: float = 0.5,
) -> DPOOutput:
    """SimPO (Meng et al., 2024): reference-free, on mean token log-probs (length-normalised),
    with a target margin γ: −log σ(β (m_w − m_l) − γ). Rewards are β·m."""
    chosen, rejected = beta * chosen_mean, beta * rejected_mean
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return DPOOutput(losses=losses, chosen_rewards=chosen.detach(), rejected_rewards=rejected.detach())


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, *, lam: float = 0.1) -> DPOOutput:
    """ORPO (Hong et al., 2024): reference-free; the chosen answer's NLL plus λ times the odds-ratio
    term −log σ(log odds(y_w) − log odds(y_l)), odds(y) = P(y) / (1 − P(y)) with log P(y) the mean
    token log-prob. Per pair, the NLL is the chosen answer's mean token NLL (TRL averages over the
    batch's tokens instead; equal when the answers have one length). Rewards are λ·m, as in TRL."""
    log_odds = (chosen_mean - rejected_mean) - (torch.log1p(-torch.exp(chosen_mean))
                                                - torch.log1p(-torch.exp(rejected_mean)))
    ratio = -F.logsigmoid(log_odds)
    nll = -chosen_mean
    return DPOOutput(losses=nll + lam * ratio, chosen_rewards=(lam * chosen_mean).detach(),
                     rejected_rewards=(lam * rejected_mean).detach(),
                     parts={"nll": nll.detach(), "odds_ratio": ratio.detach()})


def mdpo_loss(
    h_chosen: torch.Tensor,
    h_rejected: torch.Tensor,
    h_chosen_corrupted: torch.Tensor,
    *,
    beta: float = 0.1,
    conditional_weight: float = 1.0,
    anchor_weight: float = 1.0,
    anchor: float = 0.0,
) -> DPOOutput:
    """mDPO (Wang et al., EMNLP 2024): DPO plus a conditional term that prefers the chosen answer
    with the true image over the same answer with a corrupted image, −log σ(β (h_w − h_w')), and a
    reward anchor that keeps the chosen reward above δ, −log σ(β h_w − δ), so the preference must
    depend on the image and the chosen likelihood cannot fall. ``h_chosen_corrupted`` is the chosen
    answer's policy − reference score with the corrupted image."""
    standard = -F.logsigmoid(beta * (h_chosen - h_rejected))
    conditional = -F.logsigmoid(beta * (h_chosen - h_chosen_corrupted))
    anchored = -F.logsigmoid(beta * h_chosen - anchor)
    return DPOOutput(
        losses=standard + conditional_weight * conditional + anchor_weight * anchored,
        chosen_rewards=(beta * h_chosen).detach(),
        rejected_rewards=(beta * h_rejected).detach(),
        parts={"dpo": standard.detach(), "conditional": conditional.detach(), "anchor": anchored.detach()},
    )


def mix_losses(outputs: Sequence[DPOOutput], weights: Sequence[float], names: Sequence[str]) -> DPOOutput:
    """Several preference losses in one run (MPO: sigmoid + bco_pair + sft): the weighted sum of the
    per-pair losses; rewards are the first loss's; each weighted term is kept in ``parts``."""
    if not outputs or len(outputs) != len(weights) or len(outputs) != len(names):
        raise ValueError("mix_losses needs one weight and one name per loss")
    losses = sum(w * out.losses for out, w in zip(outputs, weights))
    parts = {name: (w * out.losses).detach() for out, w, name in zip(outputs, weights, names)}
    return DPOOutput(losses=losses, chosen_rewards=outputs[0].chosen_rewards,
                     rejected_rewards=outputs[0].rejected_rewards, parts=parts)
