"""The pair forward DPO's trainer and its reference precomputation share: per-token
log-probs of the chosen and rejected responses of a collated batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mmalign.models.adapter import VLMAdapter, concat_features, pick_features
from mmalign.models.batch import EncodedBatch, concat_batches
from mmalign.models.prefix import branch_logprobs, split_prefix


def _sequence(inputs: dict[str, torch.Tensor], adapter: VLMAdapter, key: str) -> EncodedBatch:
    """One collated sequence set (``chosen``, ``rejected`` or ``corrupted``): its own image inputs
    when the collator stored them under its name, else the pair's (chosen) images."""
    own = {k: inputs[f"{key}_{k}"] for k in adapter.inputs.image_keys if f"{key}_{k}" in inputs}
    return EncodedBatch(
        input_ids=inputs[f"{key}_input_ids"],
        attention_mask=inputs[f"{key}_attention_mask"],
        response_mask=inputs[f"{key}_response_mask"].bool(),
        image_inputs=own or {k: inputs[k] for k in adapter.inputs.image_keys if k in inputs},
        text_inputs={k: inputs[f"{key}_{k}"] for k in adapter.inputs.text_keys if f"{key}_{k}" in inputs},
    )


def has_own_images(inputs: dict[str, torch.Tensor], adapter: VLMAdapter, key: str) -> bool:
    """Whether a sequence set carries images of its own (image-contrast pairs, mDPO's corrupted side)."""
    return any(f"{key}_{k}" in inputs for k in adapter.inputs.image_keys)


def split_pair(inputs: dict[str, torch.Tensor], adapter: VLMAdapter) -> tuple[EncodedBatch, EncodedBatch]:
    """The chosen and rejected batches of collated features (the rejected side with its own
    images when the pairs carry ``rejected_images``)."""
    return _sequence(inputs, adapter, "chosen"), _sequence(inputs, adapter, "rejected")


@dataclass
class PairBatch:
    """The sequence sets of a collated batch: chosen, rejected (with images of its own for
    image-contrast pairs) and, for mDPO, the chosen answers with corrupted images."""

    chosen: EncodedBatch
    rejected: EncodedBatch
    corrupted: EncodedBatch | None = None
    own_rejected_images: bool = False

    @classmethod
    def from_inputs(cls, inputs: dict[str, torch.Tensor], adapter: VLMAdapter) -> PairBatch:
        chosen, rejected = split_pair(inputs, adapter)
        corrupted = _sequence(inputs, adapter, "corrupted") if "corrupted_input_ids" in inputs else None
        return cls(chosen, rejected, corrupted, has_own_images(inputs, adapter, "rejected"))

    @property
    def names(self) -> tuple[str, ...]:
        return ("chosen", "rejected") if self.corrupted is None else ("chosen", "rejected", "corrupted")


def repeat_features(features: dict[str, Any] | None, times: int = 2) -> dict[str, Any] | None:
    """Image features of B images -> the same features for the 2B rows of a pair batch."""
    if features is None:
        return None
    return pick_features(features, list(range(len(features["image"].pooler_output))) * times)


def shared_prefix_logprobs(
    model, adapter: VLMAdapter, chosen: EncodedBatch, rejected: EncodedBatch, features=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen and rejected as two branches of one row per pair (``mmalign.models.prefix``)."""
    branches = []
    for row in range(chosen.input_ids.shape[0]):
        prompt, chosen_tokens = split_prefix(chosen, row)
        other, rejected_tokens = split_prefix(rejected, row)
        if not torch.equal(prompt, other):
            raise ValueError(f"row {row}: chosen and rejected do not share their prompt tokens")
        branches.append([chosen_tokens, rejected_tokens])
    logps, valid = branch_logprobs(model, adapter, chosen, branches, features)
    c, r = int(chosen.response_mask.sum(-1).max()), int(rejected.response_mask.sum(-1).max())
    return logps[:, 0, :c], valid[:, 0, :c], logps[:, 1, :r], valid[:, 1, :r]


def pair_logprobs(
    model, adapter: VLMAdapter, chosen: EncodedBatch, rejected: EncodedBatch, features=None,
    *, share_prefix: bool = False, own_images: bool = False, rejected_features=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs and masks of chosen and rejected responses, ``(B, R)`` each.

    One forward either way: a 2B-row batch (chosen rows, then rejected), or with
    ``share_prefix`` one row per pair holding the prefix once. When the rejected side has
    images of its own (``own_images``; with cached ``features``, its ``rejected_features``)
    the prefixes differ, so the pair takes the 2B-row batch.
    """
    if own_images and features is not None and rejected_features is None:
        raise ValueError("the rejected side has images of its own: pass their rejected_features too")
    if share_prefix and not own_images:
        return shared_prefix_logprobs(model, adapter, chosen, rejected, features)
    # chosen then rejected rows; both carry their images, so the batch holds the shared ones twice
    pair = concat_batches([chosen, rejected], adapter.tokenizer.pad_token_id)
    if features is not None:
        features = concat_features([features, rejected_features]) if own_images else repeat_features(features)
    logps, mask = adapter.response_logprobs(pair, features, model=model)
    n = chosen.input_ids.shape[0]
    return logps[:n], mask[:n], logps[n:], mask[n:]


def batch_features(batch: PairBatch, features_of: Callable[[EncodedBatch], Any]) -> dict[str, Any]:
    """Image features (``features_of`` one sequence set) of each set with images of its own:
    the chosen side always, the rejected side of image-contrast pairs, mDPO's corrupted side."""
    features = {"chosen": features_of(batch.chosen)}
    if batch.own_rejected_images:
        features["rejected"] = features_of(batch.rejected)
    if batch.corrupted is not None:
        features["corrupted"] = features_of(batch.corrupted)
    return features


def batch_logprobs(model, adapter: VLMAdapter, batch: PairBatch, features: dict[str, Any], *,
                   share_prefix: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-token log-probs and masks of each sequence set: chosen and rejected in one forward
    (shared prefix when they see the same images), mDPO's corrupted side in another."""
    c, mc, r, mr = pair_logprobs(model, adapter, batch.chosen, batch.rejected, features.get("chosen"),
                                 share_prefix=share_prefix, own_images=batch.own_rejected_images,
                                 rejected_features=features.get("rejected"))
    out = {"chosen": (c, mc), "rejected": (r, mr)}
    if batch.corrupted is not None:
        out["corrupted"] = adapter.response_logprobs(batch.corrupted, features.get("corrupted"), model=model)
    return out
