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


def member_scores(reward_model: str | Path, images: Sequence[list], prompts: Sequence, answers: Sequence[str],
                  answers_b: Sequence[str | None] | None = None, *, base: str | Path | None = None,
                  batch_size: int = 8) -> list[list[float]]:
    """One row of scores per model: a single reward model gives one, an ensemble one per
    member. With ``answers_b`` an item's score is its margin (answer A minus answer B)
    wherever it has a second answer."""
    from mmalign.reward import RewardScorer, load_reward_model

    scorer = RewardScorer(load_reward_model(reward_model, base), batch_size=batch_size)
    scores = scorer.score_members(images, prompts, answers)
    seconds = [i for i, b in enumerate(answers_b or []) if b]
    if seconds:
        scores[:, seconds] -= scorer.score_members([images[i] for i in seconds], [prompts[i] for i in seconds],
                                                   [answers_b[i] for i in seconds])
    return scores.tolist()


def disagreement_of(reward_models: Sequence[str | Path], images: Sequence[list], prompts: Sequence,
                    answers: Sequence[str], answers_b: Sequence[str | None] | None = None, *,
                    base: str | Path | None = None, batch_size: int = 8) -> list[float]:
    """Per item, the disagreement across every model and every ensemble member given."""
    rows = [row for path in reward_models
            for row in member_scores(path, images, prompts, answers, answers_b, base=base, batch_size=batch_size)]
    if len(rows) < 2:
        raise ValueError("disagreement needs two or more reward models, or an ensemble (train rm --ensemble_size K)")
    return disagreement(rows)


def rank_by_disagreement(project: StudioProject, reward_models: Sequence[str | Path], *,
                         base: str | Path | None = None, batch_size: int = 8) -> dict[int, float]:
    """Score all items with each reward model (or ensemble member), store the disagreement
    as priority, return it."""
    from PIL import Image

    items = project.items()
    if not items:
        raise ValueError(f"{project.path}: no items to rank")
    images = [[Image.open(io.BytesIO(project.image_path(rel).read_bytes())).convert("RGB") for rel in item.images]
              for item in items]
    spread = disagreement_of(reward_models, images, [item.prompt for item in items], [item.answer for item in items],
                             [item.answer_b if item.kind == "pair" else None for item in items], base=base,
                             batch_size=batch_size)
    priorities = dict(zip((item.id for item in items), spread))
    project.set_priorities(priorities)
    return priorities


def most_disputed(rows: Sequence[dict], reward_models: Sequence[str | Path], top: int, *,
                  base: str | Path | None = None, batch_size: int = 8) -> dict[int, float]:
    """The ``top`` rows of a preference dataset (``images``, ``prompt``, ``chosen``,
    ``rejected``) whose chosen − rejected margin the models disagree on most: row index ->
    disagreement, highest first (ties by row order)."""
    from PIL import Image

    from mmalign.studio.project import image_bytes

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a whole number >= 1, got {top!r}")
    for index, row in enumerate(rows):
        for name in ("prompt", "chosen", "rejected"):
            if not row.get(name):
                raise ValueError(f"row {index}: field {name!r} is missing or empty")
    images = [[Image.open(io.BytesIO(data)).convert("RGB") for data in image_bytes(row.get("images"))]
              for row in rows]
    spread = disagreement_of(reward_models, images, [row["prompt"] for row in rows],
                             [row["chosen"] for row in rows], [row["rejected"] for row in rows], base=base,
                             batch_size=batch_size)
    order = sorted(range(len(rows)), key=lambda i: (-spread[i], i))[:top]
    return {i: spread[i] for i in order}
