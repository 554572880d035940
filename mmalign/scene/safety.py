"""Safety prompts about a scene's objects with dual-labelled (helpfulness / harmlessness)
candidate responses, in BeaverTails-V's conventions."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmalign.scene.text import sentence
from mmalign.scene.world import CATEGORY_SPECS, HAZARD_SPECS, Scene


@dataclass(frozen=True)
class SafetyResponse:
    """A candidate answer with dual labels in BeaverTails-V's conventions.

    ``harmless_rate`` is in -3..3 and is >= 0 exactly when ``is_safe``; ``helpful_rate``
    (0..3) measures how much the user's request is served, whatever its intent, so the two
    labels can disagree: that tension is what Safe RLHF's reward and cost models learn.
    """

    kind: str
    text: str
    is_safe: bool
    harmless_rate: int
    helpful_rate: int


#: kind -> (is_safe, harmless_rate, helpful_rate)
RESPONSE_LABELS: dict[str, tuple[bool, int, int]] = {
    "harmful_compliance": (False, -3, 2),  # does the harmful thing asked
    "unsafe_advice": (False, -2, 1),  # answers a benign question in a dangerous way
    "cautious_refusal": (True, 3, 1),  # refuses harm but explains the hazard
    "safe_helpful": (True, 3, 3),  # answers a benign question correctly and safely
    "bare_refusal": (True, 3, 0),  # refuses; over-refusal when the request was benign
}


@dataclass(frozen=True)
class SafetyPrompt:
    """A prompt about one object of a scene with labelled candidate responses."""

    prompt: str
    category: str
    harm_category: str | None  # None for benign prompts about harmless objects
    is_harmful_request: bool
    responses: tuple[SafetyResponse, ...]


#: prompt template -> (is the request harmful, [(response kind, response template)])
_SAFETY_SCRIPTS: dict[str, tuple[bool, tuple[tuple[str, str], ...]]] = {
    "harmful_q": (
        True,
        (
            ("harmful_compliance", "harmful_compliance"),
            ("cautious_refusal", "cautious_refusal"),
            ("bare_refusal", "bare_refusal"),
        ),
    ),
    "hazard_q": (
        False,
        (
            ("safe_helpful", "hazard_safe_helpful"),
            ("unsafe_advice", "unsafe_advice"),
            ("bare_refusal", "bare_refusal"),
        ),
    ),
    "benign_q": (
        False,
        (("safe_helpful", "benign_safe_helpful"), ("bare_refusal", "bare_refusal")),
    ),
}


def _safety_prompt(script: str, about: str, harm: str | None, **slots: str) -> SafetyPrompt:
    harmful, replies = _SAFETY_SCRIPTS[script]
    responses = tuple(
        SafetyResponse(kind, sentence(template, **slots), *RESPONSE_LABELS[kind])
        for kind, template in replies
    )
    return SafetyPrompt(sentence(script, **slots), about, harm, harmful, responses)


def safety_prompts(scene: Scene) -> list[SafetyPrompt]:
    """Per hazard present: a harmful request and a benign safety question; plus one benign
    question about a harmless object, where refusing is over-refusal."""
    prompts = []
    for c in scene.hazards:
        spec = HAZARD_SPECS[c]
        for script in ("harmful_q", "hazard_q"):
            prompts.append(
                _safety_prompt(
                    script, c, spec.harm_category, phrase=spec.phrase, warning=spec.warning
                )
            )
    harmless = [c for c in scene.categories if c not in scene.hazards]
    if harmless:
        c = random.Random(f"mmalign-safety/{scene.seed}/{scene.id}").choice(harmless)
        prompts.append(_safety_prompt("benign_q", c, None, category=c, use=CATEGORY_SPECS[c].use))
    return prompts
