"""Image features on disk: the frozen vision tower and projector run once per image, ever.

A preference dataset is read for several epochs, and every pass used to run the vision
tower again on the same images (for LLaVA-1.5 a 300M-parameter ViT-L over 576 patches per
image). With a frozen tower and projector their output depends only on the pixels and the
weights, so it can be stored once and read back. Entries are keyed by

- a fingerprint of the vision tower and projector weights (one folder per fingerprint, so
  another checkpoint or a changed projector never reads stale features), and
- a hash of the image's own preprocessed inputs (pixel values, sizes, grids), so the same
  picture in another row, epoch or dataset is a hit, and a changed processor is a miss.

One safetensors file per image, written to a temporary name and renamed, so concurrent
writers (several data-parallel processes) and crashed runs never leave a torn entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import EncodedBatch


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def weights_fingerprint(adapter: VLMAdapter) -> str:
    """Hash of the vision tower and projector weights (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, p in sorted(adapter.vision_parameters() + adapter.projector_parameters()):
        digest.update(f"{name}:{p.dtype}:{tuple(p.shape)};".encode())
        digest.update(_tensor_bytes(p))
    return digest.hexdigest()[:24]


def count_images(image_inputs: dict[str, torch.Tensor]) -> int:
    """Images in a batch's vision inputs: one grid row per image (Qwen2-VL), else one leading
    row per image; rows may hold several images or none, so the row count would not do."""
    if "image_grid_thw" in image_inputs:
        return image_inputs["image_grid_thw"].shape[0]
    return next(iter(image_inputs.values())).shape[0]


def split_images(image_inputs: dict[str, torch.Tensor], n_images: int) -> list[dict[str, torch.Tensor]]:
    """The batch's vision inputs cut into one dict per image.

    Tensors hold one row per image (LLaVA, LLaVA-NeXT), except Qwen2-VL's flat patch
    sequence, whose rows per image are the product of that image's ``image_grid_thw``.
    """
    sizes = None
    if "image_grid_thw" in image_inputs:
        sizes = image_inputs["image_grid_thw"].prod(-1).tolist()
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(n_images)]
    for key, value in image_inputs.items():
        if value.shape[0] == n_images:
            parts = list(value.unbind(0))
            parts = [p.unsqueeze(0) for p in parts]
        elif sizes is not None and value.shape[0] == sum(sizes):
            parts = list(value.split(sizes, dim=0))
        else:
            raise ValueError(f"cannot split image input {key!r} of shape {tuple(value.shape)} into {n_images} images")
        for entry, part in zip(out, parts):
            entry[key] = part
    return out


def image_key(inputs: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(inputs):
        t = inputs[key]
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def _atomic_save(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"features": tensor.detach().to("cpu").contiguous()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ImageFeatureCache:
    """Drop-in for ``adapter.image_features`` that reads and fills a folder of features.

    ``misses`` counts images computed, ``hits`` images read back (or repeated within a
    batch), so a second epoch over the same data shows only hits.
    Only for a frozen vision tower and projector: trained weights would make entries stale.
    """

    def __init__(self, directory: str | Path, adapter: VLMAdapter):
        if adapter.disk_cache_refusal:
            raise ValueError(f"{adapter.family}: image features cannot be cached on disk ({adapter.disk_cache_refusal}); "
                             "the in-memory cache (cache_image_features) works")
        trained = [n for n, p in adapter.vision_parameters() + adapter.projector_parameters() if p.requires_grad]
        if trained:
            raise ValueError(
                f"image features cannot be cached on disk while the vision tower or projector trains "
                f"({trained[0]} requires grad); turn off train_projector or the disk cache"
            )
        self.adapter = adapter
        self.root = Path(directory) / f"{adapter.family}-{weights_fingerprint(adapter)}"
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def features(self, batch: EncodedBatch) -> dict[str, Any] | None:
        if not batch.image_inputs:
            return None
        n_images = sum(batch.images_per_row) if batch.images_per_row else count_images(batch.image_inputs)
        per_image = split_images(batch.image_inputs, n_images)
        keys = [image_key(inputs) for inputs in per_image]
        found: dict[str, torch.Tensor] = {}
        for key in dict.fromkeys(keys):
            path = self._path(key)
            if path.exists():
                found[key] = load_file(str(path), device=str(self.adapter.device))["features"]
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            first = {k: keys.index(k) for k in missing}
            merged = {name: torch.cat([per_image[first[k]][name] for k in missing], dim=0)
                      for name in batch.image_inputs}
            sub = dataclasses.replace(batch, image_inputs=merged, images_per_row=[1] * len(missing))
            computed = self.adapter.image_features(sub, grad=False)["image"].pooler_output
            for key, value in zip(missing, computed):
                _atomic_save(value, self._path(key))
                found[key] = value
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return {"image": BaseModelOutputWithPooling(pooler_output=[found[k] for k in keys])}
