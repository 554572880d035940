"""Batched scoring with a trained reward or cost model, and its loading in one call."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmalign.data_builders.images import ImageError, decode_image
from mmalign.data_builders.schema import RecordError, normalise_messages
from mmalign.io import read_json
from mmalign.models.scalar_head import HEAD_CONFIG, ScalarHeadModel
from mmalign.reward.ensemble import RewardEnsemble, load_scoring_model, scoring_model_path
from mmalign.reward.template import RewardTemplate, encode_for_scoring


def base_of(path: str | Path) -> str:
    """The base checkpoint a saved reward / cost model was trained on (from its PEFT config)."""
    config = Path(path) / "adapter_config.json"
    if not config.exists():
        raise ValueError(f"{path}: no adapter_config.json; pass the base model explicitly")
    base = read_json(config)
    if not isinstance(base, dict) or not isinstance(base.get("base_model_name_or_path"), str) \
            or not base["base_model_name_or_path"]:
        raise ValueError(f"{config}: names no base model (base_model_name_or_path); pass the base model explicitly")
    return base["base_model_name_or_path"]


def load_reward_model(path: str | Path, base: str | Path | None = None, *, aggregation: str | None = None,
                      uncertainty_weight: float | None = None,
                      **adapter_kwargs: Any) -> ScalarHeadModel | RewardEnsemble:
    """Load a saved reward / cost model (adapter + head + template) or ensemble on its
    base, in eval mode.

    ``base`` defaults to the base recorded in the adapter (an ensemble's first member's);
    ``aggregation`` / ``uncertainty_weight`` override an ensemble's saved ones;
    ``adapter_kwargs`` go to :func:`~mmalign.models.load_adapter` (``dtype``,
    ``quantization``, ``device_map``).
    """
    from mmalign.models import load_adapter

    single = scoring_model_path(path)
    if not (single / HEAD_CONFIG).exists():
        raise ValueError(f"{path}: not a reward or cost model folder (no {HEAD_CONFIG}) nor an ensemble of them")
    adapter = load_adapter(str(base or base_of(single)), **adapter_kwargs)
    return load_scoring_model(path, adapter, aggregation=aggregation, uncertainty_weight=uncertainty_weight)


class RewardScorer:
    """``scorer(images, prompts, responses, facts=None) -> list[float]``, in batches, no grads.

    Uses the template the model was trained with, so a Fact-RM reads the facts exactly as
    in training; the facts' order is shuffled with a fixed seed per call, so the same input
    always gets the same score.
    """

    def __init__(self, model: ScalarHeadModel, *, batch_size: int = 8, max_length: int | None = 2048,
                 seed: int = 0, name: str | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"the batch size must be a whole number of at least 1, got {batch_size!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be at least 1 (or None), got {max_length!r}")
        self.model = model
        self.template = RewardTemplate(**(model.template or {}))
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.name = name or f"{model.kind}-model"
        self.last_spread: float | None = None  # an ensemble's mean member spread in the last call

    @torch.no_grad()
    def score_members(
        self,
        images: Sequence[Any] | None,
        prompts: Sequence[Any],
        responses: Sequence[str],
        facts: Sequence[Sequence[str] | None] | None = None,
    ) -> torch.Tensor:
        """``(K, N)`` scores of an ensemble's members (standardised as the ensemble uses
        them); ``(1, N)`` for a single model."""
        adapter = self.model.adapter
        images = images if images is not None else [None] * len(prompts)
        facts = facts if facts is not None else [None] * len(prompts)
        rng = random.Random(f"score-facts-{self.seed}") if self.template.use_facts else None
        ensemble = isinstance(self.model, RewardEnsemble)
        parts: list[torch.Tensor] = []
        was_training = self.model.training
        self.model.eval()  # LoRA dropout off: a score must not depend on the call
        try:
            for lo in range(0, len(prompts), self.batch_size):
                span = slice(lo, lo + self.batch_size)
                batch = encode_for_scoring(adapter, self.template, images[span], prompts[span], responses[span],
                                           facts[span], rng=rng, max_length=self.max_length).to(adapter.device)
                scores = self.model.member_scores(batch) if ensemble else self.model(batch).unsqueeze(0)
                parts.append(scores.float().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(parts, dim=1) if parts else torch.zeros(1, 0)

    def __call__(
        self,
        images: Sequence[Any] | None,
        prompts: Sequence[Any],
        responses: Sequence[str],
        facts: Sequence[Sequence[str] | None] | None = None,
    ) -> list[float]:
        """One score per answer: an ensemble's aggregate, whose mean spread over members
        (population std) is kept in ``last_spread`` for the trainers' logs."""
        scores = self.score_members(images, prompts, responses, facts)
        if not isinstance(self.model, RewardEnsemble):
            return scores[0].tolist()
        self.last_spread = float(scores.std(0, unbiased=False).mean()) if scores.numel() else None
        return self.model.aggregate(scores).tolist()

    def score_dataset(self, dataset, response_column: str = "chosen", column: str | None = None):
        """``dataset`` plus a column of scores (default ``<kind>_<response_column>``).

        Rows are read as stored and checked as the canonical reader checks them: images as a
        ``datasets`` image column, ``{"bytes", "path"}`` dicts, encoded bytes or PIL images
        (a path alone is refused: no image folder), a text or chat-message prompt, a text
        response, facts as a list of strings; anything else is a
        :class:`~mmalign.data_builders.schema.RecordError` naming the row and the column.
        Nothing is written anywhere (no ``Dataset.map`` cache file beside a loaded
        dataset's data): the scores join the dataset in memory. An ensemble adds
        ``<column>_members`` (each member's standardised score) and ``<column>_spread``
        (their population std) beside its aggregated score.
        """
        from datasets.fingerprint import generate_random_fingerprint

        column = column or f"{self.model.kind}_{response_column}"
        members = self.score_members_dataset(dataset, response_column)
        added = {column: members[0].tolist()}
        if isinstance(self.model, RewardEnsemble):
            added = {column: self.model.aggregate(members).tolist(), f"{column}_members": members.T.tolist(),
                     f"{column}_spread": members.std(0, unbiased=False).tolist()}
        dataset = dataset.remove_columns([c for c in added if c in dataset.column_names])
        if dataset._indices is not None:  # add_column would flatten into a cache file
            dataset = dataset.flatten_indices(keep_in_memory=True)
        for name, values in added.items():
            dataset = dataset.add_column(name, values, new_fingerprint=generate_random_fingerprint())
        return dataset

    def score_members_dataset(self, dataset, response_column: str = "chosen") -> torch.Tensor:
        """``(K, rows)`` member scores of a dataset's ``response_column``, rows read and
        checked as :meth:`score_dataset` reads them."""
        return torch.cat(list(self._dataset_parts(dataset, response_column, self.score_members)), dim=1)

    def _dataset_parts(self, dataset, response_column: str, score):
        """``score(images, prompts, responses, facts)`` over the dataset in chunks."""
        for needed in ("prompt", response_column):
            if needed not in dataset.column_names:
                raise ValueError(f"dataset has no {needed!r} column (columns: {', '.join(dataset.column_names)})")
        read = [c for c in ("images", "prompt", response_column, "facts") if c in dataset.column_names]
        done = 0
        for table in dataset.select_columns(read).with_format("arrow").iter(batch_size=self.batch_size * 4):
            rows = [_scoring_row(raw, done + i, response_column) for i, raw in enumerate(table.to_pylist())]
            try:
                yield score(*(list(part) for part in zip(*rows, strict=True)))
            except ValueError as exc:
                raise ValueError(f"rows {done}-{done + len(rows) - 1}: cannot be scored ({exc})") from None
            done += len(rows)


def _scoring_row(raw: dict[str, Any], row: int, response_column: str) -> tuple[list, Any, str, list[str] | None]:
    """(images, prompt, response, facts) of one stored row, checked; errors name row and column."""
    images = raw.get("images")
    if images is None:
        images = []
    elif not isinstance(images, list):
        images = [images]
    decoded = []
    for k, image in enumerate(images):
        if isinstance(image, Image.Image):
            decoded.append(image)
            continue
        try:
            decoded.append(decode_image(image))
        except ImageError as exc:
            raise RecordError(str(exc), field=f"images[{k}]", row=row) from None
    prompt = raw["prompt"]
    if not isinstance(prompt, str):
        try:
            prompt = normalise_messages(prompt)
        except RecordError as err:
            raise err.located(row) from None
    response = raw[response_column]
    if not isinstance(response, str):
        raise RecordError(f"expected a string, got {type(response).__name__}", field=response_column, row=row)
    facts = raw.get("facts")
    if facts is not None and (not isinstance(facts, list) or not all(isinstance(f, str) for f in facts)):
        raise RecordError("expected a list of strings", field="facts", row=row)
    return decoded, prompt, response, facts
