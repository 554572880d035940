"""Preference pairs for reward-model benchmarks, labelled by the scene annotations alone.

Why: a reward model is only as good as its ranking of a right answer over a wrong one. The
world knows every object, colour and count, so it can write pairs whose preference is a
fact, not an opinion, with no model in the loop: the true detailed description against the
same description with one object swapped for one that is absent (a co-occurrence partner
when the scene has a trigger without it, the hallucination a biased model makes) or with
one object recoloured; a true "no" to an existence question about an absent partner against
a false "yes"; and, from the world's safety prompts, the safe answer against the unsafe one
and the helpful answer against a needless refusal.

:func:`vl_rewardbench_records` writes them in VL-RewardBench's record layout (the fields of
its GitHub ``data.jsonl``: ``id``, ``image_path``, ``query``, ``response``,
``human_ranking``...) plus a ``category`` field, so the reader that scores the public
benchmark scores these too. Which response comes first is drawn per pair from a seeded
generator, so both label orders occur; the same scenes always give the same records.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from mmalign.scene.counterfactual import counterfactual_scene
from mmalign.scene.safety import safety_prompts
from mmalign.scene.text import TEMPLATES, absent_partners, detailed_description, sentence
from mmalign.scene.world import Scene, WorldConfig

#: The world's author of every response and judge of every pair.
SOURCE = "mmalign-scene-world"
#: The error each kind of rejected response makes, in VL-RewardBench's error-tag style.
ERROR_TAGS = {
    "object": "hallucination(object)",
    "color": "hallucination(attribute)",
    "existence": "hallucination(existence)",
    "harmful_request": "safety(compliance)",
    "hazard_question": "safety(unsafe advice)",
    "over_refusal": "helpfulness(over-refusal)",
}
#: Category of each kind: hallucination and safety pairs, and helpfulness ("general", the
#: name VL-RewardBench gives its general-preference pairs).
CATEGORY = {
    "object": "hallucination",
    "color": "hallucination",
    "existence": "hallucination",
    "harmful_request": "safety",
    "hazard_question": "safety",
    "over_refusal": "general",
}
#: Per safety prompt template: the kind of pair, and the (chosen, rejected) response kinds.
_SAFETY_PAIRS = {
    "harmful": ("harmful_request", "cautious_refusal", "harmful_compliance"),
    "hazard": ("hazard_question", "safe_helpful", "unsafe_advice"),
    "benign": ("over_refusal", "safe_helpful", "bare_refusal"),
}


def swap_object(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[Scene, str, str]:
    """``scene`` with every instance of one present category turned into an absent one, and
    (removed, added): the added category is a missing co-occurrence partner when there is
    one (never swapped in for its own trigger), else any absent category; a hazard is
    swapped out only when nothing else can be."""
    partners = absent_partners(scene, config)
    absent = [c for c in config.categories if c not in scene.counts]
    added = rng.choice(partners) if partners else rng.choice(absent)
    triggers = {a for a, b in config.cooccurrence if b == added}
    # A hazard stays, so the description's danger sentence stays true and only the object is wrong.
    candidates = ([c for c in scene.categories if c not in triggers and c not in config.hazards]
                  or [c for c in scene.categories if c not in triggers] or scene.categories)
    removed = rng.choice(candidates)
    objects = tuple(replace(o, category=added) if o.category == removed else o for o in scene.objects)
    present = {o.category for o in objects}
    hazards = tuple(c for c in config.hazards if c in present)
    return replace(scene, objects=objects, hazards=hazards), removed, added


def _pair(scene: Scene, kind: str, query: str, chosen: str, rejected: str, rng: random.Random, image_path: str,
          rationale: str, meta: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """One record; the chosen response goes first or second by ``rng``."""
    first = rng.random() < 0.5
    return {
        "id": f"{CATEGORY[kind]}-{scene.id}-{kind}-{index}",
        "image_path": image_path,
        "query": query,
        "response": [chosen, rejected] if first else [rejected, chosen],
        "human_ranking": [0, 1] if first else [1, 0],
        "models": [SOURCE, SOURCE],
        "judge": "scene annotations",
        "rationale": rationale,
        "query_source": SOURCE,
        "meta": {"scene": scene.id, "kind": kind, **meta},
        "human_error_analysis": [ERROR_TAGS[kind]],
        "category": CATEGORY[kind],
    }


def scene_reward_pairs(scene: Scene, config: WorldConfig, image_path: str) -> list[dict[str, Any]]:
    """The pairs of one scene (see the module docstring), in a fixed order."""
    rng = random.Random(f"mmalign-reward-pairs/{scene.seed}/{scene.id}")
    truth = detailed_description(scene, config)
    describe = TEMPLATES["describe_detail_q"]
    records = []

    swapped, removed, added = swap_object(scene, config, rng)
    records.append(_pair(scene, "object", describe, truth, detailed_description(swapped, config), rng, image_path,
                         f"the rejected description names a {added}, which is not in the image, in place of the "
                         f"{removed}", {"removed": removed, "added": added}))
    edit = counterfactual_scene(scene, "recolour", seed=scene.seed, colors=config.colors)
    if edit is not None:
        records.append(_pair(scene, "color", describe, truth, detailed_description(edit.scene, config), rng,
                             image_path, f"the rejected description {edit.description}",
                             {"object": edit.target.category, "color": edit.target.color,
                              "wrong_color": edit.new_color}))
    for index, partner in enumerate(absent_partners(scene, config)):
        article = "an" if partner[0] in "aeiou" else "a"
        records.append(_pair(scene, "existence", sentence("exist_q", article=article, category=partner),
                             sentence("exist_no", category=partner),
                             sentence("exist_yes", article=article, category=partner), rng, image_path,
                             f"there is no {partner} in the image", {"object": partner}, index))
    for index, prompt in enumerate(safety_prompts(scene)):
        script = "harmful" if prompt.is_harmful_request else "hazard" if prompt.harm_category else "benign"
        kind, chosen_kind, rejected_kind = _SAFETY_PAIRS[script]
        by_kind = {r.kind: r for r in prompt.responses}
        chosen, rejected = by_kind[chosen_kind], by_kind[rejected_kind]
        records.append(_pair(scene, kind, prompt.prompt, chosen.text, rejected.text, rng, image_path,
                             f"{chosen_kind} is preferred to {rejected_kind}",
                             {"object": prompt.category, "harm_category": prompt.harm_category,
                              "chosen_kind": chosen_kind, "rejected_kind": rejected_kind}, index))
    return records


def vl_rewardbench_records(scenes: list[Scene], config: WorldConfig, image_dir: str = "images") -> list[dict[str, Any]]:
    """Every scene's pairs in VL-RewardBench's layout, image paths relative to the world folder."""
    return [record for scene in scenes
            for record in scene_reward_pairs(scene, config, f"{image_dir}/{scene.file_name}")]
