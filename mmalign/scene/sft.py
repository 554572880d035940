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
from mmalign.scene.text import TEMPLATES, captions, questions
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


def scene_sft_dataset(
    config: WorldConfig, n_scenes: int, *, split: str = "train", turns: int = 3, seed: int = 0,
    describe_share: float = 0.3,
) -> Dataset:
    """``n_scenes`` rows of (image, conversation) drawn from the world's ``split``.

    ``describe_share`` of the rows are a single "describe the image" turn answered with a
    reference caption, so the model learns to write captions (what CHAIR measures).
    """
    rng = random.Random(f"scene-sft-{seed}-{split}")
    rows_messages, rows_images = [], []
    for index in range(1, n_scenes + 1):
        scene = scene_at(config, index, split)
        if rng.random() < describe_share:
            prompt = rng.choice(["Describe the image.", "Describe this image.", "What is in the image?"])
            messages = [
                {"role": "user", "content": [{"type": "image", "text": None}, *_text(prompt)]},
                {"role": "assistant", "content": _text(rng.choice(captions(scene)))},
            ]
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
