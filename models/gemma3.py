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
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmalign.models.adapter import VLMAdapter, images_by_text
from mmalign.models.batch import ModelInputsSpec


class Gemma3Adapter(VLMAdapter):
    family = "gemma3"
    model_class = Gemma3ForConditionalGeneration
    vision_scope = "model.vision_tower"
    projector_scopes = ("model.multi_modal_projector",)
    language_scope = "model.language_model"
    inputs = ModelInputsSpec(image_keys=("pixel_values",), text_keys=("token_type_ids",))

    @classmethod
    def shared_prefix_refusal(cls) -> str:
        return ("a packed branch mask cannot keep Gemma 3's bidirectional attention within an image "
                "(token_type_ids) nor its sliding-window layers")

    def _processor_images(self, texts: list[str], images: list[Image.Image]) -> Any:
        return images_by_text(texts, images, self.processor.boi_token)

    def encoder_outputs(self, features: dict[str, Any]) -> dict[str, Any]:
        pooled = features["image"].pooler_output
        if isinstance(pooled, torch.Tensor):
            return features
        return {"image": BaseModelOutputWithPooling(pooler_output=torch.cat(list(pooled))[None])}
