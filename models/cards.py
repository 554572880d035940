"""Model cards: declarative descriptions of supported checkpoints.

Adding a checkpoint of a supported family means adding a TOML file to ``models/cards``,
not code. A card names the family (which adapter class handles it), the hub id, the chat
template used when the checkpoint's processor has none, the image placeholder, LoRA
targets and the recommended 4-bit settings.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mmalign.qlora import LoraSettings, QuantizationConfig


@dataclass(frozen=True)
class ModelCard:
    """A supported checkpoint. ``lora`` and ``quantization`` are its recommended settings,
    the defaults every loader falls back to (a TOML table overrides the generic defaults of
    :class:`LoraSettings` / :class:`QuantizationConfig` key by key)."""

    name: str
    family: str
    hub_id: str
    description: str
    image_token: str
    end_of_turn: str
    chat_template: str
    lora: LoraSettings
    quantization: QuantizationConfig
    params_b: float | None = None
    path: str | None = None  # weights shipped inside the package, relative to mmalign/models
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        try:
            lora = raw.pop("lora", {})
            if "targets" in lora:
                lora["target_modules"] = tuple(lora.pop("targets"))
            quant = raw.pop("quantization", {})
            known = {
                "name", "family", "hub_id", "description", "image_token", "end_of_turn",
                "chat_template", "params_b", "path",
            }
            extra = {k: raw.pop(k) for k in list(raw) if k not in known}
            return cls(**raw, lora=LoraSettings(**lora), quantization=QuantizationConfig(**quant), extra=extra)
        except TypeError as err:
            raise ValueError(f"model card {path}: {err}") from err

    def local_path(self) -> Path | None:
        """Folder of weights shipped with the package, if this card has any."""
        return _package_dir() / self.path if self.path else None


def _package_dir() -> Path:
    return Path(str(resources.files("mmalign.models")))


def _card_dir() -> Path:
    return _package_dir() / "cards"


def list_cards() -> list[ModelCard]:
    """All shipped model cards, sorted by name."""
    return sorted(
        (ModelCard.from_toml(p) for p in _card_dir().glob("*.toml")), key=lambda c: c.name
    )


def get_card(name_or_hub_id: str) -> ModelCard:
    """Find a card by its name (``llava-1.5-7b``) or hub id (``llava-hf/llava-1.5-7b-hf``)."""
    for card in list_cards():
        if name_or_hub_id in (card.name, card.hub_id):
            return card
    known = ", ".join(c.name for c in list_cards())
    raise KeyError(f"no model card named {name_or_hub_id!r}; known cards: {known}")
