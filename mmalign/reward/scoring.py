"""Batched scoring with a trained reward or cost model, and its loading in one call."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmalign.models.scalar_head import HEAD_CONFIG, ScalarHeadModel
from mmalign.reward.template import RewardTemplate, encode_for_scoring


def base_of(path: str | Path) -> str:
    """The base checkpoint a saved reward / cost model was trained on (from its PEFT config)."""
    config = Path(path) / "adapter_config.json"
    if not config.exists():
        raise ValueError(f"{path}: no adapter_config.json; pass the base model explicitly")
    return json.loads(config.read_text())["base_model_name_or_path"]


def load_reward_model(path: str | Path, base: str | Path | None = None, **adapter_kwargs: Any) -> ScalarHeadModel:
    """Load a saved reward / cost model (adapter + head + template) on its base, in eval mode.

    ``base`` defaults to the base recorded in the adapter; ``adapter_kwargs`` go to
    :func:`~mmalign.models.load_adapter` (``dtype``, ``quantization``, ``device_map``).
    """
    from mmalign.models import load_adapter

    if not (Path(path) / HEAD_CONFIG).exists():
        raise ValueError(f"{path}: not a reward or cost model folder (no {HEAD_CONFIG})")
    adapter = load_adapter(str(base or base_of(path)), **adapter_kwargs)
    model = ScalarHeadModel.from_pretrained(path, adapter)
    model.eval()
    return model


class RewardScorer:
    """``scorer(images, prompts, responses, facts=None) -> list[float]``, in batches, no grads.

    Uses the template the model was trained with, so a Fact-RM reads the facts exactly as
    in training; the facts' order is shuffled with a fixed seed per call, so the same input
    always gets the same score.
    """

    def __init__(self, model: ScalarHeadModel, *, batch_size: int = 8, max_length: int | None = 2048,
                 seed: int = 0, name: str | None = None):
        self.model = model
        self.template = RewardTemplate(**(model.template or {}))
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.name = name or f"{model.kind}-model"

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[Any] | None,
        prompts: Sequence[Any],
        responses: Sequence[str],
        facts: Sequence[Sequence[str] | None] | None = None,
    ) -> list[float]:
        adapter = self.model.adapter
        images = images if images is not None else [None] * len(prompts)
        facts = facts if facts is not None else [None] * len(prompts)
        rng = random.Random(f"score-facts-{self.seed}") if self.template.use_facts else None
        scores: list[float] = []
        was_training = self.model.training
        self.model.eval()  # LoRA dropout off: a score must not depend on the call
        try:
            for lo in range(0, len(prompts), self.batch_size):
                span = slice(lo, lo + self.batch_size)
                batch = encode_for_scoring(adapter, self.template, images[span], prompts[span], responses[span],
                                           facts[span], rng=rng, max_length=self.max_length)
                scores += self.model(batch.to(adapter.device)).float().cpu().tolist()
        finally:
            self.model.train(was_training)
        return scores

    def score_dataset(self, dataset, response_column: str = "chosen", column: str | None = None):
        """``dataset`` plus a column of scores (default ``<kind>_<response_column>``), via ``Dataset.map``."""
        from datasets.fingerprint import generate_random_fingerprint

        column = column or f"{self.model.kind}_{response_column}"
        for needed in ("prompt", response_column):
            if needed not in dataset.column_names:
                raise ValueError(f"dataset has no {needed!r} column (columns: {', '.join(dataset.column_names)})")

        def score(rows: dict[str, list]) -> dict[str, list[float]]:
            n = len(rows["prompt"])
            return {column: self(rows.get("images") or [None] * n, rows["prompt"], rows[response_column],
                                 rows.get("facts"))}

        # The model cannot be hashed for the datasets cache; the output gets a fresh fingerprint.
        return dataset.map(score, batched=True, batch_size=self.batch_size * 4, desc=f"scoring {response_column}",
                           new_fingerprint=generate_random_fingerprint())
