"""Supervised fine-tuning of VLMs on conversations, loss on assistant tokens only."""

from mmalign.sft.collator import SFTCollator
from mmalign.sft.config import SFTConfig
from mmalign.sft.trainer import SFTTrainer, run_sft, sft_loss

__all__ = ["SFTCollator", "SFTConfig", "SFTTrainer", "run_sft", "sft_loss"]
