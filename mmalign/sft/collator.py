"""Batch conversations through the adapter; labels are the assistant tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmalign.models.adapter import VLMAdapter


@dataclass
class SFTCollator:
    """Rows with ``messages`` (TRL conversational format) and optional ``images``.

    Returns the adapter's flat features plus ``labels``: ``input_ids`` with every
    non-assistant position (image, prompt, template, padding) set to -100, the
    convention transformers uses to count tokens across gradient accumulation.
    """

    adapter: VLMAdapter
    max_length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [row.get("images") or [] for row in rows]
        conversations = [row["messages"] for row in rows]
        batch = self.adapter.encode_conversations(images, conversations, max_length=self.max_length)
        features = batch.as_features()
        features["labels"] = batch.input_ids.masked_fill(~batch.response_mask, -100)
        return features
