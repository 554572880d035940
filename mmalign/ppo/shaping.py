"""Fact-RLHF's reward shaping: terms added to the reward model's score of a response.

Each term is a pure function of one response, configured by :class:`ShapingConfig`:

- symbolic correctness, for questions with a known answer (``reference``): the right
  multiple-choice letter earns ``choice_bonus``; for yes/no questions whose answer is
  "no", "no" earns ``no_bonus`` and "yes" costs ``yes_penalty`` (the bias LLaVA-RLHF
  corrects is answering "yes" to absent objects);
- an incomplete-response penalty when generation stopped at ``max_new_tokens`` instead of
  the end-of-turn token (only the stop token decides: a "?" inside an answer is not an end);
- a length term ``−c · (length / max_new_tokens) · multiplier``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmalign.chat import first_word

_CHOICE = re.compile(r"^\s*\(?([A-Ea-e])\)?(?:[.):,\s]|$)")


@dataclass
class ShapingConfig:
    """Weights of the shaping terms (0 disables a term)."""

    choice_bonus: float = field(default=2.0, metadata={"help": "Reward for the right multiple-choice letter."})
    no_bonus: float = field(default=1.0, metadata={"help": "Reward for 'no' when the answer is no."})
    yes_penalty: float = field(default=1.0, metadata={"help": "Penalty for 'yes' when the answer is no."})
    incomplete_penalty: float = field(default=8.0, metadata={"help": "Penalty when no end-of-turn was produced."})
    length_coef: float = field(default=0.0, metadata={"help": "c of −c·length/max_new_tokens (LLaVA-RLHF: 10)."})
    length_multiplier: float = field(default=1.0, metadata={"help": "Per-run multiplier of the length term."})


def answer_kind(reference: str | None) -> str | None:
    """``"choice"`` for a single letter A–E, ``"yesno"`` for yes / no, else ``None``."""
    if not reference:
        return None
    ref = reference.strip().strip(".").lower()
    if ref in ("yes", "no"):
        return "yesno"
    if len(ref) == 1 and ref in "abcde":
        return "choice"
    return None


def symbolic_reward(response: str, reference: str | None, config: ShapingConfig) -> float:
    kind = answer_kind(reference)
    if kind == "choice":
        match = _CHOICE.match(response)
        right = match is not None and match.group(1).lower() == reference.strip().strip(".").lower()
        return config.choice_bonus if right else 0.0
    if kind == "yesno" and reference.strip().strip(".").lower() == "no":
        said = first_word(response)
        return config.no_bonus if said == "no" else (-config.yes_penalty if said == "yes" else 0.0)
    return 0.0


def shaping_terms(
    response: str, ended: bool, length: int, max_new_tokens: int, reference: str | None, config: ShapingConfig
) -> dict[str, float]:
    """Every shaping term of one response, by name (their sum is added to the score)."""
    return {
        "symbolic": symbolic_reward(response, reference, config),
        "incomplete": 0.0 if ended else -config.incomplete_penalty,
        "length": -config.length_coef * (length / max_new_tokens) * config.length_multiplier,
    }
