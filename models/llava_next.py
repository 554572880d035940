"""LLaVA-NeXT (1.6): any-resolution tiling; each image is a base view plus a grid of crops.

The processor returns ``(images, crops, 3, H, W)`` pixel values padded to the largest crop
count, plus ``image_sizes``; the model unpads and adds a learned newline embedding per
row of patches. That newline is a bare parameter, not a module, so peft cannot save it
beside an adapter: it stays frozen under LoRA, and ``train_projector`` trains the MLP
projector only.
"""

from __future__ import annotations

from transformers import LlavaNextForConditionalGeneration

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import ModelInputsSpec


class LlavaNextAdapter(VLMAdapter):
    family = "llava_next"
    model_class = LlavaNextForConditionalGeneration
    vision_scope = "model.vision_tower"
    projector_scopes = ("model.multi_modal_projector",)
    language_scope = "model.language_model"
    inputs = ModelInputsSpec(image_keys=("pixel_values", "image_sizes"))
