"""Batches of model inputs and the tensor helpers that pad, join and score them.

Pure torch, so collators and trainers can use them without importing transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ModelInputsSpec:
    """Which processor outputs go where, declared per family."""

    image_keys: tuple[str, ...]  # arguments of ``get_image_features``
    text_keys: tuple[str, ...] = ()  # per-token tensors the forward needs (padded like input_ids)
    forward_image_keys: tuple[str, ...] = ()  # image tensors the forward needs with cached features


@dataclass
class EncodedBatch:
    """Model inputs for a batch of (images, prompt[, response]) rows.

    ``input_ids``, ``attention_mask`` and ``response_mask`` are ``(batch, seq)``;
    ``response_mask`` marks the response tokens (including the end-of-turn token).
    ``image_inputs`` feed the vision encoder (pixel values, sizes, grids, one entry per
    image across the batch); ``text_inputs`` are extra per-token tensors the language
    model needs even when image features are cached (e.g. Qwen2-VL's token types).
    ``response_offsets[b][j]`` is the character span of response token ``j`` of row ``b``
    in that row's response string, so character spans map to token weights.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    text_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    response_offsets: list[list[tuple[int, int]]] = field(default_factory=list)
    images_per_row: list[int] = field(default_factory=list)

    def to(self, device: torch.device | str) -> EncodedBatch:
        def move(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return EncodedBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            response_mask=self.response_mask.to(device),
            image_inputs=move(self.image_inputs),
            text_inputs=move(self.text_inputs),
            response_offsets=self.response_offsets,
            images_per_row=self.images_per_row,
        )

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def as_features(self) -> dict[str, torch.Tensor]:
        """A flat dict of tensors, the shape data collators hand to ``Trainer``."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "response_mask": self.response_mask,
            **self.image_inputs,
            **self.text_inputs,
        }

    @classmethod
    def from_features(cls, features: dict[str, torch.Tensor], spec: ModelInputsSpec) -> EncodedBatch:
        """Inverse of :meth:`as_features` (offsets are not carried through a trainer)."""
        return cls(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            response_mask=features["response_mask"].bool(),
            image_inputs={k: features[k] for k in spec.image_keys if k in features},
            text_inputs={k: features[k] for k in spec.text_keys if k in features},
        )


@dataclass
class Samples:
    """Sampled responses: the right-padded ``batch`` (prompt + response), their text,
    whether each reached the stop token, and their length in tokens; ``image_features`` of
    every row when sampling computed them once per prompt (reuse them, do not recompute)."""

    batch: EncodedBatch
    texts: list[str]
    ended: torch.Tensor
    lengths: torch.Tensor
    image_features: dict[str, Any] | None = None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, ``(batch,)``, under left or right padding."""
    seq = attention_mask.shape[-1]
    return seq - 1 - attention_mask.flip(-1).long().argmax(-1)


def predicting_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose output predicts a response token (the one before each of them)."""
    predicts = torch.zeros_like(response_mask)
    predicts[:, :-1] = response_mask[:, 1:]
    return predicts


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, ``(n, vocab), (n,) -> (n,)``, in float32.

    Uses logsumexp instead of a full log_softmax so only one extra ``(n,)`` vector is kept.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last axis, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def unflatten_rows(flat: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a row-major flat vector into a right-padded ``(rows, max_len)`` tensor + mask."""
    rows = len(lengths)
    width = int(lengths.max()) if rows else 0
    mask = torch.arange(width, device=flat.device)[None, :] < lengths.to(flat.device)[:, None]
    out = flat.new_zeros(rows, width)
    out[mask] = flat
    return out, mask


def pad_rows(rows: Sequence[torch.Tensor], value: int, side: str = "right") -> torch.Tensor:
    """Stack 1-D tensors into ``(len(rows), max_len)``, padding on ``side``."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        if side == "right":
            out[i, : len(r)] = r
        else:
            out[i, width - len(r) :] = r
    return out


def pad_cat(tensors: Sequence[torch.Tensor], value: float | int | bool) -> torch.Tensor:
    """Concatenate ``(b_i, w_i)`` tensors along rows, right-padding to the widest with ``value``."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), value)], 1) for t in tensors])


def cat_images(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Image inputs of several batches joined along the image axis; per-image tensors padded
    with zeros to the largest (LLaVA-NeXT's crops: each batch pads to its own largest image,
    the model reads the real crops from ``image_sizes``)."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = [p for d in reversed(range(1, t.dim())) for p in (0, shape[d - 1] - t.shape[d])]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


def concat_batches(batches: Sequence[EncodedBatch], pad_id: int) -> EncodedBatch:
    """One right-padded batch from several (images in row order, one entry per image); a
    batch without images (text-only rows) adds none."""
    keys = dict.fromkeys(k for b in batches for k in b.image_inputs)
    return EncodedBatch(
        input_ids=pad_cat([b.input_ids for b in batches], pad_id),
        attention_mask=pad_cat([b.attention_mask for b in batches], 0),
        response_mask=pad_cat([b.response_mask for b in batches], False),
        image_inputs={k: cat_images([b.image_inputs[k] for b in batches if k in b.image_inputs]) for k in keys},
        text_inputs={k: pad_cat([b.text_inputs[k] for b in batches], 0) for k in batches[0].text_inputs},
        response_offsets=[o for b in batches for o in b.response_offsets],
        images_per_row=[n for b in batches for n in b.images_per_row],
    )
