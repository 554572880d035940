"""Several responses to one prompt in one forward that computes the prompt once.

Row layout: [prefix (P), response 1, response 2, ..., response K, padding]. Each response
attends to the prefix and to itself, never to another response, and its positions restart
after the prefix, so every response token sees exactly what it sees in its own
sequence: the logits equal K separate forwards, while the prefix (576 image tokens for
LLaVA-1.5) is computed once. The last prefix position predicts every response's first
token. DPO uses K = 2 (chosen, rejected); the GRPO family K = G (the group of one prompt).

Positions come from the family (:meth:`VLMAdapter.position_ids`): the prefix keeps the ones
the model computes for it, and each response continues from their maximum + 1 in every
dimension, exactly as text after the prompt does in a separate sequence. That is ``P, P+1,
...`` for 1-D positions (LLaVA, LLaVA-NeXT); for Qwen2-VL / Qwen2.5-VL's 3-D M-RoPE, where
an image's tokens span its grid, it is the prefix's largest temporal / height / width
position + 1. Per-token inputs (Qwen's ``mm_token_type_ids``) are the prefix's, 0 on the
responses. Families that do not :meth:`VLMAdapter.supports_shared_prefix` are refused by
the callers.
"""

from __future__ import annotations

import dataclasses
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


def branch_layout(
    groups: Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]],
    prefix_positions: Sequence[torch.Tensor],
    pad_id: int,
):
    """Token ids, which token may attend to which ``(rows, width, width)``, positions
    ``(D, rows, width)``, and per branch the
    positions predicting its tokens, the targets and their validity: ``predict``/``targets``/
    ``valid`` are ``(rows, K, R)`` with R the longest response.

    ``prefix_positions[row]`` is ``(D, P)``: the prefix's positions in each of D dimensions."""
    n = len(groups)
    k = max(len(branches) for _, branches in groups)
    width = max(len(prefix) + sum(len(b) for b in branches) for prefix, branches in groups)
    r_max = max((len(b) for _, branches in groups for b in branches), default=0)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((prefix_positions[0].shape[0], n, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding attends to itself only
    predict = torch.zeros((n, k, r_max), dtype=torch.long)
    targets = torch.zeros((n, k, r_max), dtype=torch.long)
    valid = torch.zeros((n, k, r_max), dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for row, ((prefix, branches), prefix_pos) in enumerate(zip(groups, prefix_positions)):
        p = len(prefix)
        ids[row, :p] = prefix
        positions[:, row, :p] = prefix_pos
        first = int(prefix_pos.max()) + 1 if p else 0
        allowed[row, :p, :p] = causal[:p, :p]
        start = p
        for j, branch in enumerate(branches):
            r = len(branch)
            end = start + r
            ids[row, start:end] = branch
            positions[:, row, start:end] = torch.arange(first, first + r)
            allowed[row, start:end, :p] = True
            allowed[row, start:end, start:end] = causal[:r, :r]
            if r:
                predict[row, j, :r] = torch.tensor([p - 1, *range(start, end - 1)])
                targets[row, j, :r] = branch
                valid[row, j, :r] = True
            start = end
    return ids, allowed, positions, predict, targets, valid


def branch_logprobs(
    model: torch.nn.Module,
    adapter: VLMAdapter,
    heads: EncodedBatch,
    branches: Sequence[Sequence[torch.Tensor]],
    features: dict[str, Any] | None = None,
    *,
    with_entropy: bool = False,
):
    """Per-token log-probs ``(rows, K, R)`` and their mask from one shared-prefix forward
    (and, ``with_entropy``, the policy's entropy at each position, detached).

    ``heads`` holds one row per prefix: its prompt tokens (with the image placeholders),
    images and per-token inputs are the prefix (its response, if any, is not read);
    ``branches[row]`` are the response tokens that continue it. ``features`` are the heads'
    cached image features."""
    device = adapter.device
    dtype = adapter.base_model.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point or dtype.itemsize < 2:
        dtype = torch.float32
    prompt_mask = heads.attention_mask.bool() & ~heads.response_mask.bool()
    prompts = dataclasses.replace(heads, attention_mask=prompt_mask.long())
    positions = adapter.position_ids(prompts)
    one_dimensional = positions.dim() == 2  # (rows, seq); M-RoPE positions are (3, rows, seq)
    if one_dimensional:
        positions = positions.unsqueeze(0)
    groups = [(heads.input_ids[row][prompt_mask[row]].cpu(), [b.cpu() for b in answers])
              for row, answers in enumerate(branches)]
    prefix_positions = [positions[:, row, prompt_mask[row]].cpu() for row in range(len(groups))]
    ids, allowed, layout_positions, predict, targets, valid = (
        t.to(device) for t in branch_layout(groups, prefix_positions, adapter.tokenizer.pad_token_id))
    per_token = {}
    for key, values in heads.text_inputs.items():
        laid_out = torch.zeros(ids.shape, dtype=values.dtype, device=device)  # 0 on the responses
        for row, (prefix, _) in enumerate(groups):
            laid_out[row, :len(prefix)] = values[row][prompt_mask[row]]
        per_token[key] = laid_out
    kwargs = adapter.forward_kwargs(heads, features)
    mask = adapter.branch_attention_mask(allowed, layout_positions, per_token, dtype)
    kwargs.update(per_token, input_ids=ids, attention_mask=mask,
                  position_ids=layout_positions[0] if one_dimensional else layout_positions)
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
    ``with_entropy``), equal to ``adapter.response_logprobs(batch, features)`` (tested).
    Without cached ``features`` the batch's images go through the vision tower here: the
    pixels of one row per group cannot be picked out for every family (Qwen's are the
    patches of all images, flattened), their features can."""
    n = batch.input_ids.shape[0]
    if n % group_size:
        raise ValueError(f"{n} rows do not split into groups of {group_size}")
    firsts = list(range(0, n, group_size))
    branches = []
    for first in firsts:
        prefix, _ = split_prefix(batch, first)
        responses = []
        for row in range(first, first + group_size):
            own_prefix, response = split_prefix(batch, row)
            if not torch.equal(own_prefix, prefix):
                raise ValueError(f"row {row}: does not share the prompt of row {first}")
            responses.append(response)
        branches.append(responses)
    if features is None and batch.image_inputs:
        features = adapter.image_features(batch)
    heads, head_features = adapter.select(batch, firsts, features)
    out = branch_logprobs(model, adapter, heads, branches, head_features, with_entropy=with_entropy)
    width = int(batch.response_lengths.max()) if n else 0
    return tuple(t.reshape(n, -1)[:, :width] for t in out)
