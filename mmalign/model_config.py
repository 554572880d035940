"""How to load the model being trained: checkpoint, precision, 4-bit, LoRA, what trains.

Shared by every trainer (SFT, DPO, reward / cost models, PPO) so recipes look the same
across methods, in the spirit of TRL's ``ModelConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmalign.qlora import LoraSettings, QuantizationConfig


@dataclass
class ModelConfig:
    model_name_or_path: str = field(
        default="", metadata={"help": "Model card name, hub id or local folder of the base model."}
    )
    dtype: str = field(default="float32", metadata={"help": "dtype of non-quantized weights: float32, bfloat16, float16."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the language model in 4-bit (QLoRA)."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 or fp4."})
    bnb_4bit_use_double_quant: bool = field(default=True, metadata={"help": "Quantize the quantization constants too."})
    bnb_4bit_compute_dtype: str = field(default="bfloat16", metadata={"help": "dtype of 4-bit matmuls (float32 on CPU)."})
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (otherwise train the weights themselves)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
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

    def quantization(self) -> QuantizationConfig | None:
        if not self.load_in_4bit:
            return None
        return QuantizationConfig(
            quant_type=self.bnb_4bit_quant_type,
            double_quant=self.bnb_4bit_use_double_quant,
            compute_dtype=self.bnb_4bit_compute_dtype,
        )

    def lora(self) -> LoraSettings:
        targets = self.lora_target_modules
        if targets and len(targets) == 1 and targets[0] == "all-linear":
            targets = "all-linear"
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout, target_modules=targets)

    def load(self, *, gradient_checkpointing: bool = False, device_map=None):
        """Load the adapter ready for training as this config describes."""
        from mmalign.models import load_adapter

        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required")
        if self.load_in_4bit and not self.use_peft:
            raise ValueError("4-bit weights cannot be trained directly: set use_peft (QLoRA)")
        if self.train_vision and self.use_peft:
            raise ValueError("train_vision trains the vision tower in full: set use_peft false")
        adapter = load_adapter(
            self.model_name_or_path,
            dtype=self.dtype,
            quantization=self.quantization(),
            device_map=device_map,
            train_projector=self.train_projector,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
        )
        if self.train_vision:
            adapter.freeze(train_projector=True, train_vision=True)
        if self.use_peft:
            if self.adapter_path:
                adapter.load_adapter(self.adapter_path, is_trainable=True)
            else:
                adapter.add_lora(self.lora(), gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            adapter.model.gradient_checkpointing_enable()
        return adapter
