"""Family-specific behaviour the shared contract relies on."""

import json

import pytest
import torch
from PIL import Image

from mmalign.models import detect_family, get_card, list_cards, load_adapter


def test_llava_next_any_resolution_gives_more_tokens_to_larger_images(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava_next"])
    image_id = adapter.base_model.config.image_token_id

    def count(size):
        batch = adapter.encode([Image.new("RGB", size)], ["describe the scene."])
        return int((batch.input_ids == image_id).sum()), batch.image_inputs["pixel_values"].shape[1]

    # 64x64 picks the 2x2 grid: base view 4x4=16 + an 8x8 patch grid 64 + 8 row newlines.
    assert count((64, 64)) == (16 + 64 + 8, 5)
    # 32x32 picks a 1x2 grid: 16 + a 4x8 grid unpadded to 4x4=16 + 4 newlines.
    assert count((32, 32)) == (16 + 16 + 4, 3)


def test_llava_token_count_matches_patch_grid(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    batch = adapter.encode([Image.new("RGB", (50, 70))], ["what is this?"])
    image_id = adapter.base_model.config.image_token_id
    assert int((batch.input_ids == image_id).sum()) == (32 // 8) ** 2  # CLS dropped


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_token_types_follow_image_tokens_and_pad_with_zero(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    batch = adapter.encode(
        [Image.new("RGB", (32, 32)), None], ["what is this?", "say something long please"],
        ["a cup.", "no."],
    )
    types = batch.text_inputs["mm_token_type_ids"]
    image_id = adapter.base_model.config.image_token_id
    assert torch.equal(types.bool(), batch.input_ids == image_id)
    assert batch.images_per_row == [1, 0]
    grid = batch.image_inputs["image_grid_thw"]
    assert int((batch.input_ids == image_id).sum()) == int(grid.prod(-1).sum()) // 4


def test_text_only_rows_work_for_llava(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    batch = adapter.encode(None, ["say yes."], ["yes."])
    assert not batch.image_inputs
    logps, mask = adapter.response_logprobs(batch)
    assert mask.sum() == 3  # "yes", ".", "</s>"


def test_cards_cover_the_supported_checkpoints():
    names = {c.name: c for c in list_cards()}
    assert {"llava-1.5-7b", "llava-1.5-13b", "llava-v1.6-mistral-7b", "qwen2-vl-7b-instruct",
            "qwen2.5-vl-7b-instruct"} <= set(names)
    for card in names.values():
        assert card.lora.target_modules and card.quantization.quant_type == "nf4" and card.quantization.load_in_4bit
        assert "{%" in card.chat_template
    assert get_card("llava-hf/llava-1.5-7b-hf").name == "llava-1.5-7b"
    with pytest.raises(KeyError, match="known cards"):
        get_card("no-such-model")


def test_detect_family_rejects_unsupported(tmp_path, tiny_dirs):
    assert detect_family(tiny_dirs["qwen2_5_vl"]) == "qwen2_5_vl"
    config = json.loads((tiny_dirs["llava"] / "config.json").read_text())
    config["model_type"] = "llama"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(config["text_config"] | {"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is not supported"):
        detect_family(bad)


def test_chat_template_renders_like_the_checkpoint_family(tiny_dirs):
    llava = load_adapter(tiny_dirs["llava"])
    assert llava.format_prompt("what is it?", 1) == "USER: <image>\nwhat is it? ASSISTANT:"
    qwen = load_adapter(tiny_dirs["qwen2_vl"])
    assert qwen.format_prompt("hi", 1).endswith(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )
    nxt = load_adapter(tiny_dirs["llava_next"])
    assert nxt.format_prompt("hi", 1) == "[INST] <image>\nhi [/INST]"
