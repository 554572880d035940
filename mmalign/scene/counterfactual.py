"""Counterfactual scenes (one object removed or recoloured) and the image-contrast pairs they make.

Why: mDPO and ImageDPO prefer an answer shown with its true image over the same answer shown
with another image, so the preference can only be learnt by looking. Generic corruptions
(:mod:`mmalign.data_builders.corruptions`) change an image without saying what changed; a
counterfactual scene changes exactly one object and keeps exact annotations, so the true
scene's description is known to be wrong for the counterfactual image, and where.

A counterfactual keeps the true scene's id, seed and background, so ``render`` draws the same
background texture and only the edited object's pixels change. Only objects whose edit shows
are edited: never a partner hidden behind its trigger (its pixels may not show) and, for a
removal, never the trigger in front of one (the hidden partner would appear while still
annotated as hidden).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmalign.scene.ranges import FEEDBACK, PRETRAIN, SceneRange
from mmalign.scene.render import render_png
from mmalign.scene.text import QA, WHERE_PHRASES, detailed_description, questions
from mmalign.scene.world import COLORS, Scene, SceneObject, WorldConfig, scene_at

if TYPE_CHECKING:
    from mmalign.data_builders.storage import WriteReport

KINDS = ("remove", "recolour")
SOURCE = "scene-counterfactual"
#: The builder's summary, written into the dataset folder beside the manifest.
SUMMARY_FILE = "counterfactual_summary.json"
#: Scenes drawn when no ``start`` is given: the preference-pair range of the eval split (the
#: demo's correction pairs, so both kinds of pair can share images) and, for the train split,
#: the scene VLM's training scenes. Neither touches the benchmark scenes.
DEFAULT_RANGES: dict[str, SceneRange] = {"eval": FEEDBACK, "train": PRETRAIN}
#: Question kinds whose answer about one category an edit of that category can change.
_CONTRAST_QA_KINDS = ("exist", "count", "color")


@dataclass(frozen=True)
class Counterfactual:
    """The true scene with one object edited; ``scene`` is the counterfactual's full ground truth."""

    scene: Scene
    kind: str  # "remove" or "recolour"
    target: SceneObject  # the edited object as the true scene has it
    new_color: str | None = None  # its colour in the counterfactual (recolour only)

    @property
    def description(self) -> str:
        """The edit in the world's words, e.g. "recoloured the small ball in the middle from red to green"."""
        o = self.target
        where = WHERE_PHRASES[o.cell]
        if self.kind == "remove":
            return f"removed the {o.size} {o.color} {o.category} {where}"
        return f"recoloured the {o.size} {o.category} {where} from {o.color} to {self.new_color}"


def _free_colors(scene: Scene, target: SceneObject, colors: Sequence[str]) -> list[str]:
    """Colours of ``colors`` that no instance of ``target``'s category has (its own excluded)."""
    taken = {o.color for o in scene.instances(target.category)}
    return [c for c in colors if c not in taken]


def _edits(scene: Scene, kind: str, colors: Sequence[str]) -> list[tuple[int, str | None]]:
    """Every edit of ``kind`` that shows, as (object index, new colour or None), in reading order."""
    hiding = {o.cell for o in scene.objects if o.behind}
    if kind == "remove":
        if len(scene.objects) < 2:  # the world has no words for an empty scene
            return []
        return [(i, None) for i, o in enumerate(scene.objects) if not o.behind and o.cell not in hiding]
    return [(i, c) for i, o in enumerate(scene.objects) if not o.behind for c in _free_colors(scene, o, colors)]


def _edit(scene: Scene, kind: str, seed: int, colors: Sequence[str]) -> Counterfactual | str:
    """The counterfactual of ``kind`` chosen by ``seed``, or why ``scene`` has none."""
    if kind not in KINDS:
        raise ValueError(f"unknown counterfactual kind {kind!r}; choose from {', '.join(KINDS)}")
    edits = _edits(scene, kind, colors)
    if not edits:
        if kind == "recolour":
            return "no free colour in the palette"
        return "one object only" if len(scene.objects) < 2 else "every object hides or is hidden"
    index, color = random.Random(f"mmalign-counterfactual/{seed}/{kind}/{scene.seed}/{scene.id}").choice(edits)
    target = scene.objects[index]
    if kind == "remove":
        objects = scene.objects[:index] + scene.objects[index + 1:]
        present = {o.category for o in objects}
        edited = replace(scene, objects=objects, hazards=tuple(h for h in scene.hazards if h in present))
        return Counterfactual(edited, kind, target)
    objects = tuple(replace(o, color=color) if i == index else o for i, o in enumerate(scene.objects))
    return Counterfactual(replace(scene, objects=objects), kind, target, color)


def counterfactual_scene(scene: Scene, kind: str, seed: int = 0, *,
                   colors: Sequence[str] = tuple(COLORS)) -> Counterfactual | None:
    """``scene`` with one object removed or recoloured (``kind``), chosen by ``seed``; None when
    no edit of that kind would show (a scene of one object cannot lose it).

    ``remove`` drops one instance: its category disappears when it was the only one, its count
    drops by one otherwise, and a hazard goes with its last instance. ``recolour`` gives one
    object a colour of ``colors`` (the world's palette) that no instance of its category has,
    so the true scene's colour claim about it is false. A pure function: the same arguments
    give the same counterfactual, and ``scene`` is left as it is.
    """
    edit = _edit(scene, kind, seed, colors)
    return edit if isinstance(edit, Counterfactual) else None


