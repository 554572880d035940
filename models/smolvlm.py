"""SmolVLM 2 and SmolVLM / Idefics3: SigLIP tower, pixel shuffle, a linear connector, and a
Llama-style language model; an image is split into a grid of tiles plus a global view, each tile's
tokens framed by ``<fake_token_around_image>`` and a ``<row_r_col_c>`` token.

The processor pairs each text with its own images, its pixels are ``(texts, tiles, 3, H, W)``
and the encoder returns one entry per text. Cached features are regrouped one entry per image:
an image's tokens end with the run that follows its ``<global-img>`` token.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmalign.models.adapter import VLMAdapter, images_by_text, regroup_per_image
from mmalign.models.batch import EncodedBatch, ModelInputsSpec


class SmolVLMAdapter(VLMAdapter):
    family = "smolvlm"
    model_class = SmolVLMForConditionalGeneration
    vision_scope = "model.vision_model"
    projector_scopes = ("model.connector",)
    language_scope = "model.text_model"
    default_card_name = "smolvlm2-2.2b-instruct"
    inputs = ModelInputsSpec(image_keys=("pixel_values", "pixel_attention_mask"))
    disk_cache_refusal = "its pixel rows are texts, not images"

    def _processor_images(self, texts: list[str], images: list[Image.Image]) -> Any:
        return images_by_text(texts, images, self.processor.image_token)

    def _per_image(self, out: BaseModelOutputWithPooling, batch: EncodedBatch) -> BaseModelOutputWithPooling:
        return regroup_per_image(out, self.image_token_counts(batch))

    def image_token_counts(self, batch: EncodedBatch) -> list[int]:
        image_id = self.base_model.config.image_token_id
        global_id = self.tokenizer.convert_tokens_to_ids(
            getattr(self.processor, "global_image_token", None) or self.processor.global_image_tag)
        counts: list[int] = []
        for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist()):
            n, last_block = 0, False
            for token, real in zip(ids, mask):
                if not real:
                    continue
                if token == image_id:
                    n += 1
                elif last_block and n:
                    counts.append(n)
                    n, last_block = 0, False
                last_block |= token == global_id
        return counts


class Idefics3Adapter(SmolVLMAdapter):
    family = "idefics3"
    model_class = Idefics3ForConditionalGeneration
    default_card_name = "smolvlm-instruct"
