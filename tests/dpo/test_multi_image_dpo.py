"""DPO on pairs whose prompts hold several images: every path gives the hand-computed loss."""

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from mmalign.dpo import DPOCollator

from ..conftest import FAMILIES
from .test_dpo_trainer import assert_same, make, step

# (image colours, prompt, chosen, rejected): two-image rows beside a one- and a zero-image row
ROWS = [
    (["red", "blue"], "the left photo <image> and the right photo <image> which is red?",
     "the left one is red.", "the right one is red."),
    (["green", "yellow"], "<image> <image> what color is the tree?", "the tree is green.", "the tree is red."),
    (["blue"], "<image> describe the image.", "a blue ball.", "a blue car."),
    ([], "is there a dog?", "no.", "yes."),
]


def pairs() -> Dataset:
    sizes = [(40, 30), (64, 48)]
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for colors, prompt, chosen, rejected in ROWS:
        rows["images"].append([PILImage.new("RGB", sizes[j], c) for j, c in enumerate(colors)])
        rows["prompt"].append(prompt)
        rows["chosen"].append(chosen)
        rows["rejected"].append(rejected)
    features = Features({"images": List(Image()), "prompt": Value("string"), "chosen": Value("string"),
                         "rejected": Value("string")})
    return Dataset.from_dict(rows, features=features)


def skip_single_image(adapter):
    if not adapter.multi_image:
        pytest.skip(f"{adapter.family}: its adapter declares multi_image = False")


def by_hand(adapter, dataset, beta=0.1):
    """Sigmoid DPO loss from each response scored alone through the adapter (LoRA on, then off)."""
    def logp(row, key):
        batch = adapter.encode([row["images"]], [row["prompt"]], [row[key]])
        return adapter.response_logprobs(batch)[0].sum()

    margins = []
    for row in dataset:
        policy = logp(row, "chosen") - logp(row, "rejected")
        with adapter.adapters_disabled():
            reference = logp(row, "chosen") - logp(row, "rejected")
        margins.append(beta * (policy - reference))
    return -F.logsigmoid(torch.stack(margins)).mean()


def skip_refused(err: ValueError, *refusals: str):
    """Skip with the adapter's own reason when a family refuses an optional path."""
    if not any(r in str(err) for r in refusals):
        raise err
    pytest.skip(str(err))


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_image_dpo_step_equals_the_loss_by_hand_and_cached_features(tiny_dirs, tmp_path, family):
    dataset = pairs()
    adapter = make(tiny_dirs, family)
    skip_single_image(adapter)
    adapter.model.eval()
    with torch.no_grad():
        expected = by_hand(adapter, dataset).item()
    plain = step(adapter, dataset, tmp_path, cache_image_features=False)
    assert plain[0] == pytest.approx(expected, abs=1e-5)
    cached = step(make(tiny_dirs, family), dataset, tmp_path, cache_image_features=True)
    assert_same(plain, cached)


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_image_dpo_shared_prefix_and_disk_cache_equal_the_plain_step(tiny_dirs, tmp_path, family):
    dataset = pairs()
    adapter = make(tiny_dirs, family)
    skip_single_image(adapter)
    plain = step(adapter, dataset, tmp_path, cache_image_features=False)
    try:
        shared = step(make(tiny_dirs, family), dataset, tmp_path, share_prefix=True)
        assert_same(plain, shared)
        disk = tmp_path / "features"
        for _ in range(2):  # fills the disk cache, then reads every image back
            on_disk = step(make(tiny_dirs, family), dataset, tmp_path, image_feature_cache_dir=str(disk))
            assert_same(plain, on_disk)
    except ValueError as err:
        skip_refused(err, "share_prefix is not available", "cannot be cached on disk")


def test_shortening_a_prompt_keeps_every_placeholder_in_place(tiny_dirs):
    adapter = make(tiny_dirs, "llava", perturb=False)
    row = dict(pairs()[0], prompt="please tell me in detail about the left photo <image> and the right photo "
                                  "<image> which is red?")
    prompt_only = adapter.encode([row["images"]], [row["prompt"]]).input_ids.shape[1]
    collator = DPOCollator(adapter, max_length=prompt_only - 2)  # no room for a response token
    out = collator([row])
    assert collator.stats.prompts_shortened == 1 and collator.stats.dropped == 0
    tokens = adapter.tokenizer.convert_ids_to_tokens(out["chosen_input_ids"][0])
    words = " ".join(t for j, t in enumerate(tokens) if t != "<image>" or tokens[j - 1] != "<image>")
    # words went from the start; both images stayed, each where its placeholder was
    assert "<image> and the right photo <image> which is red ?" in words
    assert "please" not in words and words.count("<image>") == 2
    assert int((out["chosen_input_ids"] == adapter.base_model.config.image_token_id).sum()) == 2 * 16
