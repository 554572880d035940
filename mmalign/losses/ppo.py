"""PPO and PPO-Lagrangian maths on per-token tensors of right-padded responses.

Every tensor is ``(batch, response_len)`` with a boolean ``mask`` marking real response
tokens; padding never enters a reward, an advantage, a return or a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens; whatever the padded positions hold (even inf) is ignored."""
    return torch.where(mask.bool(), x, 0).sum() / mask.sum().clamp(min=1).to(x.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked entries to unit variance (and zero mean); padding stays 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real response token of each row (rows need at least one)."""
    return (mask.long().cumsum(-1) * mask.long()).argmax(-1)


def shaped_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    kl_coef: float,
    *,
    sign: float = -1.0,
    clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``sign·β·kl_t`` everywhere plus the sequence score on the last token.

    ``kl_t = log π(y_t) − log π_ref(y_t)``. A reward uses ``sign = −1`` (the KL is a
    penalty); Safe RLHF-V's cost uses ``sign = +1`` (drifting from the reference counts as
    cost). ``clip`` bounds the scores first (Safe RLHF-V: ±50). Returns (rewards, kl).
    """
    kl = (logprobs - ref_logprobs) * mask
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    rewards = sign * kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded rows; returns (advantages, returns).

    ``δ_t = r_t + γ V_{t+1} − V_t`` with ``V`` after the last real token taken as 0, and
    ``A_t = δ_t + γλ A_{t+1}``; returns are ``A_t + V_t``. Padded positions get 0.
    """
    mask_f = mask.to(values.dtype)
    values = values * mask_f
    rewards = rewards * mask_f
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask_f[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask_f


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    clip: float = 0.2,
) -> PolicyLossOutput:
    """PPO-clip: ``mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`` over real tokens.

    ``approx_kl`` is the ``mean((ρ − 1) − log ρ)`` estimator of KL(old ‖ new), used for
    early stopping.
    """
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, 0)  # padding: ratio 1, no gradient
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return PolicyLossOutput(loss, clip_fraction, approx_kl)


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
    clip: float | None = 0.2,
) -> torch.Tensor:
    """Clipped value loss ``0.5·mean(max((V − R)², (V_clip − R)²))`` over real tokens."""
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def combined_advantage(reward_adv: torch.Tensor, cost_adv: torch.Tensor, lagrange: torch.Tensor | float):
    """Safe RLHF's ``(A_r − λ·A_c) / (1 + λ)`` with λ treated as a constant."""
    lam = lagrange.detach() if isinstance(lagrange, torch.Tensor) else torch.tensor(float(lagrange))
    return (reward_adv - lam * cost_adv) / (1 + lam)


def lagrange_loss(log_lambda: torch.Tensor, mean_cost: torch.Tensor | float, threshold: float) -> torch.Tensor:
    """Loss of the multiplier: ``−(J_C − d)·λ`` with ``λ = exp(log λ)``.

    Gradient descent on it raises λ while the mean episode cost J_C is above the budget
    ``d`` and lowers it otherwise; storing log λ keeps λ positive.
    """
    return -(torch.as_tensor(mean_cost, dtype=log_lambda.dtype) - threshold) * log_lambda.exp()
