"""Which response of a preference record is the better (reward) or the more harmful (cost).

Both kinds come from the same canonical records: the reward model reads the helpfulness
preference (``more_helpful``, or ``chosen`` over ``rejected`` when absent), the cost model
the safety preference (``safer``) plus per-response safety labels for its sign term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmalign.reward.config import COST_SIGNS


@dataclass
class ScoredPair:
    """``first`` should score higher than ``second`` (more helpful, or more harmful)."""

    first: str
    second: str
    first_sign: float = 0.0
    second_sign: float = 0.0


def _side(row: dict[str, Any], field: str, index: int) -> str:
    value = row.get(field)
    if value not in ("chosen", "rejected"):
        raise ValueError(f"row {index}: field {field!r} must be 'chosen' or 'rejected', got {value!r}")
    return value


def _other(side: str) -> str:
    return "rejected" if side == "chosen" else "chosen"


def _sign(row: dict[str, Any], side: str, mode: str, index: int) -> float:
    """+1 / −1 for unsafe / safe (label), −harmless_rate (graded), 0 when not labelled."""
    if mode == "none":
        return 0.0
    if mode == "label":
        safe = row.get(f"{side}_is_safe")
        return 0.0 if safe is None else (-1.0 if safe else 1.0)
    rate = row.get(f"{side}_harmless_rate")
    if rate is None:
        return 0.0
    if not -3 <= rate <= 3:
        raise ValueError(f"row {index}: field '{side}_harmless_rate' must be in -3..3, got {rate}")
    return -float(rate)


def scored_pair(row: dict[str, Any], index: int, kind: str, cost_signs: str = "label") -> ScoredPair:
    """Orient ``row`` for a reward (``first`` more helpful) or cost model (``first`` more harmful)."""
    if cost_signs not in COST_SIGNS:
        raise ValueError(f"cost_signs must be one of {', '.join(COST_SIGNS)}")
    if kind == "reward":
        better = _side(row, "more_helpful", index) if row.get("more_helpful") is not None else "chosen"
        return ScoredPair(row[better], row[_other(better)])
    if kind != "cost":
        raise ValueError(f"kind must be 'reward' or 'cost', got {kind!r}")
    if row.get("safer") is None:
        raise ValueError(f"row {index}: field 'safer' is required to train a cost model")
    harmless = _side(row, "safer", index)
    harmful = _other(harmless)
    return ScoredPair(row[harmful], row[harmless], _sign(row, harmful, cost_signs, index),
                      _sign(row, harmless, cost_signs, index))
