"""Batch preference pairs through the adapter, with image-aware truncation.

Each row: ``images``, ``prompt``, ``chosen``, ``rejected`` and optionally
``rejected_images`` (the images the rejected response is shown with: image-contrast pairs),
``chosen_spans`` / ``rejected_spans`` (corrected segments as [start, end) character
spans, for Dense DPO), ``reward_margin`` (MM-DPO dynamic β) and precomputed reference
per-token log-probs ``ref_chosen_logps`` / ``ref_rejected_logps`` / ``ref_corrupted_logps``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmalign.chat import IMAGE_PLACEHOLDER, response_text
from mmalign.data_builders.corruptions import corrupt_image
from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import pad_rows

logger = logging.getLogger(__name__)

_ROW_ERROR = re.compile(r"^row (\d+): ")


def span_token_weights(offsets: Sequence[tuple[int, int]], spans: Sequence[Sequence[int]] | None,
                       gamma: float) -> list[float]:
    """Weight γ for each token whose characters overlap a corrected span, 1 otherwise.

    Zero-width tokens (the end-of-turn token) never overlap and keep weight 1.
    """
    if not spans or gamma == 1.0:
        return [1.0] * len(offsets)
    return [gamma if s < e and any(s < b and a < e for a, b in spans) else 1.0 for s, e in offsets]


@dataclass
class TruncationStats:
    """What image-aware truncation had to do so far (logged by the trainer)."""

    rows: int = 0
    prompts_shortened: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class ImageCorruption:
    """mDPO's corrupted image, made on the fly: a seeded :func:`corrupt_image` per pair.

    The seed of a pair comes from its prompt and chosen answer (and ``seed``), not from its
    place in a batch, so a pair gets the same corrupted image in every epoch, batch size and
    resumed run, and in the reference precomputation."""

    kind: str = "crop"
    strength: float = 0.8
    seed: int = 0

    def __call__(self, row: dict[str, Any]) -> list[Any]:
        key = json.dumps([self.seed, row["prompt"], response_text(row["chosen"])], sort_keys=True, default=str)
        base = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        return [corrupt_image(image, self.kind, strength=self.strength, seed=base + k)
                for k, image in enumerate(row.get("images") or [])]


def _rejected_images(row: dict[str, Any]) -> list[Any]:
    return row.get("rejected_images") or row.get("images") or []


@dataclass
class DPOCollator:
    """Encode chosen and rejected sequences of each pair (images processed once when both
    sides see the same images).

    Over-long pairs keep every image token: first the responses' tails are cut, then
    words are removed from the start of the prompt text, and a pair is dropped (and
    counted) only when its images alone do not fit. With ``corruption`` (mDPO) the chosen
    answer is also encoded with corrupted images, as ``corrupted_*`` features.
    """

    adapter: VLMAdapter
    max_length: int | None = None
    gamma: float = 1.0
    stats: TruncationStats = field(default_factory=TruncationStats)
    corruption: ImageCorruption | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self.stats.rows += len(rows)
        rows = [dict(r, _index=i) for i, r in enumerate(rows)]
        if self.corruption is not None:
            for row in rows:
                row["_corrupted_images"] = self.corruption(row)
        while True:
            images = [r.get("images") or [] for r in rows]
            prompts = [r["prompt"] for r in rows]
            own_rejected = any(r.get("rejected_images") for r in rows)
            try:
                chosen = self.adapter.encode(images, prompts, [response_text(r["chosen"]) for r in rows],
                                             max_length=self.max_length)
                rejected = self.adapter.encode([_rejected_images(r) for r in rows] if own_rejected else images,
                                               prompts, [response_text(r["rejected"]) for r in rows],
                                               max_length=self.max_length)
                corrupted = None if self.corruption is None else self.adapter.encode(
                    [r["_corrupted_images"] for r in rows], prompts, [response_text(r["chosen"]) for r in rows],
                    max_length=self.max_length)
                break
            except ValueError as err:
                match = _ROW_ERROR.match(str(err))
                if not match or self.max_length is None:
                    raise
                i = int(match.group(1))
                shorter = self._shorten_prompt(rows[i])
                if shorter is None:
                    logger.warning("dropping a pair whose image tokens alone exceed max_length=%d", self.max_length)
                    self.stats.dropped += 1
                    del rows[i]
                    if not rows:
                        raise ValueError(
                            f"every pair of a batch is longer than max_length={self.max_length} "
                            "even without prompt text; raise max_length"
                        ) from err
                else:
                    self.stats.prompts_shortened += 1
                    rows[i]["prompt"] = shorter
        return self._features(rows, chosen, rejected, corrupted, own_rejected)

    def _shorten_prompt(self, row: dict[str, Any]) -> str | None:
        """Drop words from the start of a text prompt until chosen and rejected fit.

        ``<image>`` placeholders are not words: they all stay, in place among the words kept,
        so a row's images keep their count and order."""
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            return None
        tokens = prompt.replace(IMAGE_PLACEHOLDER, f" {IMAGE_PLACEHOLDER} ").split()
        words = [j for j, token in enumerate(tokens) if token != IMAGE_PLACEHOLDER]
        sequences = [(row.get("images") or [], row["chosen"]), (_rejected_images(row), row["rejected"])]
        if "_corrupted_images" in row:
            sequences.append((row["_corrupted_images"], row["chosen"]))
        lo, hi, best = 1, len(words) - 1, None
        while lo <= hi:  # keep as many trailing words (the question) as fit
            keep = (lo + hi) // 2
            kept = set(words[-keep:])
            candidate = " ".join(t for j, t in enumerate(tokens) if j in kept or t == IMAGE_PLACEHOLDER)
            try:
                for images, response in sequences:
                    self.adapter.encode([images], [candidate], [response_text(response)], max_length=self.max_length)
                best, lo = candidate, keep + 1
            except ValueError:
                hi = keep - 1
        return best

    def _features(self, rows, chosen, rejected, corrupted=None, own_rejected=False) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        sequences = [("chosen", chosen, "chosen_spans"), ("rejected", rejected, "rejected_spans")]
        if corrupted is not None:  # the chosen answer again, its images corrupted (mDPO)
            sequences.append(("corrupted", corrupted, None))
        for key, batch, spans in sequences:
            out[f"{key}_input_ids"] = batch.input_ids
            out[f"{key}_attention_mask"] = batch.attention_mask
            out[f"{key}_response_mask"] = batch.response_mask
            for name, tensor in batch.text_inputs.items():
                out[f"{key}_{name}"] = tensor
            if key != "chosen" and (key == "corrupted" or own_rejected):
                out.update({f"{key}_{name}": tensor for name, tensor in batch.image_inputs.items()})
            weights = [
                torch.tensor(span_token_weights(offsets, row.get(spans) if spans else None, self.gamma))
                for offsets, row in zip(batch.response_offsets, rows)
            ]
            out[f"{key}_weights"] = pad_rows(weights, 0.0) if rows else torch.zeros(0, 0)
            if all(row.get(f"ref_{key}_logps") is not None for row in rows):
                ref = []
                for i, (row, offsets) in enumerate(zip(rows, batch.response_offsets)):
                    values = torch.tensor(row[f"ref_{key}_logps"], dtype=torch.float32)
                    if len(values) < len(offsets):
                        raise ValueError(
                            f"row {i}: ref_{key}_logps has {len(values)} values but the response has "
                            f"{len(offsets)} tokens; recompute reference log-probs for this model and max_length"
                        )
                    ref.append(values[: len(offsets)])
                out[f"ref_{key}_logps"] = pad_rows(ref, 0.0)
        out.update(chosen.image_inputs)  # the chosen images (and the rejected ones, unless given apart)
        out["pair_index"] = torch.tensor([r["_index"] for r in rows])  # rows kept, in input order
        if all(row.get("reward_margin") is not None for row in rows):
            out["reward_margin"] = torch.tensor([float(r["reward_margin"]) for r in rows])
        return out
