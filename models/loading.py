"""Loading a checkpoint into a ``VLMAdapter`` and telling its parts apart.

A mixin: the family class declares ``family``, ``model_class``, ``vision_scope``,
``projector_scopes`` and ``default_card_name``; this turns them into a loaded, frozen
model (fp32 / bf16 / 4-bit NF4) and into parameter lists per part.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import torch

from mmalign.models.cards import ModelCard, get_card, list_cards
from mmalign.qlora import (
    QuantizationConfig,
    import_bitsandbytes,
    keep_training_layout,
    resolve_dtype,
)


class LoadingMixin:
    """``from_pretrained``, the model card, and freezing of vision tower and projector."""

    @classmethod
    def default_card(cls) -> ModelCard:
        if cls.default_card_name:
            return get_card(cls.default_card_name)
        for card in list_cards():
            if card.family == cls.family:
                return card
        raise LookupError(f"no model card for family {cls.family!r}")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        card: ModelCard | str | None = None,
        dtype: str | torch.dtype = "float32",
        quantization: QuantizationConfig | None = None,
        device_map: str | dict | None = None,
        train_projector: bool = False,
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
    ) -> Self:
        """Load model and processor exactly as a user would, from a folder or hub id.

        With ``quantization`` the language model is loaded in 4 bits; the vision tower,
        projector and output head stay in ``dtype``. Vision tower and projector are frozen
        (``train_projector=True`` unfreezes the projector). bitsandbytes (which peft and
        4-bit loading import) never reaches the network (:func:`mmalign.qlora.import_bitsandbytes`).
        """
        from transformers import AutoProcessor

        import_bitsandbytes()
        if isinstance(card, str):
            card = get_card(card)
        card = card or cls._card_for(str(name_or_path))
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
        if quantization is not None and quantization.load_in_4bit:
            skip = [cls.vision_scope, *cls.projector_scopes, "lm_head"]
            kwargs["quantization_config"] = quantization.to_bitsandbytes(skip)
        if device_map is not None:
            kwargs["device_map"] = device_map
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        folder = Path(name_or_path)
        if folder.is_dir() and not any(folder.glob("*.safetensors")):  # never unpickle a checkpoint
            raise FileNotFoundError(f"{folder}: no .safetensors weights (checkpoints are read from "
                                    "safetensors only, never from pickle files)")
        model = cls.model_class.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **kwargs
        )
        if quantization is not None and quantization.load_in_4bit:
            keep_training_layout(model)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        adapter = cls(model, processor, card)
        adapter.freeze(train_projector=train_projector)
        return adapter

    @classmethod
    def _card_for(cls, name_or_path: str) -> ModelCard:
        try:
            card = get_card(name_or_path)
            if card.family == cls.family:
                return card
        except KeyError:
            pass
        return cls.default_card()

    @property
    def base_model(self) -> torch.nn.Module:
        """The transformers model underneath any peft wrapper."""
        from peft import PeftModel

        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def quantized(self) -> bool:
        return bool(getattr(self.base_model, "is_loaded_in_4bit", False))

    def _is_under(self, name: str, scopes: Sequence[str]) -> bool:
        name = re.sub(r"^base_model\.model\.", "", name)
        return any(name == s or name.startswith(s + ".") for s in scopes)

    def vision_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [
            (n, p)
            for n, p in self.base_model.named_parameters()
            if self._is_under(n, [self.vision_scope])
            and not self._is_under(n, self.projector_scopes)
        ]

    def projector_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [
            (n, p)
            for n, p in self.base_model.named_parameters()
            if self._is_under(n, self.projector_scopes)
        ]

    def freeze(self, train_projector: bool = False, train_vision: bool = False) -> None:
        """Freeze the vision tower and the projector unless asked to train them."""
        self.train_projector = train_projector
        for _, p in self.vision_parameters():
            p.requires_grad_(train_vision)
        for _, p in self.projector_parameters():
            p.requires_grad_(train_projector)
