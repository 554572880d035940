"""Loss functions as pure tensor maths: tensors in, tensors out, no models."""

from mmalign.losses.grpo import (
    ADVANTAGE_ESTIMATORS,
    IMPORTANCE_LEVELS,
    LOSS_AGGREGATIONS,
    TRL_LOSS_TYPES,
    AdvantageOutput,
    SurrogateOutput,
    aggregate_loss,
    clipped_surrogate,
    dynamic_sampling_mask,
    group_advantages,
    k3_kl,
    overlong_penalty,
    safe_advantages,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IMPORTANCE_LEVELS",
    "LOSS_AGGREGATIONS",
    "TRL_LOSS_TYPES",
    "AdvantageOutput",
    "SurrogateOutput",
    "aggregate_loss",
    "clipped_surrogate",
    "dynamic_sampling_mask",
    "group_advantages",
    "k3_kl",
    "overlong_penalty",
    "safe_advantages",
]
