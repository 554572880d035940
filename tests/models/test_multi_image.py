"""Several images in one row: placeholders honoured in order, for every family.

A text prompt's ``<image>`` placeholders (or a conversation's image parts) place the
row's images in order, with the text between them kept where it was; cached features,
row selection and batches mixing rows of 0, 1 and 2 images give what each row alone gives.
"""

import pytest
import torch
from PIL import Image

from mmalign.models import load_adapter
from mmalign.models.adapter import concat_features
from mmalign.models.batch import concat_batches

from ..conftest import FAMILIES

TWO = "the left photo <image> and the right photo <image> which is red?"
TWO_PARTS = [{"type": "text", "text": "the left photo "}, {"type": "image"},
             {"type": "text", "text": " and the right photo "}, {"type": "image"},
             {"type": "text", "text": " which is red?"}]
ONE = "<image> what is in the image?"
ZERO = "what is a cat?"
RESPONSES = ["the left one is red.", "a blue cup.", "a small cat."]


def red():
    return Image.new("RGB", (40, 30), (200, 30, 30))


def green():
    return Image.new("RGB", (64, 48), (20, 200, 40))


def blue():
    return Image.new("RGB", (32, 32), (10, 10, 220))


def load(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    if not adapter.multi_image:
        pytest.skip(f"{family}: its adapter declares multi_image = False")
    adapter.model.eval()
    return adapter


def image_tokens(adapter, ids) -> int:
    return int((ids == adapter.base_model.config.image_token_id).sum())


def find(tokens: list[str], sub: list[str], start: int = 0) -> int:
    """Index of the first occurrence of ``sub`` in ``tokens`` at or after ``start``."""
    for j in range(start, len(tokens) - len(sub) + 1):
        if tokens[j:j + len(sub)] == sub:
            return j
    raise AssertionError(f"{sub} not found in {tokens[start:]}")


def test_llava_image_blocks_sit_where_the_placeholders_were_by_hand(tiny_dirs):
    adapter = load(tiny_dirs, "llava")
    batch = adapter.encode([[red(), green()]], [TWO], ["a cat."])
    tokens = adapter.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
    vision = adapter.base_model.config.vision_config
    per_image = (vision.image_size // vision.patch_size) ** 2  # CLS dropped ("default")
    block = ["<image>"] * per_image
    assert tokens == ["<s>", "user", ":", "the", "left", "photo", *block, "and", "the", "right", "photo", *block,
                      "which", "is", "red", "?", "assistant", ":", "a", "cat", ".", "</s>"]
    assert batch.images_per_row == [2] and batch.image_inputs["pixel_values"].shape[0] == 2
    # the pixels are in placeholder order: the first block reads the red image
    first = adapter.encode([[red()]], ["<image> a"], ["a"]).image_inputs["pixel_values"][0]
    assert torch.equal(batch.image_inputs["pixel_values"][0], first)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_images_tokens_sit_at_its_placeholder(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    batch = adapter.encode([[red(), green()]], [TWO], ["a cat."])
    ids = batch.input_ids[0]
    tokens = adapter.tokenizer.convert_ids_to_tokens(ids)
    tokenize = adapter.tokenizer.tokenize
    before = find(tokens, tokenize("the left photo"))
    between = find(tokens, tokenize("and the right photo"), before)
    after = find(tokens, tokenize("which is red?"), between)
    alone = [image_tokens(adapter, adapter.encode([[img]], ["<image> a"], ["a"]).input_ids[0])
             for img in (red(), green())]
    # each image's tokens (as many as that image alone has: the sizes differ for tiling families)
    # sit between the texts around its placeholder
    assert [image_tokens(adapter, part) for part in (ids[:before], ids[before:between], ids[between:after],
                                                     ids[after:])] == [0, alone[0], alone[1], 0]
    # the same row written as a conversation with image parts is the same tokens
    conv = adapter.encode([[red(), green()]], [[{"role": "user", "content": TWO_PARTS}]], ["a cat."])
    assert torch.equal(conv.input_ids, batch.input_ids)
    turns = adapter.encode_conversations(
        [[red(), green()]],
        [[{"role": "user", "content": TWO_PARTS}, {"role": "assistant", "content": [{"type": "text", "text": "a cat."}]}]],
    )
    assert torch.equal(turns.input_ids, batch.input_ids) and torch.equal(turns.response_mask, batch.response_mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_swapping_the_images_changes_the_row(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    alone = [adapter.response_logprobs(adapter.encode([[img]], [ONE], [RESPONSES[0]]))[0] for img in (red(), green())]
    assert not torch.allclose(*alone)  # every tiny model sees its image (else order could not show)
    a = adapter.response_logprobs(adapter.encode([[red(), green()]], [TWO], [RESPONSES[0]]))[0]
    b = adapter.response_logprobs(adapter.encode([[green(), red()]], [TWO], [RESPONSES[0]]))[0]
    assert not torch.allclose(a, b, atol=1e-4)


def mixed(adapter):
    images = [[red(), green()], [], [blue()]]
    prompts = [TWO, ZERO, ONE]
    return images, prompts, adapter.encode(images, prompts, RESPONSES)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_of_zero_one_and_two_images_equal_each_row_alone(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    images, prompts, batch = mixed(adapter)
    assert batch.images_per_row == [2, 0, 1]
    with torch.no_grad():
        plain, mask = adapter.response_logprobs(batch)
        features = adapter.image_features(batch)
        cached, cached_mask = adapter.response_logprobs(batch, features)
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-4)
        assert torch.equal(cached_mask, mask)
        for i in range(3):
            alone, alone_mask = adapter.response_logprobs(adapter.encode([images[i]], [prompts[i]], [RESPONSES[i]]))
            n = int(alone_mask.sum())
            assert int(mask[i].sum()) == n
            torch.testing.assert_close(plain[i, :n], alone[0, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_select_and_concat_keep_each_rows_images(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    images, prompts, batch = mixed(adapter)
    with torch.no_grad():
        features = adapter.image_features(batch)
        full, _ = adapter.response_logprobs(batch, features)
        sub, sub_features = adapter.select(batch, [2, 0], features)
        assert sub.images_per_row == [1, 2] and len(sub_features["image"].pooler_output) == 3
        picked, picked_mask = adapter.response_logprobs(sub, sub_features)
        for j, i in enumerate([2, 0]):
            n = int(picked_mask[j].sum())
            torch.testing.assert_close(picked[j, :n], full[i, :n], atol=1e-5, rtol=1e-4)
        # batches of 2, 0 and 1 images (as rollout chunks) joined with their cached features
        parts = [adapter.encode(images[i:i + 1], prompts[i:i + 1], RESPONSES[i:i + 1]) for i in range(3)]
        joined = concat_batches(parts, adapter.tokenizer.pad_token_id)
        joined_features = concat_features([adapter.image_features(p) for p in parts])
        together, together_mask = adapter.response_logprobs(joined, joined_features)
        for i in range(3):
            n = int(together_mask[i].sum())
            torch.testing.assert_close(together[i, :n], full[i, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_image_generation_batched_with_one_image_equals_each_alone(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    images, prompts = [[red(), green()], [blue()]], [TWO, ONE]
    batched = adapter.generate(images, prompts, max_new_tokens=6)
    alone = [adapter.generate([imgs], [p], max_new_tokens=6)[0] for imgs, p in zip(images, prompts)]
    assert batched == alone


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholder_and_image_counts_that_differ_name_the_row_and_field(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    with pytest.raises(ValueError, match=r"row 1, field 'prompt': has 2 <image> placeholder\(s\) but the row has 3"):
        adapter.encode([[blue()], [red(), green(), blue()]], [ONE, TWO], ["a", "b"])
    with pytest.raises(ValueError, match=r"row 0, field 'prompt': has 2 image part\(s\) but the row has 1"):
        adapter.encode([[red()]], [[{"role": "user", "content": TWO_PARTS}]], ["a"])
    with pytest.raises(ValueError, match="row 0, field 'messages': 2 image placeholders but 1 images"):
        adapter.encode_conversations([[red()]], [[{"role": "user", "content": TWO_PARTS},
                                                  {"role": "assistant", "content": "a"}]])


def test_a_family_without_multi_image_refuses_two_images_by_name(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    adapter.multi_image = False
    adapter.encode([[red()]], [ONE], ["a"])
    with pytest.raises(ValueError, match="row 0, field 'images': 2 images, but llava takes one per row"):
        adapter.encode([[red(), green()]], [TWO], ["a"])
