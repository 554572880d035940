"""Write a scene world to a folder in the public benchmark file formats.

Why: mmalign's benchmark code reads the official POPE, COCO (for CHAIR), AMBER and MMHal
files. Exporting the scene world in exactly those formats lets the same code that scores
LLaVA on the real data score the tiny scene model on a CPU, with no special cases.

``make_world`` writes (every image reference is a file name inside ``images/``)::

    world.json      manifest: config, seed, split, counts, co-occurrence rates, file list
    scenes.jsonl    one annotation record per scene: objects, counts, hazards, captions
    qa.jsonl        question/answer pairs of every kind (scene_world.questions)
    safety.jsonl    safety prompts with dual-labelled responses (scene_world.safety_prompts)
    images/<split>-<image_id:06d>.png
    pope/scene_pope_{random,popular,adversarial}.json   JSON Lines, as the official files
    coco/instances.json  coco/captions.json
    amber/query_all.json  amber/query_generative.json  amber/query_discriminative.json
    amber/query_discriminative-attribute.json  amber/query_discriminative-existence.json
    amber/annotations.json  amber/relation.json  amber/safe_words.txt
    mmhal/response_template.json
    objhal/questions.jsonl   Object HalBench-style description requests (COCO ground truth as CHAIR)
    vl_rewardbench.jsonl     preference pairs in VL-RewardBench's layout, labelled by the annotations
                             (scene.reward_pairs; image paths relative to the world folder)
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mmalign.io import OutputKind, atomic_dir, check_output
from mmalign.scene.render import render_png
from mmalign.scene.reward_pairs import vl_rewardbench_records
from mmalign.scene.safety import safety_prompts
from mmalign.scene.text import NUMBER_WORDS, QA, TEMPLATES, captions, questions
from mmalign.scene.world import (
    CATEGORY_SPECS,
    MAX_COUNT,
    SIZES,
    Scene,
    WorldConfig,
    generate_scenes,
)

#: What ``make_world`` replaces: a world folder (recognised by its manifest).
WORLD = OutputKind("scene world", ("world.json",))
POPE_VARIANTS = ("random", "popular", "adversarial")
POPE_PER_IMAGE = 3  # yes questions per image (and as many no questions), as in POPE
AMBER_HALLU_PER_IMAGE = 3  # likely-hallucinated absent objects listed per image
#: MMHal's official scorer derives the type from the record index (i % 8), in this order.
MMHAL_TYPES = (
    "attribute",
    "adversarial",
    "comparison",
    "counting",
    "relation",
    "environment",
    "holistic",
    "other",
)
_MMHAL_QA_KIND = {
    "attribute": "color",
    "adversarial": "absent_color",
    "comparison": "compare",
    "counting": "count",
    "relation": "where",
    "environment": "background",
    "holistic": "describe",
    "other": "danger",
}
MMHAL_ROUNDS = 12  # 12 rounds x 8 types = 96 records, the size of MMHal-Bench


@dataclass(frozen=True)
class ObjectStats:
    """Image-level object statistics of a set of scenes (what POPE's negatives rank by)."""

    frequency: dict[str, int]  # number of images containing the category
    cooccurrence: dict[str, dict[str, int]]  # images containing both (never a with itself)
    seen: list[str]  # categories in at least one image, sorted by name


def object_stats(scenes: Iterable[Scene]) -> ObjectStats:
    frequency: dict[str, int] = {}
    cooccurrence: dict[str, dict[str, int]] = {}
    for scene in scenes:
        present = scene.categories
        for a in present:
            frequency[a] = frequency.get(a, 0) + 1
            row = cooccurrence.setdefault(a, {})
            for b in present:
                if b != a:
                    row[b] = row.get(b, 0) + 1
    return ObjectStats(frequency, cooccurrence, sorted(frequency))


# --------------------------------------------------------------------------- POPE


def pope_questions(scenes: list[Scene], variant: str) -> list[dict[str, Any]]:
    """POPE records for ``variant``, by the POPE rules.

    Per image, up to three present objects get "yes" questions, each followed by a "no"
    question about an object seen in the set but absent here: ``random`` samples those
    uniformly, ``popular`` takes the most frequent, ``adversarial`` takes, for each yes
    object in turn, the absent object that co-occurs with it most often. Ties break by
    frequency, then name. The yes objects are the same in all three variants.
    """
    if variant not in POPE_VARIANTS:
        raise ValueError(f"unknown POPE variant {variant!r}; expected one of {POPE_VARIANTS}")
    stats = object_stats(scenes)
    rows: list[dict[str, Any]] = []
    for scene in scenes:
        candidates = [c for c in stats.seen if c not in scene.counts]
        k = min(POPE_PER_IMAGE, len(scene.counts), len(candidates))
        yes = random.Random(f"pope-yes/{scene.seed}/{scene.id}").sample(scene.categories, k)
        if variant == "random":
            no = random.Random(f"pope-random/{scene.seed}/{scene.id}").sample(candidates, k)
        elif variant == "popular":
            no = sorted(candidates, key=lambda c: (-stats.frequency[c], c))[:k]
        else:
            no = []
            for obj in yes:
                row = stats.cooccurrence.get(obj, {})
                remaining = [c for c in candidates if c not in no]
                no.append(min(remaining, key=lambda c: (-row.get(c, 0), -stats.frequency[c], c)))
        for present, missing in zip(yes, no, strict=True):
            for category, label in ((present, "yes"), (missing, "no")):
                text = TEMPLATES["exist_q"].format(article="a", category=category)
                rows.append(
                    {
                        "question_id": len(rows) + 1,
                        "image": scene.file_name,
                        "text": text,
                        "label": label,
                    }
                )
    return rows


# --------------------------------------------------------------------------- COCO / CHAIR


def _coco_images(scenes: list[Scene]) -> list[dict[str, Any]]:
    return [
        {"id": s.image_id, "file_name": s.file_name, "width": s.image_size, "height": s.image_size}
        for s in scenes
    ]


def coco_instances(scenes: list[Scene], config: WorldConfig) -> dict[str, Any]:
    """COCO ``instances`` JSON: boxes as [x, y, w, h]; a box polygon as segmentation so tools
    that need masks (pycocotools) work too."""
    category_id = {name: i for i, name in enumerate(config.categories, start=1)}
    annotations = []
    for scene in scenes:
        for obj in scene.objects:
            x, y, w, h = obj.bbox
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": scene.image_id,
                    "category_id": category_id[obj.category],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    categories = [
        {"id": i, "name": name, "supercategory": CATEGORY_SPECS[name].supercategory}
        for name, i in category_id.items()
    ]
    return {
        "info": _COCO_INFO,
        "licenses": [],
        "images": _coco_images(scenes),
        "annotations": annotations,
        "categories": categories,
    }


def coco_captions(scenes: list[Scene]) -> dict[str, Any]:
    """COCO ``captions`` JSON with every reference caption of every scene."""
    annotations = [
        {"image_id": scene.image_id, "caption": caption}
        for scene in scenes
        for caption in captions(scene)
    ]
    for i, annotation in enumerate(annotations, start=1):
        annotation["id"] = i
    return {
        "info": _COCO_INFO,
        "licenses": [],
        "images": _coco_images(scenes),
        "annotations": annotations,
    }


_COCO_INFO = {"description": "mmalign scene world (synthetic)", "version": "1"}


# --------------------------------------------------------------------------- AMBER


def likely_hallucinations(
    scene: Scene, stats: ObjectStats, k: int = AMBER_HALLU_PER_IMAGE
) -> list[str]:
    """Absent objects that co-occur most with what is present (AMBER's ``hallu`` list)."""
    candidates = [c for c in stats.seen if c not in scene.counts]

    def rank(c: str) -> tuple[int, int, str]:
        together = sum(stats.cooccurrence.get(p, {}).get(c, 0) for p in scene.counts)
        return (-together, -stats.frequency[c], c)

    return sorted(candidates, key=rank)[:k]


def _amber_attribute_questions(scene: Scene, config: WorldConfig) -> list[tuple[str, str, str]]:
    """(query, type, truth) triples: per attribute one true and one false statement, in a
    seeded order, like AMBER's paired attribute questions. Colors and sizes are asked only
    when all instances of the category agree, so every truth is unambiguous."""
    rng = random.Random(f"amber-attribute/{scene.seed}/{scene.id}")
    out: list[tuple[str, str, str]] = []

    def paired(kind: str, true_query: str, false_query: str) -> None:
        pair = [(true_query, kind, "yes"), (false_query, kind, "no")]
        rng.shuffle(pair)
        out.extend(pair)

    def attribute(category: str, value: str) -> str:
        return TEMPLATES["amber_attribute_q"].format(category=category, value=value)

    def number(category: str, n: int) -> str:
        if n == 1:
            return TEMPLATES["amber_number_one_q"].format(category=category)
        plural = CATEGORY_SPECS[category].plural
        return TEMPLATES["amber_number_many_q"].format(number=NUMBER_WORDS[n], plural=plural)

    for c in scene.categories:
        objects = scene.instances(c)
        for values, choices in (
            ({o.color for o in objects}, config.colors),
            ({o.size for o in objects}, SIZES),
        ):
            if len(values) == 1 and len(choices) > 1:
                true = values.pop()
                false = rng.choice([v for v in choices if v != true])
                paired("discriminative-attribute-state", attribute(c, true), attribute(c, false))
        n = scene.counts[c]
        wrong = rng.choice([m for m in range(1, MAX_COUNT + 2) if m != n])
        paired("discriminative-attribute-number", number(c, n), number(c, wrong))
    return out


def amber_files(scenes: list[Scene], config: WorldConfig) -> tuple[list[dict], list[dict]]:
    """(queries, annotations) in AMBER's layout: ids 1..n are the generative queries (one per
    image), then attribute questions, then existence questions (all answered "no");
    ``annotations[id - 1]`` belongs to query ``id``. No relation questions: scenes have no
    object relations beyond positions."""
    stats = object_stats(scenes)
    hallu = {scene.id: likely_hallucinations(scene, stats) for scene in scenes}
    queries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []

    def add(scene: Scene, query: str, annotation: dict[str, Any]) -> None:
        queries.append({"id": len(queries) + 1, "image": scene.file_name, "query": query})
        annotations.append({"id": len(annotations) + 1, **annotation})

    for scene in scenes:
        add(
            scene,
            TEMPLATES["amber_describe_q"],
            {"type": "generative", "truth": scene.categories, "hallu": hallu[scene.id]},
        )
    for scene in scenes:
        for query, kind, truth in _amber_attribute_questions(scene, config):
            add(scene, query, {"type": kind, "truth": truth})
    for scene in scenes:
        for c in hallu[scene.id]:
            query = TEMPLATES["amber_exist_q"].format(article="a", category=c)
            add(scene, query, {"type": "discriminative-hallucination", "truth": "no"})
    return queries, annotations


def _amber_query_files(queries: list[dict], annotations: list[dict]) -> dict[str, list[dict]]:
    """The per-task query files AMBER ships besides ``query_all.json``."""
    type_of = {a["id"]: a["type"] for a in annotations}
    selections = {
        "query_all.json": lambda t: True,
        "query_generative.json": lambda t: t == "generative",
        "query_discriminative.json": lambda t: t != "generative",
        "query_discriminative-attribute.json": lambda t: t.startswith("discriminative-attribute"),
        "query_discriminative-existence.json": lambda t: t == "discriminative-hallucination",
    }
    return {
        name: [q for q in queries if keep(type_of[q["id"]])] for name, keep in selections.items()
    }


# --------------------------------------------------------------------------- MMHal


def mmhal_records(
    scenes: list[Scene], config: WorldConfig, rounds: int = MMHAL_ROUNDS
) -> list[dict[str, Any]]:
    """MMHal-Bench records: ``rounds`` x 8 question types in the official interleaved order.

    Each record takes the next scene (cycling) that has a question of the needed kind;
    ``gt_answer`` is that question's full-sentence answer and ``model_answer`` is left
    empty for the runner to fill. A type no scene can ask (a comparison needs two single
    objects of different sizes) is left out of every round, so a world of a handful of
    scenes still has its MMHal file; ``world.json`` lists the types left out.
    """
    cache: dict[int, list[QA]] = {}
    records: list[dict[str, Any]] = []
    cursor = 0
    for _ in range(rounds):
        for question_type in MMHAL_TYPES:
            kind = _MMHAL_QA_KIND[question_type]
            for step in range(len(scenes)):
                index = (cursor + step) % len(scenes)
                if index not in cache:
                    cache[index] = questions(scenes[index], config)
                match = [qa for qa in cache[index] if qa.kind == kind]
                if match:
                    break
            else:
                continue
            scene, qa = scenes[index], match[0]
            cursor = index + 1
            named = qa.objects or qa.absent
            records.append(
                {
                    "question_type": question_type,
                    "question_topic": CATEGORY_SPECS[named[0]].supercategory if named else "scene",
                    "image_id": scene.id,
                    "image_src": scene.file_name,
                    "image_content": scene.categories,
                    "question": qa.question,
                    "gt_answer": qa.full_answer,
                    "model_answer": "",
                }
            )
    return records


# --------------------------------------------------------------------------- the folder


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _cooccurrence_report(scenes: list[Scene], config: WorldConfig) -> list[dict[str, Any]]:
    """Measured P(partner | trigger) per configured pair, to check the bias a world carries."""
    report = []
    for trigger, partner in config.cooccurrence:
        with_trigger = [s for s in scenes if trigger in s.counts]
        together = sum(partner in s.counts for s in with_trigger)
        report.append(
            {
                "trigger": trigger,
                "partner": partner,
                "trigger_images": len(with_trigger),
                "with_partner": together,
            }
        )
    return report


#: Object HalBench asks for descriptions with eight instruction wordings; the world's
#: vocabulary has these three, rotated over the images.
OBJHAL_PROMPTS = ("Describe the image.", "Describe this image.", "What is in the image?")


def objhal_questions(scenes: list[Scene]) -> list[dict[str, Any]]:
    """One description request per image, in the Object HalBench question-file format."""
    return [{"question_id": i, "image_id": s.image_id, "image": s.file_name,
             "question": OBJHAL_PROMPTS[i % len(OBJHAL_PROMPTS)]} for i, s in enumerate(scenes)]


def write_world(out: Path, scenes: list[Scene], config: WorldConfig) -> None:
    """Write every file of the layout above into the (empty) folder ``out``."""
    (out / "images").mkdir(parents=True)
    for scene in scenes:
        (out / "images" / scene.file_name).write_bytes(render_png(scene))
    _write_jsonl(out / "scenes.jsonl", ({**s.to_dict(), "captions": captions(s)} for s in scenes))
    qa_rows = [
        {"id": f"{s.id}-qa-{i:02d}", "image": s.file_name, **asdict(qa)}
        for s in scenes
        for i, qa in enumerate(questions(s, config))
    ]
    _write_jsonl(out / "qa.jsonl", qa_rows)
    safety_rows = [
        {"id": f"{s.id}-safety-{i}", "image": s.file_name, **asdict(prompt)}
        for s in scenes
        for i, prompt in enumerate(safety_prompts(s))
    ]
    _write_jsonl(out / "safety.jsonl", safety_rows)

    pope = {variant: pope_questions(scenes, variant) for variant in POPE_VARIANTS}
    for variant, rows in pope.items():
        _write_jsonl(out / "pope" / f"scene_pope_{variant}.json", rows)

    _write_json(out / "coco" / "instances.json", coco_instances(scenes, config))
    _write_json(out / "coco" / "captions.json", coco_captions(scenes))

    queries, annotations = amber_files(scenes, config)
    for name, subset in _amber_query_files(queries, annotations).items():
        _write_json(out / "amber" / name, subset)
    _write_json(out / "amber" / "annotations.json", annotations)
    # Object words with their associated words; the world has no synonyms, and no nouns
    # that need ignoring, so the association lists and the safe-word list stay empty.
    _write_json(out / "amber" / "relation.json", {c: [] for c in config.categories})
    (out / "amber" / "safe_words.txt").write_text("", encoding="utf-8")

    mmhal = mmhal_records(scenes, config)
    _write_json(out / "mmhal" / "response_template.json", mmhal)
    _write_jsonl(out / "objhal" / "questions.jsonl", objhal_questions(scenes))
    reward_pairs = vl_rewardbench_records(scenes, config)
    _write_jsonl(out / "vl_rewardbench.jsonl", reward_pairs)

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    _write_json(
        out / "world.json",
        {
            "name": "mmalign-scene-world",
            "format_version": 1,
            "seed": config.seed,
            "split": scenes[0].split,
            "config": config.to_dict(),
            "counts": {
                "scenes": len(scenes),
                "objects": sum(len(s.objects) for s in scenes),
                "hazardous_scenes": sum(s.is_hazardous for s in scenes),
                "images_per_category": dict(sorted(object_stats(scenes).frequency.items())),
                "captions": len(scenes) * len(captions(scenes[0])),
                "qa": len(qa_rows),
                "safety_prompts": len(safety_rows),
                "pope": {variant: len(rows) for variant, rows in pope.items()},
                "amber_queries": len(queries),
                "mmhal_records": len(mmhal),
                "mmhal_types_missing": sorted(set(MMHAL_TYPES) - {r["question_type"] for r in mmhal}),
                "vl_rewardbench_pairs": len(reward_pairs),
            },
            "cooccurrence": _cooccurrence_report(scenes, config),
            "files": files,
        },
    )


def make_world(
    out_dir: str | Path,
    seed: int | None = None,
    size: int = 500,
    config: WorldConfig | None = None,
    split: str = "eval",
    *,
    overwrite: bool = False,
) -> Path:
    """Generate ``size`` scenes of ``split`` and write them atomically to ``out_dir``.

    ``seed`` overrides ``config.seed`` when given (the default config has seed 0). The
    folder is built next to ``out_dir`` and renamed into place only when complete, so a
    crash leaves any previous world untouched and never a half-written one. An existing
    ``out_dir`` is replaced if it is a world (or empty); any other folder only with
    ``overwrite``; a file never.
    """
    if size < 1:
        raise ValueError(f"make_world: size must be at least 1, got {size}")
    check_output(out_dir, replaces=WORLD, overwrite=overwrite)
    config = config or WorldConfig()
    if seed is not None:
        config = replace(config, seed=seed)
    scenes = generate_scenes(config, size, split=split)
    with atomic_dir(out_dir, replaces=WORLD, overwrite=overwrite) as tmp:
        write_world(tmp, scenes, config)
    return Path(out_dir)


def read_world(world_dir: str | Path) -> tuple[WorldConfig, list[Scene]]:
    """The config and scenes of a folder written by ``make_world``."""
    world_dir = Path(world_dir)
    manifest = json.loads((world_dir / "world.json").read_text(encoding="utf-8"))
    lines = (world_dir / "scenes.jsonl").read_text(encoding="utf-8").splitlines()
    scenes = [Scene.from_dict(json.loads(line)) for line in lines]
    return WorldConfig.from_dict(manifest["config"]), scenes
