"""mmalign: align LLaVA-style multimodal LLMs with human and AI feedback.

The top-level names are imported lazily so ``import mmalign`` stays fast and the CLI's
``--help`` does not pay for torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_adapter": "mmalign.models",
    "list_cards": "mmalign.models",
    "get_card": "mmalign.models",
    "VLMAdapter": "mmalign.models",
    "EncodedBatch": "mmalign.models",
    "ScalarHeadModel": "mmalign.models",
    "QuantizationConfig": "mmalign.qlora",
    "LoraSettings": "mmalign.qlora",
    "run_selftest": "mmalign.selftest",
    "ModelConfig": "mmalign.model_config",
    "load_recipe": "mmalign.config_io",
    "SFTConfig": "mmalign.sft",
    "SFTTrainer": "mmalign.sft",
    "DPOConfig": "mmalign.dpo",
    "DPOTrainer": "mmalign.dpo",
    "RewardConfig": "mmalign.reward",
    "RewardTrainer": "mmalign.reward",
    "RewardTemplate": "mmalign.reward",
    "RewardScorer": "mmalign.reward",
    "load_reward_model": "mmalign.reward",
    "RewardEnsemble": "mmalign.reward",
    "run_reward_model": "mmalign.reward",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmalign' has no attribute {name!r}")
