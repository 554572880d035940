"""Metric helpers shared by the yes/no benchmarks (POPE, AMBER's discriminative part)."""

from __future__ import annotations

from collections.abc import Sequence

from mmalign.chat import first_word


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, 0.0 for an empty denominator (official scripts divide
    by zero there; a report needs a number)."""
    return numerator / denominator if denominator else 0.0


def first_word_yes_no(text: str) -> str:
    """"yes" or "no" when the answer's first word (case-folded, punctuation ignored) is
    one of them, else "unknown"."""
    word = first_word(text)
    return word if word in ("yes", "no") else "unknown"


def binary_metrics(labels: Sequence[str], predictions: Sequence[str], positive: str) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (percent) with ``positive`` as the positive class.

    ``labels`` and ``predictions`` are "yes"/"no"; a prediction that is neither (an
    "unknown" answer) is wrong: a missed positive, and never a true negative.
    ``predicted_positive`` is the share of predictions equal to ``positive`` (POPE's
    yes-ratio when ``positive="yes"``).
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    tp = sum(lab == positive and pred == positive for lab, pred in zip(labels, predictions))
    fp = sum(lab != positive and pred == positive for lab, pred in zip(labels, predictions))
    fn = sum(lab == positive and pred != positive for lab, pred in zip(labels, predictions))
    tn = sum(lab != positive and pred == lab for lab, pred in zip(labels, predictions))
    unknown = sum(pred not in ("yes", "no") for pred in predictions)
    n = len(labels)
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return {
        "accuracy": 100 * ratio(tp + tn, n),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * ratio(2 * precision * recall, precision + recall),
        "predicted_positive": 100 * ratio(tp + fp, n),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "unknown": unknown,
        "n": n,
    }
