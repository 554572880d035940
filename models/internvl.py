"""InternVL 3 / 3.5 (the transformers-native ``InternVLForConditionalGeneration``): InternViT,
pixel shuffle to a quarter of the patches, MLP projector, Qwen2 / Qwen3 language model.

A large image is cut into tiles (plus a thumbnail), so the processor's pixel rows are tiles, not
images, and the encoder returns one entry per tile. Cached features are regrouped one entry per
image (its tiles' tokens, from the run of ``<IMG_CONTEXT>`` tokens between ``<img>`` and
``</img>``) and joined again for the forward.
"""

from __future__ import annotations

from typing import Any

from transformers import InternVLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmalign.models.adapter import VLMAdapter, joined_features, regroup_per_image
from mmalign.models.batch import EncodedBatch, ModelInputsSpec


class InternVLAdapter(VLMAdapter):
    family = "internvl"
    model_class = InternVLForConditionalGeneration
    vision_scope = "model.vision_tower"
    projector_scopes = ("model.multi_modal_projector",)
    language_scope = "model.language_model"
    default_card_name = "internvl3-8b"
    inputs = ModelInputsSpec(image_keys=("pixel_values",))
    disk_cache_refusal = "its pixel rows are tiles, not images"

    def _per_image(self, out: BaseModelOutputWithPooling, batch: EncodedBatch) -> BaseModelOutputWithPooling:
        return regroup_per_image(out, self.image_token_counts(batch))

    def encoder_outputs(self, features: dict[str, Any]) -> dict[str, Any]:
        return joined_features(features)
