"""Chosen and rejected in one forward that shares the image + prompt prefix.

Row layout: [prefix (P), chosen (C), rejected (R), padding]. The rejected tokens attend to
the prefix and to themselves but never to the chosen tokens, and their positions restart
at P, so every response token sees exactly what it sees in its own sequence: the logits
equal two separate forwards, while the prefix (576 image tokens for LLaVA-1.5) is
computed once. The last prefix position predicts both responses' first tokens.

Families with 1-D positions only (LLaVA, LLaVA-NeXT); Qwen2-VL's 3-D rotary positions
would need their own restart rule.
"""

from __future__ import annotations

from typing import Any

import torch

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import EncodedBatch, gather_logprobs


def _layout(chosen: EncodedBatch, rejected: EncodedBatch):
    rows = []
    for b in range(chosen.input_ids.shape[0]):
        c_ids = chosen.input_ids[b][chosen.attention_mask[b].bool()]
        c_resp = chosen.response_mask[b][chosen.attention_mask[b].bool()]
        r_ids = rejected.input_ids[b][rejected.attention_mask[b].bool()]
        r_resp = rejected.response_mask[b][rejected.attention_mask[b].bool()]
        p, p_r = int((~c_resp).sum()), int((~r_resp).sum())
        if p != p_r or not torch.equal(c_ids[:p], r_ids[:p]):
            raise ValueError(f"row {b}: chosen and rejected do not share their prompt tokens")
        rows.append((c_ids[:p], c_ids[p:], r_ids[p:]))
    return rows


def shared_prefix_inputs(chosen: EncodedBatch, rejected: EncodedBatch, pad_id: int, dtype: torch.dtype):
    """Token ids, 4-D additive mask, position ids and the positions that predict each response token."""
    rows = _layout(chosen, rejected)
    width = max(len(p) + len(c) + len(r) for p, c, r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding attends to itself only
    c_max = max(len(c) for _, c, _ in rows)
    r_max = max(len(r) for _, _, r in rows)
    predict = torch.zeros((n, c_max + r_max), dtype=torch.long)
    targets = torch.zeros((n, c_max + r_max), dtype=torch.long)
    valid = torch.zeros((n, c_max + r_max), dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for b, (prefix, chos, rej) in enumerate(rows):
        p, c, r = len(prefix), len(chos), len(rej)
        ids[b, : p + c + r] = torch.cat([prefix, chos, rej])
        positions[b, : p + c] = torch.arange(p + c)
        positions[b, p + c : p + c + r] = torch.arange(p, p + r)
        allowed[b, : p + c, : p + c] = causal[: p + c, : p + c]
        allowed[b, p + c : p + c + r, :p] = True
        allowed[b, p + c : p + c + r, p + c : p + c + r] = causal[:r, :r]
        predict[b, :c] = torch.arange(p - 1, p + c - 1)
        targets[b, :c] = chos
        valid[b, :c] = True
        predict[b, c_max : c_max + r] = torch.tensor([p - 1, *range(p + c, p + c + r - 1)])
        targets[b, c_max : c_max + r] = rej
        valid[b, c_max : c_max + r] = True
    mask = torch.zeros((n, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    return ids, mask, positions, predict, targets, valid, c_max


def shared_prefix_logprobs(
    model: torch.nn.Module,
    adapter: VLMAdapter,
    chosen: EncodedBatch,
    rejected: EncodedBatch,
    features: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs and masks of chosen and rejected, from one shared-prefix forward."""
    device = chosen.input_ids.device
    dtype = adapter.base_model.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point or dtype.itemsize < 2:
        dtype = torch.float32
    ids, mask, positions, predict, targets, valid, c_max = (
        t.to(device) if isinstance(t, torch.Tensor) else t
        for t in shared_prefix_inputs(chosen, rejected, adapter.tokenizer.pad_token_id, dtype)
    )
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    if features is not None:
        kwargs["mm_encoder_outputs"] = features
    else:
        kwargs.update(chosen.image_inputs)
    logits = model(**kwargs, logits_to_keep=predict, use_cache=False).logits  # (B, C+R, V)
    logps = gather_logprobs(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).view(targets.shape)
    logps = logps * valid
    return logps[:, :c_max], valid[:, :c_max], logps[:, c_max:], valid[:, c_max:]
