"""The GRPO family (GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++-baseline) as pure functions.

Shapes: N completions = prompts × G, groups are G consecutive rows. Per-completion values
(rewards, advantages, lengths) are ``(N,)``; per-token values are ``(N, T)`` right-padded,
with a bool or 0/1 float ``mask`` of completion tokens. Whatever padded positions hold
(even inf or NaN) never reaches a loss, a statistic or a gradient.

A training step is: ``group_advantages`` (optionally ``overlong_penalty`` added to the
rewards first and ``dynamic_sampling_mask`` to drop groups), then ``clipped_surrogate``
for the per-token loss (with the k3 KL term when β > 0), then ``aggregate_loss``. The
mean entropy for logging is ``aggregate_loss(entropies, mask, "token_mean")``, with the
per-token entropies from ``mmalign.models.batch.entropy_from_logits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
IMPORTANCE_LEVELS = ("token", "sequence")
LOSS_AGGREGATIONS = ("sequence_mean", "token_mean", "constant")
# TRL 1.16 GRPOConfig.loss_type -> the aggregation here that computes the same number.
# "dapo" divides by the token count of the whole generation batch (``num_items_in_batch``);
# pass that count as ``num_tokens`` to reproduce it when a step sees only part of the batch.
TRL_LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean", "dr_grpo": "constant"}


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    rewards = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
    return rewards.view(-1, group_size)


def _std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased (Bessel, ``torch.std``) standard deviation, 0 where there is a single value."""
    count = x.shape[dim] if dim is not None else x.numel()
    if count < 2:
        shape = x.shape[:dim] + x.shape[dim + 1 :] if dim is not None else ()
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    return x.std(dim=dim) if dim is not None else x.std()


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # (N,)
    group_mean: torch.Tensor  # (N // G,)
    group_std: torch.Tensor  # (N // G,) unbiased; 0 when G = 1
    zero_std_fraction: torch.Tensor  # share of groups whose rewards are all equal (no learning signal)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    estimator: str = "grpo",
    *,
    eps: float = 1e-4,
    zero_std_atol: float = 1e-8,
) -> AdvantageOutput:
    """Advantage of each completion against the other completions of its prompt.

    With r̄ and σ the mean and unbiased std (``torch.std``, Bessel; TRL's ``nanstd``) of the group:
    - grpo (Shao et al. 2024, DeepSeekMath §4.1.2, outcome supervision): (r − r̄) / (σ + eps)
    - dr_grpo (Liu et al. 2025): r − r̄; dividing by σ favours prompts that are too easy or
      too hard (small σ), so Dr. GRPO drops it
    - rloo (Ahmadian et al. 2024): r − mean of the other G − 1 rewards = G/(G−1)·(r − r̄),
      an unbiased baseline because it does not contain r itself; needs G ≥ 2
    - reinforce_pp (REINFORCE++-baseline, Hu et al. 2025): r − r̄, then whitened over the
      whole batch: (a − mean(a)) / (std(a) + eps), std unbiased over all N; the batch std is
      steadier than a per-group σ of a few samples
    ``eps = 1e-4`` is TRL's. A group of equal rewards gets advantage 0 (never NaN). The group
    statistics and ``zero_std_fraction`` (σ ≤ ``zero_std_atol``, TRL's ``isclose(σ, 0)``)
    are reported for every estimator, for logging and for DAPO's dynamic sampling.
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ADVANTAGE_ESTIMATORS)}")
    grouped = _grouped(rewards, group_size)
    if estimator == "rloo" and group_size < 2:
        raise ValueError("rloo needs group_size >= 2: the leave-one-out baseline of a single completion is undefined")
    mean = grouped.mean(dim=1)
    std = _std(grouped, dim=1)
    centred = grouped - mean[:, None]
    if estimator == "grpo":
        adv = centred / (std[:, None] + eps)
    elif estimator == "dr_grpo":
        adv = centred
    elif estimator == "rloo":
        adv = centred * (group_size / (group_size - 1))
    else:  # reinforce_pp
        adv = (centred - centred.mean()) / (_std(centred) + eps)
    return AdvantageOutput(
        advantages=adv.reshape(-1),
        group_mean=mean,
        group_std=std,
        zero_std_fraction=(std <= zero_std_atol).float().mean(),
    )


def dynamic_sampling_mask(rewards: torch.Tensor, group_size: int, *, atol: float = 1e-8) -> torch.Tensor:
    """DAPO's dynamic sampling: which groups to keep, ``(N // G,)`` bool.

    A group whose G rewards are all equal (unbiased σ ≤ ``atol``, the same test as
    ``zero_std_fraction``) has zero advantage everywhere, so it adds no gradient but still
    dilutes the batch; DAPO drops it and samples more prompts. A group of one is always
    dropped. Per completion: ``keep.repeat_interleave(group_size)``.
    """
    return _std(_grouped(rewards, group_size), dim=1) > atol


def overlong_penalty(
    lengths: torch.Tensor, max_length: int, cache_length: int, penalty_factor: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong punishment (eq. 13), a reward term added to each completion's reward.

    0 for |y| ≤ L_max − L_cache, then ((L_max − L_cache) − |y|) / L_cache · factor, falling
    linearly to −factor at L_max, and −factor beyond. A truncated answer is not necessarily
    wrong; the ramp tells the policy "too long" more gently than a hard −1. Matches TRL's
    ``get_soft_overlong_punishment`` for ``penalty_factor = 1``. ``lengths`` may be
    ``mask.sum(-1)``.
    """
    if not 0 <= cache_length <= max_length:
        raise ValueError(f"need 0 <= cache_length <= max_length, got {cache_length} and {max_length}")
    lengths = lengths if lengths.is_floating_point() else lengths.to(torch.get_default_dtype())
    start = max_length - cache_length
    ramp = (start - lengths) / max(cache_length, 1) * penalty_factor
    return torch.where(lengths <= start, 0.0, torch.where(lengths <= max_length, ramp, -penalty_factor))


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate k3 = exp(ref − logp) − (ref − logp) − 1 (Schulman's k3).

    Unbiased for samples from π, never negative, and lower-variance than ``logp − ref``;
    the GRPO paper (eq. 4) adds β times it to the per-token loss. Padding gets 0.
    """
    diff = ref_logps.detach() - logps
    if mask is not None:
        diff = torch.where(mask.bool(), diff, 0)
    return torch.exp(diff) - diff - 1


def _masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    x = torch.where(mask.bool(), x, 0)
    return x.sum() if dim is None else x.sum(dim)


@dataclass
class SurrogateOutput:
    per_token_loss: torch.Tensor  # (N, T): −min(ρA, clip(ρ)A) + β·KL, 0 on padding
    ratio: torch.Tensor  # (N, T) token ratios, or (N, 1) sequence ratios, detached
    clip_low_fraction: torch.Tensor  # ρ < 1 − ε_low with A < 0
    clip_high_fraction: torch.Tensor  # ρ > 1 + ε_high with A > 0
    clip_region_fraction: torch.Tensor  # either
    kl: torch.Tensor | None  # (N, T) k3 per token, 0 on padding; None without a reference


def clipped_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    importance_level: str = "token",
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
) -> SurrogateOutput:
    """Per-token clipped surrogate loss −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) (+ β·k3 KL).

    ``advantages`` is ``(N,)`` (one per completion, broadcast over its tokens) or ``(N, T)``.
    ``epsilon_high`` defaults to ``epsilon_low``; DAPO's clip-higher raises it (0.28) so
    unlikely tokens can still grow and entropy does not collapse.

    ``importance_level``:
    - token (GRPO / DAPO): ρ_t = π(y_t) / π_old(y_t)
    - sequence (GSPO, Zheng et al. 2025): s = exp(mean_t(log π − log π_old)) = (π(y)/π_old(y))^(1/|y|),
      one ratio per sequence, clipped as a whole and applied to every token of it. The
      gradient flows through the mean log-ratio, i.e. ∇s = s · mean_t ∇log π(y_t) as in the
      paper and TRL's ``importance_sampling_level="sequence"``. Token noise no longer
      reaches the ratio, which keeps long sequences (and MoE routing) stable.

    Clip statistics match TRL's ``clip_ratio/{low,high,region}_mean``: a token counts as
    clipped low when ρ < 1 − ε_low and A < 0, high when ρ > 1 + ε_high and A > 0, which is
    exactly where the min picks the clipped term and the gradient is zero. Fractions are
    over real tokens (token level) or over sequences (sequence level, as TRL); sequences
    without a real token are not counted (TRL counts them as unclipped).
    ``old_logps`` and ``ref_logps`` are constants: they are detached.
    """
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance_level {importance_level!r}; choose from {', '.join(IMPORTANCE_LEVELS)}")
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    real = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    elif importance_level == "sequence":
        raise ValueError("sequence-level importance needs one advantage per sequence, shape (N,)")
    advantages = advantages.to(logps.dtype)
    log_ratio = torch.where(real, logps - old_logps.detach(), 0)
    if importance_level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True) / real.sum(-1, keepdim=True).clamp(min=1)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    kl = None
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps, mask)
        if beta:
            loss = loss + beta * kl
    per_token_loss = torch.where(real, loss.expand(real.shape), 0)

    with torch.no_grad():
        low = (ratio < 1 - epsilon_low) & (advantages < 0)
        high = (ratio > 1 + epsilon_high) & (advantages > 0)
        counted = real if importance_level == "token" else real.any(-1, keepdim=True)

        def fraction(flags: torch.Tensor) -> torch.Tensor:
            return (flags & counted).sum() / counted.sum().clamp(min=1)

        stats = fraction(low), fraction(high), fraction(low | high)
    return SurrogateOutput(per_token_loss, ratio.detach(), *stats, kl)


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "sequence_mean",
    *,
    max_completion_length: int | None = None,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``(N, T)`` over its real tokens to a scalar.

    - sequence_mean (GRPO paper eq. 3; TRL ``grpo``): mean over each sequence's tokens, then
      over sequences. Every sequence weighs the same, so a token of a long answer counts less.
    - token_mean (DAPO's token-level loss; TRL ``bnpo``, and ``dapo`` with ``num_tokens``): Σ over all real
      tokens / their number (or ``num_tokens``, the token count of the whole generation
      batch, so that micro-batches add up to the batch mean). Every token weighs the same.
    - constant (Dr. GRPO; TRL ``dr_grpo``): Σ over all real tokens / (N · max_completion_length).
      A normaliser that depends on no length removes the length bias; it needs
      ``max_completion_length`` (the generation limit, not this batch's padded width).
    A sequence without a real token counts as 0 in sequence_mean (as in TRL).
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose from {', '.join(LOSS_AGGREGATIONS)}")
    if mode == "sequence_mean":
        per_sequence = _masked_sum(per_token_loss, mask, dim=-1) / mask.sum(-1).clamp(min=1).to(per_token_loss.dtype)
        return per_sequence.mean()
    total = _masked_sum(per_token_loss, mask)
    if mode == "token_mean":
        count = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=total.device)
        return total / count.clamp(min=1).to(total.dtype)
    if max_completion_length is None:
        raise ValueError("the constant aggregation (Dr. GRPO) needs max_completion_length")
    return total / (per_token_loss.shape[0] * max_completion_length)


def safe_advantages(
    reward_advantages: torch.Tensor, cost_advantages: torch.Tensor, lagrange: torch.Tensor | float
) -> torch.Tensor:
    """Safe RLHF(-V)'s PPO-Lagrangian advantage (A_r − λ·A_c) / (1 + λ) with λ a constant.

    The same form as ``mmalign.losses.ppo.combined_advantage``; here A_r and A_c are the
    group advantages (``group_advantages``) of the rewards and of the costs. Dividing by
    1 + λ keeps the scale of the advantage as λ grows; λ (not log λ) is detached, since it is
    trained by its own loss (``mmalign.losses.ppo.lagrange_loss``).
    """
    lam = torch.as_tensor(lagrange, dtype=reward_advantages.dtype, device=reward_advantages.device).detach()
    return (reward_advantages - lam * cost_advantages) / (1 + lam)
