"""Seeded image corruptions: the image side of image-contrast preference data.

mDPO (Wang et al., EMNLP 2024) prefers an answer with its true image over the same answer
with a corrupted image, so the preference can only be learnt by looking. A corruption here is
a pure function of (image, kind, strength, seed): the same call gives the same pixels on any
machine, so datasets built from it are reproducible and a run can be resumed.

- ``crop``: keep a random window of ``1 - strength`` of each side (mDPO keeps little of the
  image), resized back to the original size;
- ``noise``: Gaussian pixel noise with standard deviation ``strength`` x 255;
- ``blur``: Gaussian blur with radius ``strength`` x the longer side / 10;
- ``mask``: a 8 x 8 grid of patches, ``strength`` of them (rounded) filled with grey.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

CORRUPTIONS = ("crop", "noise", "blur", "mask")
GRID = 8


def corrupt_image(image: Image.Image, kind: str = "crop", *, strength: float = 0.8, seed: int = 0) -> Image.Image:
    """A corrupted copy of ``image`` (same size, RGB); ``strength`` in [0, 1], 0 leaves it as is."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(CORRUPTIONS)}")
    if not 0 <= strength <= 1:
        raise ValueError(f"corruption strength must be in [0, 1], got {strength}")
    image = image.convert("RGB")
    rng = np.random.default_rng(seed)
    width, height = image.size
    if kind == "crop":
        w, h = max(1, round(width * (1 - strength))), max(1, round(height * (1 - strength)))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        return image.crop((left, top, left + w, top + h)).resize((width, height), Image.Resampling.BICUBIC)
    if kind == "noise":
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, strength * 255, (height, width, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=strength * max(width, height) / 10))
    pixels = np.asarray(image).copy()
    cells = rng.permutation(GRID * GRID)[: round(strength * GRID * GRID)]
    for cell in cells:
        row, col = divmod(int(cell), GRID)
        pixels[row * height // GRID:(row + 1) * height // GRID, col * width // GRID:(col + 1) * width // GRID] = 128
    return Image.fromarray(pixels)
