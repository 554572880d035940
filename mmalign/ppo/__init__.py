"""RL for VLMs: PPO with Fact-RLHF shaping, and Safe RLHF-V's PPO-Lagrangian."""

from mmalign.ppo.config import PPOConfig
from mmalign.ppo.shaping import ShapingConfig, shaping_terms, symbolic_reward
from mmalign.ppo.trainer import PPOTrainer, build_models, run_ppo

__all__ = ["PPOConfig", "PPOTrainer", "ShapingConfig", "build_models", "run_ppo", "shaping_terms", "symbolic_reward"]
