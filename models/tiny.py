"""Tiny, randomly initialised instances of the supported model families.

They are real transformers classes with real processors, built entirely offline from a
word-level tokenizer, so every code path that loads a hub checkpoint can be exercised by
saving a tiny model to a folder and loading it back exactly as a user would. Useful for
tests, for `mmalign selftest`, and for debugging a pipeline before renting a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from mmalign.io import MODEL, atomic_dir, check_output
from mmalign.models.cards import get_card

#: Words every tiny tokenizer knows. Anything else maps to ``<unk>``.
BASE_WORDS = (
    "a an the is are was there in on of and or to with what which how many where who it this that "
    "image picture photo scene describe detail details please answer question yes no not i see "
    "can you tell me object objects color colour size small large big red green blue yellow "
    "black white orange purple circle square triangle star cat dog car tree house person ball "
    "cup left right top bottom middle one two three four five six seven eight nine ten "
    "user assistant system human gpt shown visible contains dangerous safe sorry cannot help "
    "knife fire gun sure here for be do does have has its some any none "
    # the words of the reward models' scoring prompt
    "now judge your last take these criteria into account accurate helpful natural concise gives "
    "asked reads as fluent language says needed without filler repetition every statement about true "
    "nothing claimed following facts support judged by quality score my "
    "system".split()
)
PUNCTUATION = list(".,:;!?'\"()[]/-<>|_")


def build_word_tokenizer(
    special_tokens: list[str],
    words: list[str] | tuple[str, ...] = BASE_WORDS,
    *,
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
    unk_token: str = "<unk>",
) -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer with offsets, built from a word list.

    Special tokens are registered as added tokens so they are matched before
    pre-tokenisation (an expanded run of ``<image>`` splits into one token each).
    """
    core = [pad_token, bos_token, eos_token, unk_token]
    specials = core + [t for t in special_tokens if t not in core]
    vocab: dict[str, int] = {}
    for token in [*specials, *PUNCTUATION, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A", special_tokens=[(bos_token, vocab[bos_token])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[4:]})
    return tokenizer


def _text_dims(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _clip_vision(image_size: int, patch_size: int, hidden: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden,
    )


def llava_processor(tokenizer, image_size: int, patch_size: int, chat_template: str):
    """A LLaVA-1.5 style processor: square CLIP preprocessing, CLS dropped ("default")."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    return LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def tiny_llava(image_size: int = 32, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    """A LLaVA-1.5 shaped model (CLIP + 2-layer MLP projector + Llama) and its processor."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = build_word_tokenizer(["<image>"])
    config = LlavaConfig(
        vision_config=_clip_vision(image_size, patch_size, hidden // 2),
        text_config=LlamaConfig(**_text_dims(tokenizer, hidden, layers)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    processor = llava_processor(tokenizer, image_size, patch_size, get_card("llava-1.5-7b").chat_template)
    return LlavaForConditionalGeneration(config), processor


def tiny_llava_next(image_size: int = 32, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    """A LLaVA-NeXT shaped model: any-resolution tiling over a 2x2 grid of crops."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = build_word_tokenizer(["<image>", "[INST]", "[/INST]"])
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size] * 2]
    config = LlavaNextConfig(
        vision_config=_clip_vision(image_size, patch_size, hidden // 2),
        text_config=MistralConfig(**_text_dims(tokenizer, hidden, layers), sliding_window=None),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints,
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=get_card("llava-v1.6-mistral-7b").chat_template,
    )
    return LlavaNextForConditionalGeneration(config), processor


_QWEN_SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|endoftext|>",
]


def _tiny_qwen(version: str, image_size: int, hidden: int, layers: int):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_word_tokenizer(
        _QWEN_SPECIALS, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    # The word-level tokenizer prepends no BOS for Qwen (Qwen's tokenizer adds none either).
    tokenizer.backend_tokenizer.post_processor = None
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    text = _text_dims(tokenizer, hidden, layers)
    head_dim = hidden // text["num_attention_heads"]
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
    }
    vision = dict(depth=2, hidden_size=hidden, num_heads=2, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    if version == "2":
        vision.update(embed_dim=hidden // 2, mlp_ratio=2)
        config_cls, model_cls, proc_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        card = "qwen2-vl-7b-instruct"
    else:
        vision.update(hidden_size=hidden // 2, intermediate_size=hidden, out_hidden_size=hidden,
                      window_size=32, fullatt_block_indexes=[1])
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        proc_cls, card = Qwen2_5_VLProcessor, "qwen2.5-vl-7b-instruct"
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": pixels // 4, "longest_edge": pixels},
        patch_size=8, temporal_patch_size=2, merge_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=8, temporal_patch_size=2, merge_size=2)
    processor = proc_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=get_card(card).chat_template,
    )
    return model_cls(config), processor


def tiny_qwen2_vl(image_size: int = 32, hidden: int = 64, layers: int = 2):
    """A Qwen2-VL shaped model (patch 8, 2x2 merge, M-RoPE) and its processor."""
    return _tiny_qwen("2", image_size, hidden, layers)


def tiny_qwen2_5_vl(image_size: int = 32, hidden: int = 64, layers: int = 2):
    """A Qwen2.5-VL shaped model (window attention ViT, M-RoPE) and its processor."""
    return _tiny_qwen("2.5", image_size, hidden, layers)


TINY_BUILDERS = {
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
}


def save_tiny(family: str, out_dir: str | Path, seed: int = 0, *, overwrite: bool = False) -> Path:
    """Build a tiny random model of ``family`` and save model + processor to ``out_dir``.

    The folder loads with ``from_pretrained`` exactly like a hub checkpoint. It is written
    atomically: an existing ``out_dir`` is replaced if it is a model (or empty), any other
    folder only with ``overwrite``.
    """
    if family not in TINY_BUILDERS:
        raise KeyError(f"unknown family {family!r}; choose from {sorted(TINY_BUILDERS)}")
    check_output(out_dir, replaces=MODEL, overwrite=overwrite)
    torch.manual_seed(seed)
    model, processor = TINY_BUILDERS[family]()
    with atomic_dir(out_dir, replaces=MODEL, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out_dir)
