"""Reward and cost models: Bradley–Terry, Fact-RLHF's factually augmented RM, Safe RLHF cost models."""

from mmalign.reward.collator import ScalarPairCollator
from mmalign.reward.config import RewardConfig
from mmalign.reward.data import ScoredPair, scored_pair
from mmalign.reward.ensemble import RewardEnsemble, load_scoring_model
from mmalign.reward.scoring import RewardScorer, load_reward_model
from mmalign.reward.template import RewardTemplate, encode_for_scoring
from mmalign.reward.trainer import RewardTrainer, run_reward_model

__all__ = [
    "RewardConfig",
    "RewardEnsemble",
    "RewardScorer",
    "RewardTemplate",
    "RewardTrainer",
    "ScalarPairCollator",
    "ScoredPair",
    "encode_for_scoring",
    "load_reward_model",
    "load_scoring_model",
    "run_reward_model",
    "scored_pair",
]
