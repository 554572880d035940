"""Qwen2-VL and Qwen2.5-VL: native-resolution ViT, 2x2 patch merger, M-RoPE.

Pixel values arrive as flattened patches for all images of a batch with one
``image_grid_thw`` row per image; the language model needs the grids and the token
types (``mm_token_type_ids``) even when image features are cached, to build its
3-D rotary positions. The merger (``visual.merger``) is the projector.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import ModelInputsSpec

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


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
