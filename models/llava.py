"""LLaVA-1.5: CLIP vision tower, 2-layer MLP projector, Llama/Vicuna language model."""

from __future__ import annotations

from transformers import LlavaForConditionalGeneration

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import ModelInputsSpec


class LlavaAdapter(VLMAdapter):
    family = "llava"
    model_class = LlavaForConditionalGeneration
    vision_scope = "model.vision_tower"
    projector_scopes = ("model.multi_modal_projector",)
    language_scope = "model.language_model"
    default_card_name = "llava-1.5-7b"
    inputs = ModelInputsSpec(image_keys=("pixel_values",))
