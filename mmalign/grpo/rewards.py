"""Reward functions for group RL: verifiable visual rewards, reward models, format and length.

A reward function is any callable with TRL's signature
``fn(prompts, completions, **columns) -> list[float | None]``: ``columns`` holds every
column of the prompt set (except the images) as a list per completion, plus
``completion_lengths`` (tokens) and ``ended`` (stopped by the end-of-turn token). ``None``
means "does not apply to this row" (the row's other rewards still count, as in TRL).

The visual rewards check an answer against the image's annotations: the objects a
description names (through :mod:`mmalign.grounding`, the same extraction CHAIR uses, so a
synonym the benchmark would count as hallucinated cannot earn reward), and the short
answers of yes/no, counting and colour questions against the reference answer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from mmalign.chat import first_word
from mmalign.grounding.objects import ObjectVocabulary, resolve_vocabulary

RewardFunction = Callable[..., list[float | None]]
GROUNDING_MEASURES = ("precision", "recall", "f1")


def grounding_scores(text: str, present: Sequence[str], vocabulary: ObjectVocabulary) -> dict[str, float]:
    """Precision, recall and F1 of the objects ``text`` names against the ``present`` ones.

    Precision is CHAIR_i's complement on one answer (named mentions of present objects /
    all mentions, duplicates counted); recall is CHAIR's coverage (distinct present
    objects named / present objects). An answer naming no object scores 0 on all three
    (saying nothing is not grounding), unless the image has no object either (1).
    """
    mentions = vocabulary.mentions(text)
    truth = {c for c in (vocabulary.category_of(o) or o for o in present)}
    if not mentions:
        score = 1.0 if not truth else 0.0
        return {"precision": score, "recall": score, "f1": score}
    precision = sum(m.category in truth for m in mentions) / len(mentions)
    recall = len({m.category for m in mentions} & truth) / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


class ObjectGroundingReward:
    """Object precision, recall or F1 of a description against the row's ``objects``.

    Rows without annotated objects get ``None``. ``vocabulary`` is fixed when the trainer
    prepares the reward on its prompt set (:meth:`prepare`), from every object named there.
    """

    def __init__(self, measure: str = "f1", vocabulary: str | ObjectVocabulary = "auto"):
        if measure not in GROUNDING_MEASURES:
            raise ValueError(f"unknown grounding measure {measure!r}; choose from {', '.join(GROUNDING_MEASURES)}")
        self.measure = measure
        self.__name__ = f"object_{measure}"
        self.choice = vocabulary
        self.vocabulary = vocabulary if isinstance(vocabulary, ObjectVocabulary) else None

    def prepare(self, dataset) -> None:
        if self.vocabulary is None:
            names = sorted({o for row in dataset["objects"] if row for o in row}) if "objects" in dataset.column_names else []
            if not names and self.choice != "coco":
                raise ValueError(f"reward {self.__name__}: the prompt set has no 'objects' column to check against")
            self.vocabulary = resolve_vocabulary(self.choice, names)

    def __call__(self, prompts, completions, objects=None, **_: Any) -> list[float | None]:
        if self.vocabulary is None:
            raise RuntimeError(f"reward {self.__name__} is not prepared: call prepare(dataset) first")
        objects = objects or [None] * len(completions)
        return [None if present is None else grounding_scores(text, present, self.vocabulary)[self.measure]
                for text, present in zip(completions, objects)]


def answer_match(prompts, completions, reference=None, **_: Any) -> list[float | None]:
    """1 when the completion's first word is the reference answer's ("Yes", "Two", "Red"), else 0.

    The exact-match reward of yes/no, counting and colour questions; rows without a
    reference get ``None``. Only the first word counts, as POPE reads answers.
    """
    reference = reference or [None] * len(completions)
    return [None if not ref else float(first_word(text) == first_word(ref))
            for text, ref in zip(completions, reference)]


def format_reward(prompts, completions, ended=None, **_: Any) -> list[float | None]:
    """1 for an answer that ends by itself (the end-of-turn token) and says something, else 0."""
    ended = ended if ended is not None else [True] * len(completions)
    return [float(bool(done) and bool(first_word(text))) for text, done in zip(completions, ended)]


class LengthReward:
    """min(words / target, 1): full credit from ``target`` words on, so answers do not shrink
    to avoid mistakes, and nothing for padding beyond the target."""

    def __init__(self, target_words: int = 40):
        self.target = target_words
        self.__name__ = "length"

    def __call__(self, prompts, completions, **_: Any) -> list[float | None]:
        return [min(len(text.split()) / self.target, 1.0) for text in completions]


class ScorerReward:
    """A saved reward (or cost) model as a reward function: its scalar score of each answer,
    reading the row's facts if it is a Fact-RM."""

    def __init__(self, scorer, name: str):
        self.scorer = scorer
        self.__name__ = name

    def __call__(self, prompts, completions, images=None, facts=None, **_: Any) -> list[float | None]:
        return list(self.scorer(images or [[]] * len(prompts), prompts, completions, facts))


def import_function(path: str) -> RewardFunction:
    """``package.module:function`` -> the function (the user's own reward)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"reward {path!r}: expected a built-in name or module:function")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward {path!r}: cannot import it ({err})") from None
    if not callable(function):
        raise ValueError(f"reward {path!r} is not callable")
    return function


def build_reward(name: str, *, scorers: dict[str, Any] | None = None, length_target_words: int = 40,
                 object_vocabulary: str = "auto") -> RewardFunction:
    """A reward function by built-in name, ``reward_model`` / ``cost_model`` (needs ``scorers``),
    or ``module:function``."""
    builtin: dict[str, Callable[[], RewardFunction]] = {
        **{f"object_{m}": (lambda m=m: ObjectGroundingReward(m, object_vocabulary)) for m in GROUNDING_MEASURES},
        "answer_match": lambda: answer_match,
        "format": lambda: format_reward,
        "length": lambda: LengthReward(length_target_words),
    }
    if name in builtin:
        return builtin[name]()
    if name in ("reward_model", "cost_model"):
        if not scorers or name not in scorers:
            raise ValueError(f"reward {name!r} needs a loaded model ({name}_path)")
        return ScorerReward(scorers[name], name)
    return import_function(name)


def reward_name(function: RewardFunction) -> str:
    return getattr(function, "__name__", None) or type(function).__name__
