"""Gemma 3 (vision variant): SigLIP tower, 4x4 average pooling to a fixed 256 soft tokens per
image, a linear projector, and a language model that attends bidirectionally within an image.

The processor pairs each text with its own images and marks image tokens in ``token_type_ids``;
the forward needs them for the bidirectional image blocks, so they travel with the text like
Qwen's token types. Cached features are one ``(tokens, hidden)`` entry per image; the model
takes them as one tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import Gemma3ForConditionalGeneration

from mmalign.models.adapter import VLMAdapter, additive_mask, images_by_text, joined_features
from mmalign.models.batch import ModelInputsSpec


class Gemma3Adapter(VLMAdapter):
    family = "gemma3"
    model_class = Gemma3ForConditionalGeneration
    vision_scope = "model.vision_tower"
    projector_scopes = ("model.multi_modal_projector",)
    language_scope = "model.language_model"
    inputs = ModelInputsSpec(image_keys=("pixel_values",), text_keys=("token_type_ids",))

    @classmethod
    def supports_shared_prefix(cls) -> bool:
        return True  # 1-D positions; the image blocks and sliding window go into the branch masks

    def branch_attention_mask(self, allowed: torch.Tensor, positions: torch.Tensor,
                              per_token: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """One mask per layer type, as Gemma 3 builds them for a plain sequence: full attention is
        the branch mask plus each image's tokens seeing each other; the sliding-window layers keep
        only keys less than ``sliding_window`` positions back (true positions, not packed ones)."""
        types = per_token["token_type_ids"]
        starts = (types == 1) & ~torch.nn.functional.pad(types == 1, (1, 0))[:, :-1]
        block = torch.where(types == 1, starts.long().cumsum(-1), 0)
        full = allowed | ((block[:, :, None] == block[:, None, :]) & (block[:, :, None] > 0))
        pos = positions[0]
        near = pos[:, None, :] > pos[:, :, None] - self.base_model.config.get_text_config().sliding_window
        return {"full_attention": additive_mask(full, dtype), "sliding_attention": additive_mask(full & near, dtype)}

    def _processor_images(self, texts: list[str], images: list[Image.Image]) -> Any:
        return images_by_text(texts, images, self.processor.boi_token)

    def encoder_outputs(self, features: dict[str, Any]) -> dict[str, Any]:
        return joined_features(features)
