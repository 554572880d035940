"""mDPO in the DPO trainer (the conditional term on corrupted images and the reward anchor) and
image-contrast pairs (``rejected_images``): losses by hand, optimised paths equal the plain one."""

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Image, List
from PIL import Image as PILImage

from mmalign.dpo import DPOConfig, DPOTrainer
from mmalign.dpo.collator import DPOCollator, ImageCorruption
from mmalign.dpo.reference import precompute_reference_logps

from .test_dpo_trainer import assert_same, loss_of, make, perturb_lora, response_logps, step


def _striped(color: str, seed: int) -> PILImage.Image:
    """An image with structure, so a crop or a mask changes it (a flat colour would survive a crop)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
    image = PILImage.fromarray(pixels)
    image.paste(PILImage.new("RGB", (16, 32), color), (0, 0))
    return image


@pytest.fixture()
def textured_pairs(pair_dataset):
    return pair_dataset.cast_column("images", List(Image())).map(
        lambda row, i: {"images": [_striped(["red", "blue", "green", "yellow"][i], i)]}, with_indices=True)


def _logps(adapter, images, rows, key, reference=False):
    return response_logps(adapter, images, rows, key, reference)[0]


def test_mdpo_loss_is_dpo_plus_conditional_plus_anchor_by_hand(tiny_dirs, textured_pairs, tmp_path):
    adapter = make(tiny_dirs)
    rows = [textured_pairs[i] for i in range(len(textured_pairs))]
    true_images = [r["images"] for r in rows]
    corruption = ImageCorruption("mask", 0.5, seed=3)
    corrupted_images = [corruption(r) for r in rows]
    h = {}
    for name, images, key in (("c", true_images, "chosen"), ("r", true_images, "rejected"),
                              ("cc", corrupted_images, "chosen")):
        h[name] = _logps(adapter, images, rows, key) - _logps(adapter, images, rows, key, reference=True)
    beta, weight_c, weight_a, anchor = 0.5, 0.7, 0.3, 0.2
    expected = (-F.logsigmoid(beta * (h["c"] - h["r"])) - weight_c * F.logsigmoid(beta * (h["c"] - h["cc"]))
                - weight_a * F.logsigmoid(beta * h["c"] - anchor)).mean()
    got = loss_of(adapter, textured_pairs, tmp_path, beta=beta, loss_type="mdpo", mdpo_corruption="mask",
                mdpo_corruption_strength=0.5, seed=3, mdpo_conditional_weight=weight_c, mdpo_anchor_weight=weight_a,
                mdpo_anchor=anchor)
    assert got == pytest.approx(expected.item(), abs=1e-5)
    # the conditional term is really there: the corrupted images change the chosen answer's score
    assert not torch.allclose(h["c"], h["cc"], atol=1e-4)
    # and without it (and the anchor) mDPO is plain DPO
    plain = loss_of(adapter, textured_pairs, tmp_path, beta=beta)
    assert loss_of(adapter, textured_pairs, tmp_path, beta=beta, loss_type="mdpo", mdpo_conditional_weight=0.0,
                 mdpo_anchor_weight=0.0) == pytest.approx(plain, abs=1e-6)


def test_mdpo_optimised_paths_and_precomputed_reference_equal_the_plain_path(tiny_dirs, textured_pairs, tmp_path):
    kw = dict(loss_type="mdpo", mdpo_corruption="noise", mdpo_corruption_strength=0.3)
    plain = step(make(tiny_dirs), textured_pairs, tmp_path, cache_image_features=False, **kw)
    for options in ({"cache_image_features": True}, {"share_prefix": True}):
        assert_same(plain, step(make(tiny_dirs), textured_pairs, tmp_path, **options, **kw))
    fresh = make(tiny_dirs, perturb=False)  # fresh LoRA: the reference is the policy before training
    corruption = ImageCorruption("noise", 0.3, seed=DPOConfig(output_dir="x").seed)
    with_ref = precompute_reference_logps(fresh, textured_pairs, progress=False, corruption=corruption)
    assert with_ref.column_names[-3:] == ["ref_chosen_logps", "ref_rejected_logps", "ref_corrupted_logps"]
    perturb_lora(fresh)
    assert_same(plain, step(fresh, with_ref, tmp_path, **kw))
    # a run whose data lacks the corrupted column precomputes all three at start-up
    args = DPOConfig(output_dir=str(tmp_path / "a"), report_to="none", use_cpu=True, precompute_ref_logps=True, **kw)
    trainer = DPOTrainer(make(tiny_dirs, perturb=False), args,
                         train_dataset=with_ref.remove_columns(["ref_corrupted_logps"]))
    assert trainer.train_dataset["ref_corrupted_logps"] == with_ref["ref_corrupted_logps"]


def test_corruption_of_a_pair_does_not_depend_on_its_batch(textured_pairs):
    rows = [textured_pairs[i] for i in range(len(textured_pairs))]
    corruption = ImageCorruption("crop", 0.6, seed=1)
    alone = corruption(rows[2])[0].tobytes()
    assert corruption(dict(rows[2]))[0].tobytes() == alone
    assert alone != rows[2]["images"][0].tobytes()
    assert ImageCorruption("crop", 0.6, seed=2)(rows[2])[0].tobytes() != alone  # the run's seed matters
    assert corruption(rows[1])[0].tobytes() != alone
    assert corruption({**rows[2], "images": []}) == []  # a text-only pair has nothing to corrupt


@pytest.fixture()
def contrast_pairs(textured_pairs):
    """Image-contrast pairs (the same answer, the rejected side shown another image) mixed with
    ordinary pairs, as TRL / ms-swift carry them in ``rejected_images``."""
    rows = [textured_pairs[i] for i in range(len(textured_pairs))]
    for i in (0, 2):
        rows[i] = {**rows[i], "rejected": rows[i]["chosen"], "rejected_images": [_striped("black", 10 + i)]}
    for row in rows:
        row.setdefault("rejected_images", [])
    features = Features({**textured_pairs.features, "rejected_images": List(Image())})
    return Dataset.from_list(rows, features=features)


def test_rejected_images_score_the_rejected_side_with_its_own_images(tiny_dirs, contrast_pairs, tmp_path):
    adapter = make(tiny_dirs)
    rows = [contrast_pairs[i] for i in range(len(contrast_pairs))]
    rejected_images = [r["rejected_images"] or r["images"] for r in rows]
    true_images = [r["images"] for r in rows]
    hc = _logps(adapter, true_images, rows, "chosen") - _logps(adapter, true_images, rows, "chosen", reference=True)
    hr = (_logps(adapter, rejected_images, rows, "rejected")
          - _logps(adapter, rejected_images, rows, "rejected", reference=True))
    expected = -F.logsigmoid(0.1 * (hc - hr)).mean()
    assert loss_of(adapter, contrast_pairs, tmp_path) == pytest.approx(expected.item(), abs=1e-5)
    # the image contrast is what makes the same answer's two sides differ
    assert abs(hc[0] - hr[0]) > 1e-4
    plain = step(make(tiny_dirs), contrast_pairs, tmp_path, cache_image_features=False)
    for options in ({"cache_image_features": True}, {"share_prefix": True}, {"loss_type": "sigmoid"}):
        assert_same(plain, step(make(tiny_dirs), contrast_pairs, tmp_path, **options))


def test_collator_keeps_rejected_images_apart_only_when_a_pair_has_them(tiny_dirs, textured_pairs, contrast_pairs):
    adapter = make(tiny_dirs, perturb=False)
    same = DPOCollator(adapter)([textured_pairs[i] for i in range(2)])
    apart = DPOCollator(adapter)([contrast_pairs[i] for i in range(2)])
    assert "rejected_pixel_values" not in same and "corrupted_input_ids" not in same
    assert apart["rejected_pixel_values"].shape == apart["pixel_values"].shape
    assert not torch.equal(apart["rejected_pixel_values"][0], apart["pixel_values"][0])  # row 0: its own image
    torch.testing.assert_close(apart["rejected_pixel_values"][1], apart["pixel_values"][1])  # row 1: shared


def test_mdpo_options_are_checked():
    with pytest.raises(ValueError, match="mdpo_corruption"):
        DPOConfig(output_dir="x", loss_type="mdpo", mdpo_corruption="rotate")
    with pytest.raises(ValueError, match="mdpo_corruption_strength"):
        DPOConfig(output_dir="x", loss_type="mdpo", mdpo_corruption_strength=0.0)
    args = DPOConfig(output_dir="x", loss_type=["mdpo", "sft"])
    assert args.needs_reference and args.reference_columns[-1] == "ref_corrupted_logps"
    assert DPOConfig(output_dir="x").reference_columns == ("ref_chosen_logps", "ref_rejected_logps")
