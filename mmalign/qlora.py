"""Settings for 4-bit quantization (bitsandbytes NF4) and LoRA adapters (peft).

Kept apart from any model family: adapters turn these settings into the concrete
``BitsAndBytesConfig`` / ``LoraConfig`` for their module layout.

:func:`import_bitsandbytes` imports bitsandbytes without letting it reach the network:
its CPU backend otherwise asks the model hub for an optional kernel
(``kernels-community/quantization-bitsandbytes``) while being imported, on machines with
AVX512-BF16, which makes an offline user wait. ``MMALIGN_HUB_KERNELS=1`` allows the fetch.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch

#: Set to 1 to let bitsandbytes fetch its optional hub kernels (network access).
HUB_KERNELS_ENV = "MMALIGN_HUB_KERNELS"


@contextlib.contextmanager
def _hub_kernels_refused() -> Iterator[None]:
    """While inside, ``kernels.get_kernel`` (the hub kernel loader) refuses without a request."""
    try:
        import kernels
    except ImportError:  # without the kernels package bitsandbytes cannot fetch anything
        yield
        return
    original = kernels.get_kernel

    def refuse(repo_id: str, *args: object, **kwargs: object) -> ModuleType:
        raise RuntimeError(f"mmalign does not fetch hub kernels such as {repo_id} (set {HUB_KERNELS_ENV}=1 to "
                           "allow); the built-in kernel is used")

    kernels.get_kernel = refuse
    try:
        yield
    finally:
        kernels.get_kernel = original


def import_bitsandbytes() -> ModuleType | None:
    """bitsandbytes, imported (once) without any network access unless ``MMALIGN_HUB_KERNELS=1``;
    ``None`` when it is not installed. Called before every model load, since peft imports
    bitsandbytes as soon as it is imported itself."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    allowed = os.environ.get(HUB_KERNELS_ENV, "").strip().lower() in ("1", "true", "yes")
    with contextlib.nullcontext() if allowed else _hub_kernels_refused():
        try:
            import bitsandbytes
        except ImportError:
            return None
    return bitsandbytes

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}") from None


@dataclass
class QuantizationConfig:
    """4-bit weight quantization of the language model (QLoRA).

    The vision tower, projector and output head are never quantized: they are small next to
    the language model, and quantizing the vision tower measurably hurts grounding.
    """

    load_in_4bit: bool = True
    quant_type: str = "nf4"  # "nf4" or "fp4"
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bit/param saved)
    compute_dtype: str = "bfloat16"  # dtype of the matmuls after dequantization

    def to_bitsandbytes(self, skip_modules: Sequence[str]):
        from transformers import BitsAndBytesConfig

        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {self.quant_type!r}")
        return BitsAndBytesConfig(
            load_in_4bit=self.load_in_4bit,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=resolve_dtype(self.compute_dtype),
            llm_int8_skip_modules=list(skip_modules),
        )


def keep_training_layout(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for AVX512-BF16 CPUs; returns layers seen.

    On such CPUs a ``Linear4bit`` converts its weight to a CPU-only packed layout (with
    bf16 block scales) the first time it runs in eval mode without gradients, e.g. during
    generation. Afterwards a training forward through that layer fails (an in-place bias add
    on a leaf) and evaluation numerics differ from training's. One layout keeps generation,
    log-probs and training consistent on every machine; GPUs never take that path.
    """
    layers = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            layers += 1
    return layers


@dataclass
class LoraSettings:
    """LoRA on the language model's linear layers.

    ``target_modules`` lists leaf names (``q_proj``, ``down_proj``...) matched only inside
    the language model, or ``"all-linear"`` for every linear layer there; ``None`` takes the
    model card's targets. The vision tower never receives LoRA unless ``include_vision``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Sequence[str] | str | None = None
    include_vision: bool = False
    bias: str = "none"


def lora_target_regex(scopes: Sequence[str], leaf_names: Sequence[str]) -> str:
    """A peft ``target_modules`` regex matching ``leaf_names`` below the given module scopes.

    peft full-matches a string ``target_modules`` against each module's qualified name.
    """
    if not leaf_names:
        raise ValueError("no LoRA target modules given")
    scope = "|".join(re.escape(s) for s in scopes)
    leaves = "|".join(re.escape(n) for n in leaf_names)
    return rf"(?:{scope})\..*\.(?:{leaves})"
