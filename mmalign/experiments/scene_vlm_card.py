"""Every number of a scene VLM's model card, measured on one written world.

The card's ``[measured]`` block (``models/cards/scene-vlm.toml``) is what a candidate model
is held to: POPE on its three splits, CHAIR on the detailed-description prompt with the share
of hallucinated objects that are co-occurrence partners of a present object, Object
HalBench, AMBER, MMHal-Bench judged by the scene's ground truth, and whether the model
answers from facts listed in its prompt. ``measure_scene_vlm`` runs them all with the same
benchmark code ``mmalign bench`` runs, so each number is also reproducible one benchmark at
a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: card key → (benchmark, headline name); the rest are computed from the reports
HEADLINE_KEYS: dict[str, tuple[str, str]] = {
    "pope_f1_random": ("pope", "F1 random"),
    "pope_f1_popular": ("pope", "F1 popular"),
    "pope_f1_adversarial": ("pope", "F1 adversarial"),
    "pope_accuracy_mean": ("pope", "Accuracy (mean)"),
    "pope_yes_ratio_mean": ("pope", "Yes-ratio (mean)"),
    "chair_s": ("chair", "CHAIR_s"),
    "chair_i": ("chair", "CHAIR_i"),
    "chair_recall": ("chair", "Recall"),
    "caption_length_words": ("chair", "Length (words)"),
    "objhal_response_hall": ("objhal", "Response Hall"),
    "objhal_object_hall": ("objhal", "Object Hall"),
    "amber_chair": ("amber", "CHAIR"),
    "amber_cover": ("amber", "Cover"),
    "amber_hal": ("amber", "Hal"),
    "amber_cog": ("amber", "Cog"),
    "amber_discriminative_accuracy": ("amber", "Accuracy"),
    "amber_discriminative_f1": ("amber", "F1"),
    "amber_score": ("amber", "AMBER"),
    "mmhal_score": ("mmhal", "Score (0-6)"),
    "mmhal_hallucination_rate": ("mmhal", "Hallucination rate"),
}


def partner_share(chair_details: list[dict[str, Any]], partner_triggers: dict[str, tuple[str, ...]]) -> float:
    """Percent of hallucinated objects (counted once per caption) that are the co-occurrence
    partner of an object in the image: hallucination by habit, as real VLMs hallucinate."""
    hallucinated = partners = 0
    for row in chair_details:
        present = set(row["ground_truth"])
        for obj in set(row["hallucinated"]):
            hallucinated += 1
            partners += any(trigger in present for trigger in partner_triggers.get(obj, ()))
    return 100 * partners / hallucinated if hallucinated else 0.0


def world_of(world_dir: str | Path):
    """The ``WorldConfig`` a world folder was written with (``mmalign world make``)."""
    from mmalign.scene.world import WorldConfig

    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{world_dir} is not a world folder (no world.json): write one with "
                                "'mmalign world make --out WORLD --size 500'")
    return WorldConfig.from_dict(json.loads(path.read_text())["config"])


def measure_scene_vlm(adapter, world_dir: str | Path, out: str | Path, *, model_name: str = "scene-vlm",
                      fact_reading_scenes: int = 200, progress: bool = True) -> dict[str, float]:
    """The card's numbers for ``adapter`` on the world folder ``world_dir`` (``mmalign world
    make``); each benchmark's reports go to ``out/<benchmark>`` (answers are cached there, so
    a run that was stopped goes on), the numbers to ``out/measured.json``."""
    from mmalign.benchmarks import (
        AmberConfig,
        ChairConfig,
        MMHalConfig,
        ObjHalConfig,
        PopeConfig,
        SceneJudge,
        run_amber,
        run_chair,
        run_mmhal,
        run_objhal,
        run_pope,
    )
    from mmalign.benchmarks.runner import GenerationConfig
    from mmalign.experiments.pretrain_scene_vlm import fact_reading_accuracy
    from mmalign.io import atomic_write_text

    world_dir, out = Path(world_dir), Path(out)
    world = world_of(world_dir)
    images = world_dir / "images"
    coco = {"instances": world_dir / "coco" / "instances.json", "captions": world_dir / "coco" / "captions.json"}
    short, long = GenerationConfig(max_new_tokens=4, batch_size=64), GenerationConfig(max_new_tokens=128, batch_size=64)
    common = {"adapter": adapter, "model_name": model_name, "progress": progress}
    results = {
        "pope": run_pope(PopeConfig(world_dir / "pope", image_dir=images, data_version="custom"),
                         out=out / "pope", generation=short, **common),
        "chair": run_chair(ChairConfig(**coco, image_dir=images, prompt="Describe the image."),
                           out=out / "chair", generation=long, **common),
        "objhal": run_objhal(ObjHalConfig(world_dir / "objhal" / "questions.jsonl", **coco, image_dir=images),
                             out=out / "objhal", generation=long, **common),
        "amber": run_amber(AmberConfig(world_dir / "amber", image_dir=images), out=out / "amber", generation=long,
                           **common),
        "mmhal": run_mmhal(MMHalConfig(world_dir / "mmhal" / "response_template.json", image_dir=images,
                                       judge=SceneJudge.from_world(world_dir)),
                           out=out / "mmhal", generation=long, **common),
    }
    measured = {key: float(results[bench].headline[name]) for key, (bench, name) in HEADLINE_KEYS.items()}
    measured["pope_yes_ratio_random"] = float(results["pope"].metrics["splits"]["random"]["yes_ratio"])
    measured["chair_hallucinations_cooccurrence_partners"] = partner_share(
        results["chair"].details, world.partner_triggers)
    reading = fact_reading_accuracy(adapter, world, fact_reading_scenes)
    measured.update({f"fact_reading_{key}": value for key, value in reading.items()})
    atomic_write_text(out / "measured.json", json.dumps(measured, indent=1))
    return measured


def measured_block(measured: dict[str, float]) -> str:
    """The numbers as the card's ``[measured]`` TOML table (one decimal, two for MMHal)."""
    lines = ["[measured]"]
    for key, value in measured.items():
        lines.append(f"{key} = {round(value, 2 if key.startswith('mmhal') else 1)}")
    return "\n".join(lines) + "\n"
