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
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer with offsets, built from a word list.

    Special tokens are registered as added tokens so they are matched before
    pre-tokenisation (an expanded run of ``<image>`` splits into one token each).
    ``named_tokens`` become tokenizer attributes (``tokenizer.boi_token``...), the
    model-specific special tokens some processors read, saved with the tokenizer.
    """
    named_tokens = named_tokens or {}
    special_tokens = [*special_tokens, *(t for t in named_tokens.values() if t not in special_tokens)]
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
        model_specific_special_tokens=named_tokens,
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


def _chatml_tokenizer(specials: list[str], named_tokens: dict[str, str] | None = None):
    """A word-level tokenizer for the Qwen-based language models: ChatML specials, no BOS."""
    tokenizer = build_word_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>", *specials], bos_token="<|endoftext|>",
        eos_token="<|im_end|>", pad_token="<|endoftext|>", named_tokens=named_tokens,
    )
    tokenizer.backend_tokenizer.post_processor = None  # Qwen's tokenizer adds no BOS either
    return tokenizer


_QWEN_VISION_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _tiny_qwen(version: str, image_size: int, hidden: int, layers: int):
    """Qwen2-VL, Qwen2.5-VL or Qwen3-VL: the same token and processor layout (patch 8, 2x2
    merge, M-RoPE); the vision towers and Qwen3-VL's interleaved rotary sections differ."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = _chatml_tokenizer(_QWEN_VISION_SPECIALS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_VISION_SPECIALS}
    text = _text_dims(tokenizer, hidden, layers)
    head_dim = hidden // text["num_attention_heads"]
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
    }
    vision = dict(depth=2, hidden_size=hidden, num_heads=2, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    video_cls = Qwen2VLVideoProcessor
    if version == "2":
        vision.update(embed_dim=hidden // 2, mlp_ratio=2)
        config_cls, model_cls, proc_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        card = "qwen2-vl-7b-instruct"
    elif version == "2.5":
        vision.update(hidden_size=hidden // 2, intermediate_size=hidden, out_hidden_size=hidden,
                      window_size=32, fullatt_block_indexes=[1])
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        proc_cls, card = Qwen2_5_VLProcessor, "qwen2.5-vl-7b-instruct"
    else:  # SigLIP-style ViT with learned interpolated positions, DeepStack, interleaved M-RoPE
        text["head_dim"] = head_dim
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(hidden_size=hidden // 2, intermediate_size=hidden, out_hidden_size=hidden,
                      num_position_embeddings=16, deepstack_visual_indexes=[0])
        config_cls, model_cls, proc_cls = Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        video_cls, card = Qwen3VLVideoProcessor, "qwen3-vl-8b-instruct"
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
    processor = proc_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_cls(patch_size=8, temporal_patch_size=2, merge_size=2),
        chat_template=get_card(card).chat_template,
    )
    return model_cls(config), processor


def tiny_qwen2_vl(image_size: int = 32, hidden: int = 64, layers: int = 2):
    """A Qwen2-VL shaped model (patch 8, 2x2 merge, M-RoPE) and its processor."""
    return _tiny_qwen("2", image_size, hidden, layers)


def tiny_qwen2_5_vl(image_size: int = 32, hidden: int = 64, layers: int = 2):
    """A Qwen2.5-VL shaped model (window attention ViT, M-RoPE) and its processor."""
    return _tiny_qwen("2.5", image_size, hidden, layers)


def tiny_qwen3_vl(image_size: int = 32, hidden: int = 64, layers: int = 2):
    """A Qwen3-VL shaped model: SigLIP-style ViT with learned interpolated positions,
    DeepStack features fed into the first LM layers, interleaved M-RoPE."""
    return _tiny_qwen("3", image_size, hidden, layers)


def _siglip_vision(image_size: int, patch_size: int, hidden: int):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size)


