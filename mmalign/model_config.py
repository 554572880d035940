"""How to load the model being trained: checkpoint, precision, 4-bit, LoRA, what trains.

Shared by every trainer (SFT, DPO, reward / cost models, PPO) so recipes look the same
across methods, in the spirit of TRL's ``ModelConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mmalign.config_io import OptionChecks, accepts_aliases
from mmalign.models import ModelCard, card_for, load_adapter
from mmalign.qlora import DTYPES, LoraSettings, QuantizationConfig

#: attention kernels transformers knows by name (a hub kernel, ``org/repo``, is accepted too)
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@accepts_aliases({"use_bnb_nested_quant": "bnb_4bit_use_double_quant"})
@dataclass
class ModelConfig:
    model_name_or_path: str = field(
        default="", metadata={"help": "Model card name, hub id or local folder of the base model."}
    )
    dtype: str = field(default="float32", metadata={"help": "dtype of non-quantized weights: float32, bfloat16, float16."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the language model in 4-bit (QLoRA)."})
    bnb_4bit_quant_type: str | None = field(
        default=None, metadata={"help": "4-bit data type: nf4 or fp4; default: the model card's."}
    )
    bnb_4bit_use_double_quant: bool | None = field(
        default=None, metadata={"help": "Quantize the quantization constants too; default: the model card's."}
    )
    bnb_4bit_compute_dtype: str | None = field(
        default=None, metadata={"help": "dtype of 4-bit matmuls (float32 on CPU); default: the model card's."}
    )
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (otherwise train the weights themselves)."})
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank; default: the model card's."})
    lora_alpha: int | None = field(
        default=None, metadata={"help": "LoRA scaling numerator (scale = alpha / r); default: the model card's."}
    )
    lora_dropout: float | None = field(
        default=None, metadata={"help": "Dropout on the LoRA input; default: the model card's."}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Leaf module names in the language model, or 'all-linear'; default: the model card's."},
    )
    adapter_path: str | None = field(
        default=None, metadata={"help": "Start from a saved LoRA adapter (e.g. the SFT adapter) instead of a fresh one."}
    )
    train_projector: bool = field(default=False, metadata={"help": "Also train the vision-language projector."})
    train_vision: bool = field(default=False, metadata={"help": "Also train the vision tower (full training only)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: sdpa, eager, flash_attention_2."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the checkpoint."})

    def __post_init__(self):
        """Every option's type and range, and the combinations that cannot train, checked
        before anything loads: one ``ConfigError`` (a ``ValueError``) listing each problem."""
        c = OptionChecks(self)
        c.text("model_name_or_path")
        c.choice("dtype", DTYPES)
        c.flag("load_in_4bit")
        c.choice("bnb_4bit_quant_type", ("nf4", "fp4"), optional=True)
        c.flag("bnb_4bit_use_double_quant", optional=True)
        c.choice("bnb_4bit_compute_dtype", DTYPES, optional=True)
        c.flag("use_peft")
        c.number("lora_r", 1, integer=True, optional=True)
        c.number("lora_alpha", 1, integer=True, optional=True)
        c.number("lora_dropout", 0, 1, high_open=True, optional=True)
        targets = self.lora_target_modules
        c.rule(targets is None or (isinstance(targets, list | tuple) and len(targets) > 0
                                   and all(isinstance(t, str) and t for t in targets)),
               "lora_target_modules", "lora_target_modules must be a non-empty list of module names (or "
               f"[all-linear]) or null, got {targets!r}")
        c.text("adapter_path", optional=True)
        c.flag("train_projector")
        c.flag("train_vision")
        c.flag("trust_remote_code")
        attention = self.attn_implementation
        c.rule(attention in ATTENTION or (isinstance(attention, str) and "/" in attention), "attn_implementation",
               f"attn_implementation must be one of {', '.join(ATTENTION)} or a hub kernel (org/repo), "
               f"got {attention!r}")
        if not c.problems:
            c.rule(not (self.load_in_4bit and not self.use_peft), "use_peft",
                   "load_in_4bit needs use_peft: 4-bit weights cannot be trained directly (QLoRA trains LoRA)")
            c.rule(not (self.train_vision and self.use_peft), "train_vision",
                   "train_vision trains the vision tower in full: set use_peft false")
            c.rule(not (self.adapter_path and not self.use_peft), "adapter_path",
                   "adapter_path starts from a LoRA adapter: it needs use_peft true")
        c.done()

    def card(self) -> ModelCard:
        """The checkpoint's model card: checks that the model exists and its family is
        supported from its config alone, so a run can refuse it before loading anything."""
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required")
        return card_for(self.model_name_or_path, trust_remote_code=self.trust_remote_code)

    def quantization(self, card: ModelCard) -> QuantizationConfig | None:
        """4-bit settings: the fields set here, the rest from the card's recommendation."""
        if not self.load_in_4bit:
            return None
        return replace(card.quantization, load_in_4bit=True, **_given(
            quant_type=self.bnb_4bit_quant_type, double_quant=self.bnb_4bit_use_double_quant,
            compute_dtype=self.bnb_4bit_compute_dtype))

    def lora(self, card: ModelCard) -> LoraSettings:
        """LoRA settings: the fields set here, the rest from the card's recommendation."""
        targets = self.lora_target_modules
        if targets and len(targets) == 1 and targets[0] == "all-linear":
            targets = "all-linear"
        return replace(card.lora, **_given(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                                           target_modules=targets or None))

    def load_base(self, *, device_map=None):
        """The base as this config loads it (precision, 4-bit), without LoRA: for scoring
        adapters trained on it."""
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required")
        card = card_for(self.model_name_or_path, trust_remote_code=self.trust_remote_code)
        return load_adapter(
            self.model_name_or_path,
            dtype=self.dtype,
            quantization=self.quantization(card),
            device_map=device_map,
            train_projector=self.train_projector,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
        )

    def load(self, *, seed: int | None = None, gradient_checkpointing: bool = False, device_map=None):
        """Load the adapter ready for training as this config describes.

        ``seed`` seeds every generator first, so a fresh LoRA (and whatever the caller draws
        next, such as a reward head) repeats: trainers seed only once the model exists, and
        torch's own starting seed differs per process. ``None`` draws from the current state."""
        if seed is not None:
            from transformers import set_seed

            set_seed(seed)
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required")
        if self.load_in_4bit and not self.use_peft:
            raise ValueError("4-bit weights cannot be trained directly: set use_peft (QLoRA)")
        if self.train_vision and self.use_peft:
            raise ValueError("train_vision trains the vision tower in full: set use_peft false")
        adapter = self.load_base(device_map=device_map)
        if self.train_vision:
            adapter.freeze(train_projector=True, train_vision=True)
        if self.use_peft:
            if self.adapter_path:
                adapter.load_adapter(self.adapter_path, is_trainable=True)
            else:
                adapter.add_lora(self.lora(adapter.card), gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            adapter.model.gradient_checkpointing_enable()
        return adapter


def _given(**values: Any) -> dict[str, Any]:
    """The options a recipe or flag actually set (``None`` means: keep the card's)."""
    return {k: v for k, v in values.items() if v is not None}
