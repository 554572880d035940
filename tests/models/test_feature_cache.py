"""Image features on disk: equal to the vision tower's output, keyed by content and weights."""

import pytest
import torch
from PIL import Image

from mmalign.models import load_adapter
from mmalign.models.feature_cache import ImageFeatureCache, image_key, split_images

COLORS = ["red", "blue", "red", "green"]  # the third image repeats the first


def batch_of(adapter, colors=COLORS, size=(32, 32)):
    images = [Image.new("RGB", size, c) for c in colors]
    return adapter.encode(images, ["what is it?"] * len(images), ["a shape."] * len(images))


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_disk_features_equal_vision_tower(tiny_dirs, tmp_path, family):
    adapter = load_adapter(tiny_dirs[family])
    batch = batch_of(adapter)
    direct = adapter.image_features(batch)["image"].pooler_output
    cache = ImageFeatureCache(tmp_path / "cache", adapter)
    first = cache.features(batch)["image"].pooler_output
    assert (cache.misses, cache.hits) == (3, 1)  # three distinct images computed, the repeat shared
    second = ImageFeatureCache(tmp_path / "cache", adapter).features(batch)["image"].pooler_output
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 3 and not list((tmp_path / "cache").rglob("*.tmp"))
    for a, b, c in zip(direct, first, second):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
        torch.testing.assert_close(c, a, atol=0, rtol=0)


def test_split_images_cuts_qwen_patch_sequence_by_grid(tiny_dirs):
    adapter = load_adapter(tiny_dirs["qwen2_vl"])
    batch = batch_of(adapter, ["red", "blue"], size=(64, 32))
    parts = split_images(batch.image_inputs, 2)
    grid = batch.image_inputs["image_grid_thw"]
    assert [p["pixel_values"].shape[0] for p in parts] == grid.prod(-1).tolist()
    assert torch.equal(torch.cat([p["pixel_values"] for p in parts]), batch.image_inputs["pixel_values"])
    assert image_key(parts[0]) != image_key(parts[1])


def test_changed_vision_weights_use_another_folder(tiny_dirs, tmp_path):
    adapter = load_adapter(tiny_dirs["llava"])
    before = ImageFeatureCache(tmp_path, adapter).root
    with torch.no_grad():
        next(p for _, p in adapter.projector_parameters()).add_(0.01)
    assert ImageFeatureCache(tmp_path, adapter).root != before


def test_trained_projector_refused(tiny_dirs, tmp_path):
    adapter = load_adapter(tiny_dirs["llava"])
    for _, p in adapter.projector_parameters():
        p.requires_grad_(True)
    with pytest.raises(ValueError, match="cannot be cached on disk while the vision tower or projector trains"):
        ImageFeatureCache(tmp_path, adapter)
