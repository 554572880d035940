"""The tiny scene VLM: a real LLaVA (CLIP + MLP projector + Llama) for the scene world.

It is small enough (a few million parameters) to pretrain on a laptop CPU in minutes and
ships with the package (card ``scene-vlm``; ``load_adapter("scene-vlm")``), so every method
in mmalign can be run end to end without a GPU or a download. Its tokenizer is word-level
over the scene world's vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mmalign.models.tiny import build_word_tokenizer, llava_processor


@dataclass
class SceneVLMConfig:
    image_size: int = 96
    patch_size: int = 16  # 36 image tokens per image, 2x2 per cell of the world's 3x3 grid
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 6
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 8
    max_positions: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


def build_scene_vlm(vocabulary: list[str], config: SceneVLMConfig | None = None):
    """A randomly initialised scene VLM and its processor (tokenizer over ``vocabulary``)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from mmalign.models.cards import get_card

    config = config or SceneVLMConfig()
    tokenizer = build_word_tokenizer(["<image>"], words=["user", "assistant", *vocabulary])
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=4 * config.vision_hidden,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=4 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model_config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    processor = llava_processor(tokenizer, config.image_size, config.patch_size,
                                get_card("scene-vlm").chat_template)
    return LlavaForConditionalGeneration(model_config), processor
