"""Active selection: put first the items on which several reward models disagree most.

Each reward model scores every item (a correction item's answer; a pair item's margin,
answer A minus answer B). Scores of one model are standardised over the items, since
models differ in scale, and an item's priority is the standard deviation of its
standardised scores across models: where the models disagree, a human label is worth most.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean, pstdev

from mmalign.studio.project import StudioProject


def standardise(scores: Sequence[float]) -> list[float]:
    """z-scores over items; all-equal scores become zeros (that model expresses no preference)."""
    mu, sigma = fmean(scores), pstdev(scores)
    return [0.0 if sigma == 0 else (s - mu) / sigma for s in scores]


def disagreement(scores_by_model: Sequence[Sequence[float]]) -> list[float]:
    """Per item, the population standard deviation across models of the standardised scores."""
    if len(scores_by_model) < 2:
        raise ValueError("disagreement needs scores from at least two models")
    lengths = {len(s) for s in scores_by_model}
    if len(lengths) != 1:
        raise ValueError(f"every model must score the same items, got lengths {sorted(lengths)}")
    columns = [standardise(s) for s in scores_by_model]
    return [pstdev(values) for values in zip(*columns)]


def rank_by_disagreement(project: StudioProject, reward_models: Sequence[str | Path], *,
                         base: str | Path | None = None, batch_size: int = 8) -> dict[int, float]:
    """Score all items with each reward model, store the disagreement as priority, return it."""
    from PIL import Image

    from mmalign.reward import RewardScorer, load_reward_model

    items = project.items()
    if not items:
        raise ValueError(f"{project.path}: no items to rank")
    images = [[Image.open(io.BytesIO(project.image_path(rel).read_bytes())).convert("RGB") for rel in item.images]
              for item in items]
    prompts = [item.prompt for item in items]
    scores_by_model = []
    for path in reward_models:
        scorer = RewardScorer(load_reward_model(path, base), batch_size=batch_size)
        first = scorer(images, prompts, [item.answer for item in items])
        pairs = [i for i, item in enumerate(items) if item.kind == "pair"]
        if pairs:
            second = scorer([images[i] for i in pairs], [prompts[i] for i in pairs],
                            [items[i].answer_b for i in pairs])
            for i, score in zip(pairs, second):
                first[i] -= score
        scores_by_model.append(first)
    priorities = dict(zip((item.id for item in items), disagreement(scores_by_model)))
    project.set_priorities(priorities)
    return priorities
