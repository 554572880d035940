"""Seeded image corruptions: deterministic, the size kept, each kind doing what it says."""

import numpy as np
import pytest
from PIL import Image

from mmalign.data_builders.corruptions import CORRUPTIONS, corrupt_image


def picture(size=(64, 48)):
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_same_seed_same_pixels_other_seed_other_pixels(kind):
    image = picture()
    a, b = corrupt_image(image, kind, seed=3), corrupt_image(image, kind, seed=3)
    assert a.size == image.size and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != image.tobytes()
    if kind != "blur":  # blur has no randomness
        assert corrupt_image(image, kind, seed=4).tobytes() != a.tobytes()


@pytest.mark.parametrize("kind", ["noise", "blur", "mask"])
def test_strength_zero_leaves_the_image(kind):
    image = picture()
    assert corrupt_image(image, kind, strength=0.0, seed=1).tobytes() == image.tobytes()


def test_mask_greys_the_asked_share_of_patches():
    image = Image.new("RGB", (64, 64), (255, 0, 0))
    masked = np.asarray(corrupt_image(image, "mask", strength=0.25, seed=0))
    grey = (masked == 128).all(-1)
    assert grey.mean() == pytest.approx(16 / 64)  # 16 of the 64 patches, 8 x 8 pixels each
    assert grey.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64).all(-1).sum() == 16


def test_crop_keeps_a_window_of_one_minus_strength_and_the_size():
    # red grows with x and green with y, 6 per pixel: a window shows only its own range of both
    xs, ys = np.meshgrid(np.arange(40), np.arange(40))
    image = Image.fromarray(np.stack([xs * 6, ys * 6, np.zeros_like(xs)], -1).astype(np.uint8))
    cropped = np.asarray(corrupt_image(image, "crop", strength=0.8, seed=0)).astype(int)
    assert cropped.shape == (40, 40, 3)
    for channel in (0, 1):  # an 8-pixel window: a spread of about 7 x 6, not the image's 39 x 6
        spread = cropped[..., channel].max() - cropped[..., channel].min()
        assert 30 <= spread <= 60


def test_bad_kind_and_strength_are_refused():
    with pytest.raises(ValueError, match="unknown corruption 'swirl'"):
        corrupt_image(picture(), "swirl")
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        corrupt_image(picture(), "noise", strength=1.5)
