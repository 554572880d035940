"""LLaVA-OneVision: SigLIP tower, any-resolution tiling (up to 3x3 crops, ``anyres_max_9``),
2-layer MLP projector, Qwen2 language model; single images, several images and video.

As in LLaVA-NeXT, pixels are ``(images, crops, 3, H, W)`` with ``image_sizes``, and the learned
newline embedding is a bare parameter that stays frozen under LoRA. The processor also counts the
images of each text (``batch_num_images``): a text with one image is tiled, a text with several
is not, and the model reads the same count to unpad its features.
"""

from __future__ import annotations

from transformers import LlavaOnevisionForConditionalGeneration

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import ModelInputsSpec


class LlavaOnevisionAdapter(VLMAdapter):
    family = "llava_onevision"
    model_class = LlavaOnevisionForConditionalGeneration
    vision_scope = "model.vision_tower"
    projector_scopes = ("model.multi_modal_projector",)
    language_scope = "model.language_model"
    inputs = ModelInputsSpec(image_keys=("pixel_values", "image_sizes", "batch_num_images"))
    disk_cache_refusal = "its processor counts images per text (batch_num_images)"
