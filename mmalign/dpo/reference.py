"""Reference per-token log-probs computed once and stored with the data.

The reference model is frozen, so its log-probs on a pair never change: computing them
once saves a forward pass per step, and storing them per token (not per sequence) lets
Dense DPO's γ and normalisation change without recomputing. RLHF-V trained this way.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from mmalign.dpo.collator import DPOCollator, ImageCorruption
from mmalign.dpo.logprobs import PairBatch, batch_features, batch_logprobs
from mmalign.models.adapter import VLMAdapter

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


@torch.no_grad()
def precompute_reference_logps(
    adapter: VLMAdapter,
    dataset: Dataset,
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    share_prefix: bool = False,
    progress: bool = True,
    feature_cache=None,
    corruption: ImageCorruption | None = None,
) -> Dataset:
    """Return ``dataset`` with ``ref_chosen_logps`` / ``ref_rejected_logps`` columns (and, with
    mDPO's ``corruption``, ``ref_corrupted_logps``: the chosen answer with corrupted images).

    The reference is ``adapter`` exactly as it is now (so a freshly attached LoRA, or a
    loaded SFT adapter, is the reference). Pairs that cannot fit ``max_length`` even after
    image-aware truncation are left out, as training would drop them. A ``feature_cache``
    (:class:`~mmalign.models.feature_cache.ImageFeatureCache`) is read and filled on the way.
    """
    collator = DPOCollator(adapter, max_length, corruption=corruption)
    was_training = adapter.model.training
    adapter.model.eval()
    names = REF_COLUMNS + (("ref_corrupted_logps",) if corruption is not None else ())
    columns: dict[str, list[Any]] = {name: [None] * len(dataset) for name in names}

    def features_of(batch):
        return feature_cache.features(batch) if feature_cache else adapter.image_features(batch)

    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="reference log-probs", disable=not progress):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        features = {k: v.to(adapter.device) for k, v in collator(rows).items()}
        batch = PairBatch.from_inputs(features, adapter)
        values = batch_logprobs(adapter.model, adapter, batch, batch_features(batch, features_of),
                                share_prefix=share_prefix)
        for j, index in enumerate(features["pair_index"].tolist()):
            for side, (logps, mask) in values.items():
                columns[f"ref_{side}_logps"][start + index] = logps[j][mask[j]].float().cpu().tolist()
    adapter.model.train(was_training)
    keep = [i for i, values in enumerate(columns["ref_chosen_logps"]) if values is not None]
    out = dataset.remove_columns([c for c in names if c in dataset.column_names])
    for name in names:
        out = out.add_column(name, columns[name])
    return out.select(keep) if len(keep) < len(dataset) else out
