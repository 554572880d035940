"""Batch preference pairs into scoring sequences: the ``first`` rows, then the ``second``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from mmalign.chat import response_text
from mmalign.models.adapter import VLMAdapter
from mmalign.reward.data import scored_pair
from mmalign.reward.template import RewardTemplate, encode_for_scoring


@dataclass
class ScalarPairCollator:
    """One 2B-row batch per B pairs, so both responses go through the model in one forward.

    The facts are shuffled afresh every time a record is collated (seeded), as Fact-RLHF
    does; ``signs`` carries the cost model's sign targets (0 where unlabelled).
    """

    adapter: VLMAdapter
    template: RewardTemplate
    kind: str = "reward"
    cost_signs: str = "label"
    max_length: int | None = None
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self):
        self.rng = random.Random(f"reward-facts-{self.seed}")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [scored_pair(r, i, self.kind, self.cost_signs) for i, r in enumerate(rows)]
        images = [r.get("images") or [] for r in rows] * 2
        prompts = [r["prompt"] for r in rows] * 2
        responses = [response_text(p.first) for p in pairs] + [response_text(p.second) for p in pairs]
        facts = [r.get("facts") for r in rows] * 2
        batch = encode_for_scoring(self.adapter, self.template, images, prompts, responses, facts,
                                   rng=self.rng if self.template.use_facts else None, max_length=self.max_length)
        features = batch.as_features()
        features["signs"] = torch.tensor([p.first_sign for p in pairs] + [p.second_sign for p in pairs])
        return features
