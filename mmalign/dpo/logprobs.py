"""The pair forward DPO's trainer and its reference precomputation share: per-token
log-probs of the chosen and rejected responses of a collated batch."""

from __future__ import annotations

from typing import Any

import torch

from mmalign.models.adapter import VLMAdapter, pick_features
from mmalign.models.batch import EncodedBatch, concat_batches
from mmalign.models.prefix import branch_logprobs, split_prefix


def split_pair(inputs: dict[str, torch.Tensor], adapter: VLMAdapter) -> tuple[EncodedBatch, EncodedBatch]:
    """The chosen and rejected batches of collated features (images shared by both)."""
    images = {k: inputs[k] for k in adapter.inputs.image_keys if k in inputs}
    batches = []
    for key in ("chosen", "rejected"):
        batches.append(EncodedBatch(
            input_ids=inputs[f"{key}_input_ids"],
            attention_mask=inputs[f"{key}_attention_mask"],
            response_mask=inputs[f"{key}_response_mask"].bool(),
            image_inputs=images,
            text_inputs={k: inputs[f"{key}_{k}"] for k in adapter.inputs.text_keys if f"{key}_{k}" in inputs},
        ))
    return batches[0], batches[1]


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
    *, share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs and masks of chosen and rejected responses, ``(B, R)`` each.

    One forward either way: a 2B-row batch (chosen rows, then rejected), or with
    ``share_prefix`` one row per pair holding the prefix once.
    """
    if share_prefix:
        return shared_prefix_logprobs(model, adapter, chosen, rejected, features)
    # chosen then rejected rows; both carry the pair's images, so the batch holds them twice
    pair = concat_batches([chosen, rejected], adapter.tokenizer.pad_token_id)
    logps, mask = adapter.response_logprobs(pair, repeat_features(features), model=model)
    n = chosen.input_ids.shape[0]
    return logps[:n], mask[:n], logps[n:], mask[n:]
