"""Multi-turn encoding: every assistant turn is a response, nothing else is."""

import pytest
import torch
from PIL import Image

from mmalign.models import load_adapter

from ..conftest import FAMILIES


def conversation():
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": "a red cup."},
        {"role": "user", "content": "how many?"},
        {"role": "assistant", "content": [{"type": "text", "text": "one."}]},
    ]


def test_llava_multi_turn_labels_by_hand(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    batch = adapter.encode_conversations([Image.new("RGB", (32, 32))], [conversation()])
    tokens = adapter.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
    labelled = [t for t, m in zip(tokens, batch.response_mask[0]) if m]
    assert labelled == ["a", "red", "cup", ".", "</s>", "one", ".", "</s>"]
    # the full sequence, image run collapsed: the second user turn is not a label
    text = " ".join(t for i, t in enumerate(tokens) if t != "<image>" or tokens[i - 1] != "<image>")
    assert text == ("<s> user : <image> what is it ? assistant : a red cup . </s> "
                    "user : how many ? assistant : one . </s>")
    first = tokens.index("a")
    assert batch.response_mask[0].nonzero().flatten().tolist() == [
        *range(first, first + 5), *range(len(tokens) - 3, len(tokens))]
    assert batch.response_offsets[0] == [(0, 1), (2, 5), (6, 9), (9, 10), (10, 10), (0, 3), (3, 4), (4, 4)]


def test_qwen_multi_turn_keeps_newline_after_end_of_turn(tiny_dirs):
    adapter = load_adapter(tiny_dirs["qwen2_vl"])
    batch = adapter.encode_conversations([Image.new("RGB", (32, 32))], [conversation()])
    tokens = adapter.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
    labelled = [t for t, m in zip(tokens, batch.response_mask[0]) if m]
    assert labelled == ["a", "red", "cup", ".", "<|im_end|>", "one", ".", "<|im_end|>"]
    segments = adapter.conversation_segments(conversation())
    assert [resp for _, resp in segments] == [False, True, False, True]
    # the newline the template writes after <|im_end|> opens the next non-assistant piece
    assert segments[2][0] == "\n<|im_start|>user\nhow many?<|im_end|>\n<|im_start|>assistant\n"
    # token types mark exactly the image tokens
    types = batch.text_inputs["mm_token_type_ids"][0]
    assert torch.equal(types.bool(), batch.input_ids[0] == adapter.base_model.config.image_token_id)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_turn_conversation_equals_encode(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    image = Image.new("RGB", (40, 32), "blue")
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the image?"}]},
        {"role": "assistant", "content": "a blue square."},
    ]
    a = adapter.encode_conversations([image], [conv])
    b = adapter.encode([image], ["what is in the image?"], ["a blue square."])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)
    assert a.response_offsets == b.response_offsets
    for key in b.image_inputs:
        assert torch.equal(a.image_inputs[key], b.image_inputs[key])


def test_conversation_errors_name_the_row(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    img = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="row 1: .*end with an assistant message"):
        adapter.encode_conversations([img, img], [conversation(), conversation()[:3]])
    with pytest.raises(ValueError, match="row 0, field .messages.: 1 image placeholders but 2 images"):
        adapter.encode_conversations([[img, img]], [conversation()])
