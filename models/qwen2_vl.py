"""Qwen2-VL and Qwen2.5-VL: native-resolution ViT, 2x2 patch merger, M-RoPE.

Pixel values arrive as flattened patches for all images of a batch with one
``image_grid_thw`` row per image; the language model needs the grids and the token
types (``mm_token_type_ids``) even when image features are cached, to build its
3-D rotary positions. The merger (``visual.merger``) is the projector.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import EncodedBatch, ModelInputsSpec

_QWEN_INPUTS = ModelInputsSpec(
    image_keys=("pixel_values", "image_grid_thw"),
    text_keys=("mm_token_type_ids",),
    forward_image_keys=("image_grid_thw",),
)


class Qwen2VLAdapter(VLMAdapter):
    family = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration
    vision_scope = "model.visual"
    projector_scopes = ("model.visual.merger",)
    language_scope = "model.language_model"
    inputs = _QWEN_INPUTS

    @classmethod
    def supports_shared_prefix(cls) -> bool:
        return True

    def position_ids(self, batch: EncodedBatch) -> torch.Tensor:
        """M-RoPE positions ``(3, rows, seq)`` (temporal, height, width), built by the model's
        own ``get_rope_index`` from the token types and image grids: an image's tokens span its
        grid, and text after the largest position so far continues from it + 1 in all three,
        which is why an answer can restart there. Qwen3-VL's ``get_rope_index`` takes the same
        arguments."""
        positions, _ = self.base_model.model.get_rope_index(
            batch.input_ids,
            mm_token_type_ids=batch.text_inputs["mm_token_type_ids"],
            image_grid_thw=batch.image_inputs.get("image_grid_thw"),
            attention_mask=batch.attention_mask,
        )
        return positions


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
