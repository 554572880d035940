"""Several responses to one prompt in one forward that computes the prompt once.

Row layout: [prefix (P), response 1, response 2, ..., response K, padding]. Each response
attends to the prefix and to itself, never to another response, and its positions restart
at P, so every response token sees exactly what it sees in its own sequence: the logits
equal K separate forwards, while the prefix (576 image tokens for LLaVA-1.5) is computed
once. The last prefix position predicts every response's first token. DPO uses K = 2
(chosen, rejected); the GRPO family K = G (the group of one prompt).

Families with 1-D positions only (LLaVA, LLaVA-NeXT); Qwen2-VL's 3-D rotary positions
would need their own restart rule, so callers refuse them (``adapter.inputs.text_keys``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import EncodedBatch, entropy_from_logits, gather_logprobs


def split_prefix(batch: EncodedBatch, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt tokens, response tokens) of one row of a batch."""
    real = batch.attention_mask[row].bool()
    ids, response = batch.input_ids[row][real], batch.response_mask[row][real]
    p = int((~response).sum())
    return ids[:p], ids[p:]


def branch_layout(groups: Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]], pad_id: int, dtype: torch.dtype):
    """Token ids, 4-D additive mask, positions, and per branch the positions predicting its
    tokens, the targets and their validity: ``predict``/``targets``/``valid`` are
    ``(rows, K, R)`` with R the longest response."""
    n = len(groups)
    k = max(len(branches) for _, branches in groups)
    width = max(len(prefix) + sum(len(b) for b in branches) for prefix, branches in groups)
    r_max = max((len(b) for _, branches in groups for b in branches), default=0)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding attends to itself only
    predict = torch.zeros((n, k, r_max), dtype=torch.long)
    targets = torch.zeros((n, k, r_max), dtype=torch.long)
    valid = torch.zeros((n, k, r_max), dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for row, (prefix, branches) in enumerate(groups):
        p = len(prefix)
        ids[row, :p] = prefix
        positions[row, :p] = torch.arange(p)
        allowed[row, :p, :p] = causal[:p, :p]
        start = p
        for j, branch in enumerate(branches):
            r = len(branch)
            end = start + r
            ids[row, start:end] = branch
            positions[row, start:end] = torch.arange(p, p + r)
            allowed[row, start:end, :p] = True
            allowed[row, start:end, start:end] = causal[:r, :r]
            if r:
                predict[row, j, :r] = torch.tensor([p - 1, *range(start, end - 1)])
                targets[row, j, :r] = branch
                valid[row, j, :r] = True
            start = end
    mask = torch.zeros((n, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    return ids, mask, positions, predict, targets, valid


def branch_logprobs(
    model: torch.nn.Module,
    adapter: VLMAdapter,
    groups: Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]],
    image_inputs: dict[str, Any],
    features: dict[str, Any] | None = None,
    *,
    with_entropy: bool = False,
):
    """Per-token log-probs ``(rows, K, R)`` and their mask from one shared-prefix forward
    (and, ``with_entropy``, the policy's entropy at each position, detached).

    ``groups`` holds, per row, the prefix tokens (with the image placeholders) and the
    branches' response tokens; ``image_inputs`` / ``features`` are those of one image set
    per row (the prefix's)."""
    device = adapter.device
    dtype = adapter.base_model.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point or dtype.itemsize < 2:
        dtype = torch.float32
    ids, mask, positions, predict, targets, valid = (
        t.to(device) for t in branch_layout(groups, adapter.tokenizer.pad_token_id, dtype))
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    if features is not None:
        kwargs["mm_encoder_outputs"] = features
    else:
        kwargs.update(image_inputs)
    n, k, r = predict.shape
    logits = model(**kwargs, logits_to_keep=predict.reshape(n, k * r), use_cache=False).logits
    flat = logits.reshape(-1, logits.shape[-1])
    logps = gather_logprobs(flat, targets.reshape(-1)).view(n, k, r)
    if not with_entropy:
        return logps * valid, valid
    with torch.no_grad():
        entropy = entropy_from_logits(flat).view(n, k, r) * valid
    return logps * valid, valid, entropy


def group_logprobs(
    model: torch.nn.Module,
    adapter: VLMAdapter,
    batch: EncodedBatch,
    group_size: int,
    features: dict[str, Any] | None = None,
    *,
    with_entropy: bool = False,
):
    """``response_logprobs`` of a batch whose rows come in groups of ``group_size`` sharing
    one prompt (rows g·G … g·G + G − 1), computed with one shared-prefix row per group.

    Returns ``(N, R)`` log-probs and mask in the batch's row order (and the entropy,
    ``with_entropy``), equal to ``adapter.response_logprobs(batch, features)`` (tested)."""
    n = batch.input_ids.shape[0]
    if n % group_size:
        raise ValueError(f"{n} rows do not split into groups of {group_size}")
    firsts = list(range(0, n, group_size))
    groups = []
    for first in firsts:
        prefix, _ = split_prefix(batch, first)
        branches = []
        for row in range(first, first + group_size):
            own_prefix, response = split_prefix(batch, row)
            if not torch.equal(own_prefix, prefix):
                raise ValueError(f"row {row}: does not share the prompt of row {first}")
            branches.append(response)
        groups.append((prefix.cpu(), [b.cpu() for b in branches]))
    heads, head_features = adapter.select(batch, firsts, features)
    out = branch_logprobs(model, adapter, groups, heads.image_inputs, head_features, with_entropy=with_entropy)
    width = int(batch.response_lengths.max()) if n else 0
    return tuple(t.reshape(n, -1)[:, :width] for t in out)
