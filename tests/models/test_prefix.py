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