def tiny_gemma3(image_size: int = 32, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    """A Gemma 3 shaped model: SigLIP tower, average-pooled to a fixed number of soft tokens,
    bidirectional attention over each image's tokens (``token_type_ids``)."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
    )

    tokenizer = build_word_tokenizer(
        ["<start_of_turn>", "<end_of_turn>"], (*BASE_WORDS, "model"), bos_token="<bos>", eos_token="<eos>",
        named_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                      "image_token": "<image_soft_token>"},
    )
    text = _text_dims(tokenizer, hidden, layers)
    text.update(head_dim=hidden // text["num_attention_heads"], sliding_window=64,
                query_pre_attn_scalar=hidden // text["num_attention_heads"],
                layer_types=["sliding_attention", "full_attention"][:layers])  # Gemma 3: 5 local, then 1 global
    tokens_per_image = 4
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**text),
        vision_config=_siglip_vision(image_size, patch_size, hidden // 2),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, image_seq_length=tokens_per_image,
        chat_template=get_card("gemma-3-4b-it").chat_template,
    )
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers starts the projection at zero, which would hide every image
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        weight.normal_(0.0, weight.shape[0] ** -0.5)
    return model, processor


def tiny_internvl(image_size: int = 32, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    """An InternVL 3 shaped model (transformers-native class): InternViT, pixel shuffle to a
    quarter of the patches, MLP projector, Qwen2 language model; large images are tiled."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    tokenizer = _chatml_tokenizer([], {"start_image_token": "<img>", "end_image_token": "</img>",
                                       "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    tokens_per_tile = (image_size // patch_size) ** 2 // 4
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=hidden // 2, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=2,
            image_size=[image_size, image_size], patch_size=[patch_size, patch_size]),
        text_config=Qwen2Config(**_text_dims(tokenizer, hidden, layers)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=tokens_per_tile,
        tie_word_embeddings=False,
    )
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": image_size, "width": image_size},
                                              crop_to_patches=True, min_patches=1, max_patches=4),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size={"height": image_size, "width": image_size}),
        image_seq_length=tokens_per_tile,
        chat_template=get_card("internvl3-8b").chat_template,
    )
    return InternVLForConditionalGeneration(config), processor


def tiny_llava_onevision(image_size: int = 32, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    """A LLaVA-OneVision shaped model: SigLIP tower, any-resolution tiling, Qwen2 language model."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
    )

    tokenizer = _chatml_tokenizer(["<image>", "<video>"])
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size] * 2]
    config = LlavaOnevisionConfig(
        vision_config=_siglip_vision(image_size, patch_size, hidden // 2),
        text_config=Qwen2Config(**_text_dims(tokenizer, hidden, layers)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size},
                                                     image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}),
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=get_card("llava-onevision-qwen2-7b-ov").chat_template,
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


def _tiny_smolvlm(version: str, image_size: int, patch_size: int, hidden: int, layers: int):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
        SmolVLMVisionConfig,
    )

    grid = [f"<row_{r}_col_{c}>" for r in range(1, 3) for c in range(1, 3)]
    tokenizer = build_word_tokenizer(
        ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", "<image>",
         *grid], bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
    )
    tokenizer.backend_tokenizer.post_processor = None  # the chat template writes <|im_start|> itself
    vision = dict(hidden_size=hidden // 2, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    tokens_per_tile = (image_size // patch_size) ** 2 // 4  # pixel shuffle, scale factor 2
    sizes = dict(size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size})
    if version == "smolvlm":
        config_cls, vision_cls, model_cls = SmolVLMConfig, SmolVLMVisionConfig, SmolVLMForConditionalGeneration
        processor_kwargs = dict(image_processor=SmolVLMImageProcessor(**sizes),
                                video_processor=SmolVLMVideoProcessor(**sizes), image_seq_len=tokens_per_tile)
        processor_cls, card = SmolVLMProcessor, "smolvlm2-2.2b-instruct"
    else:
        config_cls, vision_cls, model_cls = Idefics3Config, Idefics3VisionConfig, Idefics3ForConditionalGeneration
        processor_kwargs = dict(image_processor=Idefics3ImageProcessor(**sizes), image_seq_len=tokens_per_tile)
        processor_cls, card = Idefics3Processor, "smolvlm-instruct"
    config = config_cls(
        vision_config=vision_cls(**vision),
        text_config=LlamaConfig(**_text_dims(tokenizer, hidden, layers)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
    )
    processor = processor_cls(tokenizer=tokenizer, chat_template=get_card(card).chat_template, **processor_kwargs)
    return model_cls(config), processor


def tiny_smolvlm(image_size: int = 32, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    """A SmolVLM 2 shaped model: SigLIP tower, pixel shuffle, image split into a grid of tiles
    plus a global view, each tile's tokens framed by row/column tokens; Llama language model."""
    return _tiny_smolvlm("smolvlm", image_size, patch_size, hidden, layers)


def tiny_idefics3(image_size: int = 32, patch_size: int = 8, hidden: int = 64, layers: int = 2):
    """An Idefics3 / SmolVLM (v1) shaped model: the same design under the Idefics3 classes."""
    return _tiny_smolvlm("idefics3", image_size, patch_size, hidden, layers)


TINY_BUILDERS = {
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl,
    "gemma3": tiny_gemma3,
    "internvl": tiny_internvl,
    "llava_onevision": tiny_llava_onevision,
    "smolvlm": tiny_smolvlm,
    "idefics3": tiny_idefics3,
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
