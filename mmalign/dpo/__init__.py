"""Preference optimisation: the DPO family and RLHF-V's Dense DPO."""

from mmalign.dpo.collator import DPOCollator, span_token_weights
from mmalign.dpo.config import DPOConfig
from mmalign.dpo.trainer import DPOTrainer, run_dpo

__all__ = ["DPOCollator", "DPOConfig", "DPOTrainer", "run_dpo", "span_token_weights"]