def contrast_question(scene: Scene, edit: Counterfactual, config: WorldConfig) -> QA | None:
    """The world's question about the edited category whose answer the edit changes (existence,
    then count, then colour), or None: e.g. "How many cups are there in the image?" when
    one of two cups was removed."""
    category = edit.target.category
    after = {qa.question: qa.full_answer for qa in questions(edit.scene, config)}
    for qa in questions(scene, config):
        if qa.kind in _CONTRAST_QA_KINDS and qa.objects == (category,) and after.get(qa.question) != qa.full_answer:
            return qa
    return None


def _object_record(obj: SceneObject) -> dict[str, Any]:
    """An object as ``scenes.jsonl`` records it (``Scene.to_dict``)."""
    return {**asdict(obj), "bbox": list(obj.bbox), "position": obj.position}


def contrast_records(scene: Scene, config: WorldConfig, *, kinds: Sequence[str] = KINDS, seed: int = 0,
                     with_questions: bool = False) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The image-contrast pairs of one scene, and why each kind without an edit was skipped.

    Per kind: ``images`` the true image, ``rejected_images`` the counterfactual one, ``prompt``
    one of the world's detailed-description prompts, ``chosen`` = ``rejected`` the true scene's
    detailed description; with ``with_questions`` also a pair on :func:`contrast_question`
    (its full answer), when the edit changes one.
    """
    from mmalign.scene.sft import DETAIL_PROMPTS  # imports datasets: not at import time

    true_image = render_png(scene)
    description = detailed_description(scene, config)
    records: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for kind in kinds:
        edit = _edit(scene, kind, seed, config.colors)
        if isinstance(edit, str):
            skipped[kind] = edit
            continue
        common = {"images": [true_image], "rejected_images": [render_png(edit.scene)], "source": SOURCE}
        meta = {"scene": scene.id, "edit": kind, "edit_description": edit.description,
                "object": _object_record(edit.target), "new_color": edit.new_color,
                "counterfactual_objects": [_object_record(o) for o in edit.scene.objects]}
        prompt_rng = random.Random(f"mmalign-counterfactual-prompt/{seed}/{kind}/{scene.seed}/{scene.id}")
        asked = [(prompt_rng.choice(DETAIL_PROMPTS), description, "describe")]
        qa = contrast_question(scene, edit, config) if with_questions else None
        if qa is not None:
            asked.append((qa.question, qa.full_answer, qa.kind))
        records += [{**common, "prompt": prompt, "chosen": answer, "rejected": answer,
                     "meta": {**meta, "prompt_kind": prompt_kind}}
                    for prompt, answer, prompt_kind in asked]
    return records, skipped


@dataclass
class CounterfactualSummary:
    """What a build wrote: pairs per edit kind, and scenes skipped per kind and reason."""

    split: str
    start: int
    scenes: int = 0
    pairs: int = 0
    pairs_by_kind: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> reason -> scenes


def save_counterfactual_dataset(out: str | Path, config: WorldConfig, n_scenes: int, *, split: str = "train",
                                start: int | None = None, kinds: Sequence[str] = KINDS, seed: int = 0,
                                with_questions: bool = False, overwrite: bool = False,
                                progress: bool = False) -> tuple[WriteReport, CounterfactualSummary]:
    """Image-contrast pairs (:func:`contrast_records`) of scenes ``start .. start + n_scenes - 1``
    of ``split``, saved atomically as a canonical dataset at ``out`` with the summary in
    ``SUMMARY_FILE``. Returns the ``WriteReport`` and the summary.

    ``start`` defaults to the first scene of ``DEFAULT_RANGES[split]`` (which must hold
    ``n_scenes``). Scenes are drawn and rendered one at a time while the dataset is written,
    so memory stays bounded.
    """
    from tqdm.auto import tqdm

    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.io import atomic_write_text

    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"unknown counterfactual kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if start is None:
        if split not in DEFAULT_RANGES:
            raise ValueError(f"split {split!r} has no default scene range ({', '.join(DEFAULT_RANGES)} do); give start")
        start = DEFAULT_RANGES[split].take(n_scenes)["start"]
    summary = CounterfactualSummary(split=split, start=start)
    by_kind: Counter[str] = Counter()
    skipped: dict[str, Counter[str]] = {kind: Counter() for kind in kinds}

    def records() -> Iterator[dict[str, Any]]:
        for image_id in tqdm(range(start, start + n_scenes), desc="counterfactual scenes", unit="scene",
                             disable=not progress):
            rows, reasons = contrast_records(scene_at(config, image_id, split), config, kinds=kinds, seed=seed,
                                             with_questions=with_questions)
            summary.scenes += 1
            by_kind.update(row["meta"]["edit"] for row in rows)
            for kind, reason in reasons.items():
                skipped[kind][reason] += 1
            yield from rows

    report = save_preference_dataset(records(), out, overwrite=overwrite)
    summary.pairs = report.rows
    summary.pairs_by_kind = dict(by_kind)
    summary.skipped = {kind: dict(reasons) for kind, reasons in skipped.items()}
    atomic_write_text(Path(out) / SUMMARY_FILE, json.dumps(asdict(summary), indent=2) + "\n")
    return report, summary
