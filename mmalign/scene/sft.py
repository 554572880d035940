"""Instruction data from the scene world, for pretraining the tiny scene VLM.

Each row is one image with a few question/answer turns (existence, counting, colour,
position, description...), in the TRL ``messages`` format the SFT trainer reads. Answers
follow the world's annotations, so whatever the model gets wrong later is learned bias,
not label noise; the co-occurrence bias lives in which objects the training scenes hold.
"""

from __future__ import annotations

import random

from datasets import Dataset

from mmalign.data_builders.sft import SFT_FEATURES
from mmalign.io import DATASETS_FOLDER, atomic_dir, check_output
from mmalign.scene.render import render
from mmalign.scene.safety import safety_prompts
from mmalign.scene.text import (
    TEMPLATES,
    captions,
    detailed_description,
    existence_qas,
    fact_check_questions,
    facts_block,
    facts_existence_questions,
    questions,
    scene_facts,
)
from mmalign.scene.world import WorldConfig, scene_at

#: Appended to a question when the short answer is wanted (LLaVA-1.5's wording).
SHORT_ANSWER = TEMPLATES["short_answer"]


def _text(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


def scene_conversation(qas: list, rng: random.Random, turns: int) -> list[dict]:
    """Pick up to ``turns`` QA pairs; short or full answers at random; image in turn one."""
    chosen = rng.sample(qas, min(turns, len(qas)))
    messages = []
    for i, qa in enumerate(chosen):
        short = qa.kind not in ("describe",) and rng.random() < 0.5
        question = f"{qa.question} {SHORT_ANSWER}" if short else qa.question
        content = _text(question)
        if i == 0:
            content = [{"type": "image", "text": None}, *content]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": _text(qa.answer if short else qa.full_answer)})
    return messages


#: Prompts answered with the detailed description, and with a one-sentence caption.
DETAIL_PROMPTS = (TEMPLATES["describe_q"], TEMPLATES["amber_describe_q"], TEMPLATES["describe_detail_q"])
SHORT_PROMPTS = (TEMPLATES["list_q"], TEMPLATES["caption_q"])


def _single_turn(prompt: str, answer: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image", "text": None}, *_text(prompt)]},
        {"role": "assistant", "content": _text(answer)},
    ]


def fact_check_conversation(scene, config: WorldConfig, rng: random.Random, turns: int) -> list[dict]:
    """The scene's facts listed in the first turn, then statements to check against them."""
    return _yes_no_on_facts(scene, fact_check_questions(scene, config, rng), rng, turns)


def fact_reading_conversation(scene, facts_scene, config: WorldConfig, rng: random.Random,
                              turns: int) -> list[dict]:
    """The image of ``scene``, the facts of ``facts_scene``, then statements and existence
    questions answered from the facts alone.

    When the facts are the pictured scene's, the image answers too, and a model trained only
    on such rows never learns to read: the first shipped scene VLM checked statements at its
    60 % "no" prior, with or without the facts. Facts of another scene leave reading as the
    only way to answer, which is the skill a factually augmented reward model needs."""
    checks = fact_check_questions(facts_scene, config, rng) + facts_existence_questions(facts_scene, config, rng)
    return _yes_no_on_facts(facts_scene, checks, rng, turns)


def _yes_no_on_facts(facts_scene, checks: list[tuple[str, bool]], rng: random.Random, turns: int) -> list[dict]:
    """Up to ``turns`` of ``checks`` answered yes / no; the first turn holds the image and
    lists the facts of ``facts_scene`` before its question."""
    messages = []
    for i, (question, true) in enumerate(rng.sample(checks, min(turns, len(checks)))):
        content = _text(question if i else f"{facts_block(scene_facts(facts_scene))}\n{question}")
        if i == 0:
            content = [{"type": "image", "text": None}, *content]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": _text(TEMPLATES["yes" if true else "no"])})
    return messages


def existence_drill(scene, config: WorldConfig, rng: random.Random, turns: int) -> list[dict]:
    """Existence questions only, half about present objects and half about absent ones, in
    random order, mostly with POPE's short answer: the question-to-image matching that
    descriptions alone do not teach (a model can describe well and still answer yes/no at
    chance, as the first 96 px build did)."""
    absent = [c for c in config.categories if c not in scene.counts]
    qas = existence_qas(scene, rng.sample(absent, min(len(absent), turns)))
    yes, no = [q for q in qas if q.objects], [q for q in qas if q.absent]
    n = min(len(yes), len(no), max(1, turns // 2))  # as many yes as no: no answer is a safe bet
    asked = rng.sample(yes, n) + rng.sample(no, n)
    rng.shuffle(asked)
    messages = []
    for i, qa in enumerate(asked):
        short = rng.random() < 0.8
        content = _text(f"{qa.question} {SHORT_ANSWER}" if short else qa.question)
        if i == 0:
            content = [{"type": "image", "text": None}, *content]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": _text(qa.answer if short else qa.full_answer)})
    return messages


def scene_sft_dataset(
    config: WorldConfig, n_scenes: int, *, split: str = "train", turns: int = 3, seed: int = 0,
    describe_share: float = 0.3, detail_share: float = 0.7, facts_share: float = 0.1, existence_share: float = 0.0,
    reading_share: float = 0.0, reading_other_share: float = 0.5, start: int = 1,
) -> Dataset:
    """``n_scenes`` rows of (image, conversation) drawn from the world's ``split``.

    ``describe_share`` of the rows are a single description turn, ``detail_share`` of those
    the detailed paragraph (the rest a one-sentence caption), so the model learns both
    levels of detail (what CHAIR measures). ``facts_share`` of the rows list the scene's facts
    and ask whether statements agree with them, the reading skill instruction-tuned language
    models bring to a factually augmented reward model. ``existence_share`` of the rows are
    existence drills (:func:`existence_drill`). ``reading_share`` of the rows are
    :func:`fact_reading_conversation`, ``reading_other_share`` of them with the facts of
    another scene of the range. The rest are question turns of every kind.
    Scenes ``start`` .. ``start + n_scenes - 1`` of ``split`` are used.
    """
    rng = random.Random(f"scene-sft-{seed}-{split}")
    rows_messages, rows_images = [], []
    for index in range(start, start + n_scenes):
        scene = scene_at(config, index, split)
        draw = rng.random()
        if draw < describe_share:
            if rng.random() < detail_share:
                messages = _single_turn(rng.choice(DETAIL_PROMPTS), detailed_description(scene, config))
            else:
                messages = _single_turn(rng.choice(SHORT_PROMPTS), rng.choice(captions(scene)))
        elif draw < describe_share + facts_share:
            messages = fact_check_conversation(scene, config, rng, turns)
        elif draw < describe_share + facts_share + existence_share:
            messages = existence_drill(scene, config, rng, 2 * turns)
        elif draw < describe_share + facts_share + existence_share + reading_share:
            other = rng.random() < reading_other_share
            facts_scene = scene_at(config, rng.randrange(start, start + n_scenes), split) if other else scene
            messages = fact_reading_conversation(scene, facts_scene, config, rng, turns)
        else:
            messages = scene_conversation(questions(scene, config), rng, turns)
        rows_messages.append(messages)
        rows_images.append([render(scene)])
    return Dataset.from_dict({"messages": rows_messages, "images": rows_images}, features=SFT_FEATURES)


def scene_safety_sft_dataset(config: WorldConfig, n_scenes: int, *, split: str = "train", seed: int = 0,
                             start: int = 1) -> Dataset:
    """Safety conversations answered by a uniformly drawn labelled response, harmful ones included.

    This is an *imperfect* instruction-tuning mix on purpose, like web-scale SFT data: a
    model tuned on it sometimes complies with harmful requests and sometimes over-refuses,
    which is the starting point Safe RLHF-V's PPO-Lagrangian is meant to fix.
    """
    rng = random.Random(f"scene-safety-sft-{seed}-{split}")
    rows_messages, rows_images = [], []
    for index in range(start, start + n_scenes):
        scene = scene_at(config, index, split)
        for prompt in safety_prompts(scene):
            response = rng.choice(prompt.responses)
            rows_messages.append([
                {"role": "user", "content": [{"type": "image", "text": None}, *_text(prompt.prompt)]},
                {"role": "assistant", "content": _text(response.text)},
            ])
            rows_images.append([render(scene)])
    return Dataset.from_dict({"messages": rows_messages, "images": rows_images}, features=SFT_FEATURES)


def save_scene_sft_dataset(out_dir, config: WorldConfig, n_scenes: int, *, overwrite: bool = False,
                           **kwargs) -> None:
    """Write :func:`scene_sft_dataset` as a ``datasets`` folder, atomically. An existing
    ``out_dir`` is replaced if it is a datasets folder (or empty), any other folder only
    with ``overwrite``."""
    check_output(out_dir, replaces=DATASETS_FOLDER, overwrite=overwrite)
    dataset = scene_sft_dataset(config, n_scenes, **kwargs)
    with atomic_dir(out_dir, replaces=DATASETS_FOLDER, overwrite=overwrite) as tmp:
        dataset.save_to_disk(str(tmp))
