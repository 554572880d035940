"""The shared-prefix forward scores every branch exactly as its own sequence does."""

import pytest
import torch
from PIL import Image

from mmalign.models import load_adapter
from mmalign.models.prefix import group_logprobs


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_group_forward_equals_one_forward_per_answer(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    prompts = ["describe the image.", "is there a cat?"]
    answers = [["a red ball .", "red", "a ball and a cup on a table .", "no"],
               ["yes", "no , there is no cat .", "a cat", "yes ."]]
    batch = adapter.encode([img for img in images for _ in range(4)], [p for p in prompts for _ in range(4)],
                           [a for group in answers for a in group])
    features = adapter.image_features(batch)
    with torch.no_grad():
        plain, plain_mask = adapter.response_logprobs(batch, features)
        shared, shared_mask = group_logprobs(adapter.model, adapter, batch, 4, features)
        uncached, _ = group_logprobs(adapter.model, adapter, batch, 4)
    assert torch.equal(plain_mask, shared_mask)
    assert torch.allclose(plain[plain_mask], shared[shared_mask], atol=1e-5)
    assert torch.allclose(plain[plain_mask], uncached[shared_mask], atol=1e-5)


def test_group_forward_refuses_rows_that_do_not_share_the_prompt(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    image = Image.new("RGB", (32, 32), "red")
    batch = adapter.encode([image, image], ["describe the image.", "is there a cat?"], ["a ball .", "no"])
    with pytest.raises(ValueError, match="row 1: does not share the prompt of row 0"):
        group_logprobs(adapter.model, adapter, batch, 2)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_sampling_from_one_prefill_per_prompt_gives_the_plain_tokens(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (48, 32), "blue")]
    prompts = ["is there a cat?", "describe the image in detail please."]  # different lengths: left padding

    def run(prefill_once):
        torch.manual_seed(3)
        return adapter.sample(images, prompts, num_samples=3, max_new_tokens=10, prefill_once=prefill_once)

    plain, once = run(False), run(True)
    assert len(once.texts) == 6 and len(set(once.texts)) > 1
    assert once.texts == plain.texts
    for name in ("input_ids", "attention_mask", "response_mask"):
        assert torch.equal(getattr(once.batch, name), getattr(plain.batch, name)), name
    assert torch.equal(once.lengths, plain.lengths) and torch.equal(once.ended, plain.ended)
    # the features computed once per prompt are those of every sampled row
    assert plain.image_features is None
    expected = adapter.image_features(plain.batch)["image"].pooler_output
    got = once.image_features["image"].pooler_output
    assert len(got) == len(expected) == 6
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected))


def test_prefill_once_is_refused_for_3d_rotary_positions(tiny_dirs):
    adapter = load_adapter(tiny_dirs["qwen2_vl"])
    with pytest.raises(ValueError, match="prefill_once is not available for qwen2_vl"):
        adapter.sample([Image.new("RGB", (32, 32))], ["hi"], num_samples=2, prefill_once=True)
