"""On-policy group RL (the GRPO family) for VLMs, with verifiable visual rewards and Safe GRPO."""

from mmalign.grpo.config import GRPOConfig
from mmalign.grpo.rewards import (
    LengthReward,
    ObjectGroundingReward,
    answer_match,
    format_reward,
    grounding_scores,
)
from mmalign.grpo.trainer import GRPOTrainer, run_grpo

__all__ = ["GRPOConfig", "GRPOTrainer", "LengthReward", "ObjectGroundingReward", "answer_match", "format_reward",
           "grounding_scores", "run_grpo"]
