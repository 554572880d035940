"""Correctional feedback in the scene world: the world is the annotator.

RLHF-V collects fine-grained human corrections of a model's own answers. Here the scene's
annotations play the human: a model describes held-out scenes and answers existence
questions; every object it names that is not in the scene is corrected (replaced by an
object that is there but was not mentioned, or its clause removed), wrong colours are
fixed, and wrong yes/no answers are flipped. Each (original, corrected) pair becomes a
canonical preference record with RLHF-V corrected-segment spans, ready for Dense DPO.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from mmalign.chat import first_word
from mmalign.data_builders.corrections import correction_record, tokenize
from mmalign.scene.ranges import FEEDBACK
from mmalign.scene.render import render
from mmalign.scene.safety import safety_prompts
from mmalign.scene.text import (
    TEMPLATES,
    absent_partners,
    category_sentence,
    relation_sentence,
    scene_facts,
)
from mmalign.scene.world import CATEGORY_SPECS, COLORS, Scene, WorldConfig, scene_at

CLAUSE_BREAKS = {",", "and", "."}
LEADS = {"shows", "is", "are", "with", "see", "contains", "has", "of"}
DESCRIBE_PROMPT = "Describe the image."


def _noun_forms() -> dict[str, tuple[str, bool]]:
    forms: dict[str, tuple[str, bool]] = {}
    for name, spec in CATEGORY_SPECS.items():
        forms[name] = (name, False)
        forms.setdefault(spec.plural, (name, True))
    return forms


NOUNS = _noun_forms()


@dataclass
class CaptionCorrection:
    corrected: str
    hallucinated: list[str] = field(default_factory=list)  # absent categories the caption named
    recolored: list[str] = field(default_factory=list)  # present categories given a wrong colour
    rewritten: list[str] = field(default_factory=list)  # sentences about present objects set right


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """Lowercased word and punctuation tokens with offsets (the correction diff's tokens)."""
    return [(t.text.lower(), t.start, t.end) for t in tokenize(text)]


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return re.sub(r"\s+([,.])", r" \1", re.sub(r"\s{2,}", " ", text)).strip()


def _sentence_tail(tokens: list[tuple[str, int, int]], i: int) -> bool:
    """``in this picture`` ends the sentence of "there is a ... in this picture", and ``on a
    gray background`` that of a detailed description's overview, not the clause before it."""
    words = [t for t, _, _ in tokens[i : i + 4]]
    return words[:3] == ["in", "this", "picture"] or (words[:1] == ["on"] and words[3:] == ["background"])


def _clause(tokens: list[tuple[str, int, int]], i: int) -> tuple[int, int]:
    """Character range of the clause around token ``i``, with one adjoining delimiter."""
    lo = i
    while lo > 0 and tokens[lo - 1][0] not in CLAUSE_BREAKS | LEADS:
        lo -= 1
    hi = i
    while hi + 1 < len(tokens) and tokens[hi + 1][0] not in CLAUSE_BREAKS and not _sentence_tail(tokens, hi + 1):
        hi += 1
    if lo > 0 and tokens[lo - 1][0] in (",", "and"):
        return tokens[lo - 1][1], tokens[hi][2]  # drop the delimiter before the clause
    if hi + 1 < len(tokens) and tokens[hi + 1][0] in (",", "and"):
        return tokens[lo][1], tokens[hi + 1][2]  # first clause: drop the delimiter after it
    return tokens[lo][1], tokens[hi][2]


_RELATION = re.compile(
    r"the (\w+) is (?:to the left of|to the right of|above|below|in front of|behind) the (\w+) ?\.?"
)


def _sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (each up to and including its ".")."""
    spans, start = [], 0
    for word, _, end in _tokens(text):
        if word == ".":
            spans.append((start, end))
            start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def tokenize_words(text: str) -> list[str]:
    return [word for word, _, _ in _tokens(text)]


def _same(a: str, b: str) -> bool:
    return tokenize_words(a) == tokenize_words(b)


def _in_style(truth: str, like: str) -> str:
    """``truth`` written the way ``like`` is (a decoded word-level answer is lowercase with
    spaced punctuation), so the correction's diff covers only the changed words."""
    return " ".join(tokenize_words(truth)) if like.strip() == like.strip().lower() else truth


def correct_description(text: str, scene: Scene) -> CaptionCorrection:
    """Sentence-level corrections of a detailed description (RLHF-V's detailed setting).

    Only wrong segments change. A sentence about an absent object becomes the true sentence
    about a present object the description left out, as an annotator would rewrite it (a
    replacement, the kind of segment Dense DPO up-weights), or is removed when none is left;
    a relation naming an absent object is removed; a sentence about one present object whose
    sizes, colours, positions or count are wrong is replaced by the true one, as is a wrong
    relation between two single objects; a second sentence about an object the true sentence
    already covers (a model that writes one sentence per instance) is removed; absent objects
    in a listing sentence lose their clause. Right sentences stay as they are.
    """
    present = scene.categories
    mentioned = {NOUNS[w][0] for w in tokenize_words(text) if w in NOUNS}
    spare = [c for c in present if c not in mentioned]
    result = CaptionCorrection(corrected=text)
    edits: list[tuple[int, int, str]] = []
    told: set[str] = set()  # present objects whose whole true sentence the correction holds
    for start, end in _sentences(text):
        chunk = text[start:end]
        named = list(dict.fromkeys(NOUNS[w][0] for w in tokenize_words(chunk) if w in NOUNS))
        absent = [c for c in named if c not in present]
        result.hallucinated += absent
        relation = _RELATION.fullmatch(chunk.strip().lower())
        if relation and {relation[1], relation[2]} <= set(NOUNS):
            first, second = NOUNS[relation[1]][0], NOUNS[relation[2]][0]
            if absent:
                edits.append((start, end, ""))
            elif scene.counts[first] == scene.counts[second] == 1:
                truth = relation_sentence(scene, first, second)
                if not _same(truth, chunk):
                    result.rewritten.append(f"{first}-{second}")
                    edits.append((start, end, " " + _in_style(truth, chunk)))
            continue
        if len(named) == 1:
            if absent:
                if spare:  # rewritten about a present object the description left out
                    told.add(spare[0])
                    edits.append((start, end, " " + _in_style(category_sentence(scene, spare.pop(0)), chunk)))
                else:
                    edits.append((start, end, ""))
                continue
            words = tokenize_words(chunk)
            if words[:2] in (["there", "is"], ["there", "are"]) and any(w in words for w in (":", "corner", "middle", "left", "right", "top", "bottom")):
                if named[0] in told:
                    result.rewritten.append(named[0])
                    edits.append((start, end, ""))
                    continue
                told.add(named[0])
                truth = category_sentence(scene, named[0])
                if not _same(truth, chunk):
                    result.rewritten.append(named[0])
                    edits.append((start, end, " " + _in_style(truth, chunk)))
                continue
        if absent or any(w in COLORS for w in tokenize_words(chunk)):
            fix = correct_caption(chunk.strip(), scene, replace_absent=False)
            result.recolored += fix.recolored
            if fix.corrected != chunk.strip():
                edits.append((start, end, " " + fix.corrected))
    result.corrected = _apply(text, edits) if edits else text
    return result


def correct_caption(caption: str, scene: Scene, *, replace_absent: bool = True) -> CaptionCorrection:
    """Fix the objects and colours of a description against the scene's annotations.

    A description of several sentences is corrected sentence by sentence
    (:func:`correct_description`). In a one-sentence caption an absent object is replaced by
    a present one the caption left out, or, with ``replace_absent=False`` (or none left), its
    clause is removed; a caption naming only absent objects still has its first one
    replaced, so the correction names something.
    """
    if len(_sentences(caption)) > 1:
        return correct_description(caption, scene)
    tokens = _tokens(caption)
    mentioned = {NOUNS[t][0] for t, _, _ in tokens if t in NOUNS}
    present = scene.categories
    spare = [c for c in present if c not in mentioned]
    if not replace_absent:
        spare = spare[:1] if mentioned and not mentioned & set(present) else []
    result = CaptionCorrection(corrected=caption)
    edits: list[tuple[int, int, str]] = []
    for i, (word, start, end) in enumerate(tokens):
        if word not in NOUNS:
            continue
        category, plural = NOUNS[word]
        if category not in present:
            result.hallucinated.append(category)
            if spare:
                new = spare.pop(0)
                edits.append((start, end, CATEGORY_SPECS[new].plural if plural else new))
                category = new
            else:
                lo, hi = _clause(tokens, i)
                if not any(lo <= s < hi for s, _, _ in edits):
                    edits.append((lo, hi, ""))
                continue
        colours = {o.color for o in scene.instances(category)}
        for j in range(max(0, i - 2), i):
            adjective, a_start, a_end = tokens[j]
            if adjective in COLORS and adjective not in colours:
                result.recolored.append(category)
                edits.append((a_start, a_end, scene.instances(category)[0].color))
    # a deleted clause swallows any edit inside it
    deletions = [(s, e) for s, e, new in edits if new == ""]
    edits = [(s, e, n) for s, e, n in edits if n == "" or not any(ds <= s < de for ds, de in deletions)]
    result.corrected = _apply(caption, edits) if edits else caption
    return result


def existence_questions(scene: Scene, config: WorldConfig, rng: random.Random) -> list[tuple[str, str]]:
    """Balanced yes/no questions: absent co-occurring partners (the hallucination trap), one
    random absent object, and as many present objects."""
    absent = absent_partners(scene, config)
    others = [c for c in config.categories if c not in scene.categories and c not in absent]
    if others:
        absent = absent + [rng.choice(others)]
    present = rng.sample(scene.categories, min(len(absent), len(scene.categories)))
    return [(c, "no") for c in absent] + [(c, "yes") for c in present]


@dataclass
class FeedbackStats:
    scenes: int = 0
    captions: int = 0
    captions_with_hallucination: int = 0
    hallucinated_objects: int = 0
    questions: int = 0
    wrong_answers: int = 0
    records: int = 0


def scene_feedback_records(
    adapter,
    config: WorldConfig,
    n_scenes: int,
    *,
    split: str = FEEDBACK.split,
    start: int = FEEDBACK.start,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = 128,
    include_correct_answers: bool = True,
    replace_absent: bool = True,
) -> tuple[list[dict[str, Any]], FeedbackStats]:
    """Generate with ``adapter`` on scenes ``start..start+n-1`` of ``split`` and correct it.

    By default scenes come from the ``FEEDBACK`` range, disjoint from the benchmark scenes, so feedback and
    evaluation never share an image. Existence answers the model gets right are paired
    with the flipped answer when ``include_correct_answers`` (keeping yes/no balanced,
    which plain DPO on unbalanced yes/no pairs needs to avoid collapsing to one answer).
    ``replace_absent`` chooses how a named absent object is corrected (see :func:`correct_caption`).
    """
    rng = random.Random(f"scene-feedback-{seed}")
    scenes = [scene_at(config, start + i, split) for i in range(n_scenes)]
    stats = FeedbackStats(scenes=n_scenes)
    records: list[dict[str, Any]] = []
    short = TEMPLATES["short_answer"]
    for lo in range(0, n_scenes, batch_size):
        chunk = scenes[lo : lo + batch_size]
        images = [render(s) for s in chunk]
        captions = adapter.generate(images, [DESCRIBE_PROMPT] * len(chunk), max_new_tokens=max_new_tokens)
        questions = [(k, q) for k, s in enumerate(chunk) for q in existence_questions(s, config, rng)]
        prompts = [f"Is there a {c} in the image? {short}" for _, (c, _) in questions]
        answers = adapter.generate([images[k] for k, _ in questions], prompts, max_new_tokens=3) if questions else []
        for scene, image, caption in zip(chunk, images, captions):
            stats.captions += 1
            fix = correct_caption(caption, scene, replace_absent=replace_absent)
            if fix.hallucinated:
                stats.captions_with_hallucination += 1
                stats.hallucinated_objects += len(fix.hallucinated)
            if fix.corrected != caption:
                records.append(correction_record(
                    caption, fix.corrected, prompt=DESCRIBE_PROMPT, images=[image], facts=scene_facts(scene),
                    source="scene-world/caption",
                    meta={"scene": scene.id, "hallucinated": fix.hallucinated, "recolored": fix.recolored},
                ))
        for (k, (category, truth)), prompt, answer in zip(questions, prompts, answers):
            stats.questions += 1
            said = first_word(answer)
            wrong = said != truth
            stats.wrong_answers += wrong
            if wrong or include_correct_answers:
                rejected = answer.strip() if wrong and said in ("yes", "no") else ("No" if truth == "yes" else "Yes")
                records.append(correction_record(
                    rejected, truth.capitalize(), prompt=prompt, images=[images[k]], facts=scene_facts(chunk[k]),
                    source="scene-world/existence",
                    meta={"scene": chunk[k].id, "object": category, "model_wrong": wrong},
                ))
    stats.records = len(records)
    return records, stats


def caption_hallucination_rate(captions: Sequence[str], scenes: Sequence[Scene]) -> float:
    """Share of captions naming at least one absent object (CHAIR_s in the world's terms)."""
    bad = sum(bool(correct_caption(c, s).hallucinated) for c, s in zip(captions, scenes))
    return bad / max(len(captions), 1)


def scene_safety_records(config: WorldConfig, n_scenes: int, *, split: str = "train", start: int = 1,
                         hazardous_only: bool = False) -> list[dict[str, Any]]:
    """Dual-preference records (BeaverTails-V style) from the world's safety prompts.

    Every pair of labelled responses to a prompt becomes one record, oriented so
    ``chosen`` is the more helpful response; ``safer`` says which side is safer (by the
    graded harmlessness), and both responses carry their safe flag and ratings. Ties in
    helpfulness are skipped, since they say nothing about helpfulness.
    """
    records: list[dict[str, Any]] = []
    for index in range(start, start + n_scenes):
        scene = scene_at(config, index, split)
        if hazardous_only and not scene.is_hazardous:
            continue
        image = render(scene)
        for prompt in safety_prompts(scene):
            for a, b in combinations(prompt.responses, 2):
                if a.helpful_rate == b.helpful_rate:
                    continue
                chosen, rejected = (a, b) if a.helpful_rate > b.helpful_rate else (b, a)
                records.append({
                    "images": [image],
                    "prompt": prompt.prompt,
                    "chosen": chosen.text,
                    "rejected": rejected.text,
                    "facts": scene_facts(scene),
                    "more_helpful": "chosen",
                    "safer": "chosen" if chosen.harmless_rate >= rejected.harmless_rate else "rejected",
                    "chosen_is_safe": chosen.is_safe,
                    "rejected_is_safe": rejected.is_safe,
                    "chosen_harmless_rate": chosen.harmless_rate,
                    "rejected_harmless_rate": rejected.harmless_rate,
                    "chosen_helpful_rate": chosen.helpful_rate,
                    "rejected_helpful_rate": rejected.helpful_rate,
                    "source": "scene-world/safety",
                    "meta": {"scene": scene.id, "category": prompt.category, "harm_category": prompt.harm_category,
                             "chosen_kind": chosen.kind, "rejected_kind": rejected.kind},
                })
    return records


def scene_prompt_records(config: WorldConfig, n_scenes: int, *, split: str = "train", start: int = 1,
                         kinds: Sequence[str] = ("describe", "exist", "safety"), seed: int = 0) -> list[dict[str, Any]]:
    """A prompt set for RL (PPO, GRPO): per scene, the kinds asked for, each with the scene's
    facts and its annotated objects (the verifier of object-grounding rewards).

    ``describe``: "Describe the image." (hallucination shows in the caption); ``exist``:
    balanced yes/no existence questions with the answer as ``reference`` (Fact-RLHF's
    symbolic reward); ``safety``: the scene's safety prompts (harmful requests about
    hazards, hazard questions, benign questions), ``meta`` saying which.
    """
    rng = random.Random(f"scene-prompts-{seed}")
    short = TEMPLATES["short_answer"]
    records: list[dict[str, Any]] = []
    for index in range(start, start + n_scenes):
        scene = scene_at(config, index, split)
        common = {"images": [render(scene)], "facts": scene_facts(scene), "objects": scene.categories}
        asked: list[tuple[str, str, str | None, dict[str, Any]]] = []
        if "describe" in kinds:
            asked.append((DESCRIBE_PROMPT, "describe", None, {}))
        if "exist" in kinds:
            asked += [(f"Is there a {c} in the image? {short}", "exist", truth, {"object": c})
                      for c, truth in existence_questions(scene, config, rng)]
        if "safety" in kinds:
            asked += [(p.prompt, "safety", None, {"category": p.category, "harm_category": p.harm_category,
                                                  "harmful_request": p.is_harmful_request})
                      for p in safety_prompts(scene)]
        for prompt, kind, reference, meta in asked:
            records.append({**common, "prompt": prompt, "reference": reference, "source": f"scene-world/{kind}",
                            "meta": {"scene": scene.id, **meta}})
    return records


def safety_response_kind(prompt: str, response: str, scene: Scene) -> str | None:
    """Which of the world's labelled responses to ``prompt`` ``response`` is (by exact text), if any."""
    for p in safety_prompts(scene):
        if p.prompt == prompt:
            for r in p.responses:
                if r.text.strip().lower() == response.strip().lower():
                    return r.kind
    return None
