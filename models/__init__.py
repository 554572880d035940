"""Model adapters: one contract (``VLMAdapter``) over several VLM families.

>>> from mmalign.models import load_adapter
>>> adapter = load_adapter("llava-hf/llava-1.5-7b-hf", quantization=QuantizationConfig())
"""

from __future__ import annotations

from pathlib import Path

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import EncodedBatch, last_token_index
from mmalign.models.cards import ModelCard, get_card, list_cards
from mmalign.models.gemma3 import Gemma3Adapter
from mmalign.models.internvl import InternVLAdapter
from mmalign.models.llava import LlavaAdapter
from mmalign.models.llava_next import LlavaNextAdapter
from mmalign.models.llava_onevision import LlavaOnevisionAdapter
from mmalign.models.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from mmalign.models.qwen3_vl import Qwen3VLAdapter
from mmalign.models.scalar_head import ScalarHeadModel
from mmalign.models.smolvlm import Idefics3Adapter, SmolVLMAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    cls.family: cls for cls in (
        LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, Qwen2VLAdapter, Qwen2_5_VLAdapter,
        Qwen3VLAdapter, Gemma3Adapter, InternVLAdapter, SmolVLMAdapter, Idefics3Adapter,
    )
}


def detect_family(name_or_path: str | Path, trust_remote_code: bool = False) -> str:
    """The adapter family of a checkpoint, from its config's ``model_type``."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{name_or_path}: model_type {model_type!r} is not supported; "
            f"supported families: {', '.join(sorted(ADAPTERS))}"
        )
    return model_type


def _named_card(name: str) -> ModelCard | None:
    """The card ``name`` names (a card name or hub id that is not a local folder), or None;
    a missing local path is an error rather than a hub id to look up."""
    if Path(name).exists():
        return None
    try:
        return get_card(name)
    except KeyError:
        if Path(name).is_absolute() or name.startswith((".", "~")):  # a path, not a hub id
            raise FileNotFoundError(f"model folder {name} does not exist (nor is it a model card name)") from None
        return None


def card_for(name_or_path: str | Path, *, trust_remote_code: bool = False) -> ModelCard:
    """The card that describes a checkpoint: its own (by card name or hub id), else its
    family's default card; :func:`load_adapter` gives the adapter the same one."""
    return _named_card(str(name_or_path)) or ADAPTERS[detect_family(name_or_path, trust_remote_code)].default_card()


def load_adapter(name_or_path: str | Path, *, family: str | None = None, **kwargs) -> VLMAdapter:
    """Load any supported checkpoint: a model card name, a hub id or a local folder.

    Keyword arguments go to :meth:`VLMAdapter.from_pretrained` (``dtype``,
    ``quantization``, ``device_map``, ``train_projector``...).
    """
    name = str(name_or_path)
    card = kwargs.get("card")
    if card is None and (card := _named_card(name)) is not None:
        kwargs["card"] = card
        name = str(card.local_path() or card.hub_id)
    family = family or (card.family if isinstance(card, ModelCard) else None) or detect_family(
        name, kwargs.get("trust_remote_code", False)
    )
    if family not in ADAPTERS:
        raise ValueError(f"unknown family {family!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[family].from_pretrained(name, **kwargs)


__all__ = [
    "ADAPTERS",
    "EncodedBatch",
    "Gemma3Adapter",
    "Idefics3Adapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "ModelCard",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "SmolVLMAdapter",
    "ScalarHeadModel",
    "VLMAdapter",
    "card_for",
    "detect_family",
    "get_card",
    "last_token_index",
    "list_cards",
    "load_adapter",
]
