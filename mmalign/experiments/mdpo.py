"""mDPO against DPO in the scene world, same pairs, steps and seeds.

mDPO (Wang et al., EMNLP 2024) reports that plain DPO on a VLM can learn preferences that hold
with the image removed, and that a conditional term (the chosen answer with its true image
against the same answer with a corrupted image) plus a reward anchor fixes it. Arms, each a
fresh 4-bit QLoRA adapter on the shipped scene VLM with the demo's recipe on the demo's pairs
(:mod:`mmalign.experiments.dpo`'s data), differing only in ``loss_type``:

- ``dpo``: ``sigmoid``;
- ``mdpo``: ``mdpo`` (crop corruption at strength 0.8, conditional and anchor weights 1).

Each is measured on held-out scenes (POPE per split, CHAIR) and with ``mmalign bench
image-reliance`` on held-out correction pairs: how much more likely the chosen answer is with
the true image than with a corrupted one (per token), and the DPO implicit reward margin
(reference: the model with its adapter off) with the true and with the corrupted image.
Run with ``mmalign experiments mdpo --out DIR``; results are kept under ``OUT`` and reused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmalign.experiments import dpo
from mmalign.experiments.seeds import load_runs, measure_missing, summarise

ARMS = {"dpo": "sigmoid", "mdpo": "mdpo"}
METRICS = (("F1 adversarial", "POPE F1 adv."), ("F1 (mean of splits)", "POPE F1"), ("CHAIR_i", "CHAIR_i"),
           ("Recall", "recall"), ("Length (words)", "words"), ("reliance_per_token", "reliance/token (corrupted)"),
           ("reward_margin_true", "reward margin (true)"), ("reward_margin_corrupted", "reward margin (corrupted)"),
           ("reward_margin_gap", "reward margin gap (true − corrupted)"))


@dataclass
class Setting:
    """The budget on top of the demo's recipe: feedback scenes for training, held-out scenes."""

    feedback_scenes: int = 100
    eval_scenes: int = 50
    reliance_scenes: int = 50
    epochs: float = 2.0

    def demo_config(self):
        from mmalign.demo import DemoConfig

        return DemoConfig(eval_scenes=self.eval_scenes, feedback_scenes=self.feedback_scenes, epochs=self.epochs)


def quick_setting() -> Setting:
    """A few scenes and one epoch (a smoke run, not evidence)."""
    return Setting(feedback_scenes=6, eval_scenes=4, reliance_scenes=4, epochs=1)


def heldout_pairs(setting: Setting, out: Path) -> Path:
    """Correction pairs of the base model on feedback scenes no arm trains on (the image-reliance data)."""
    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.demo import demo_base
    from mmalign.scene.feedback import scene_feedback_records
    from mmalign.scene.ranges import FEEDBACK
    from mmalign.scene.world import WorldConfig

    path = out / "heldout-pairs"
    if not (path / "mmalign_dataset.json").exists():
        config = setting.demo_config()
        start = FEEDBACK.start + len(FEEDBACK) // 2  # the training pairs take the range's first scenes
        records, _ = scene_feedback_records(demo_base(config), WorldConfig(seed=config.seed), setting.reliance_scenes,
                                            split=FEEDBACK.split, start=start, seed=config.seed + 1,
                                            replace_absent=config.replace_absent)
        save_preference_dataset(records, path)
    return path


def run_arm(setting: Setting, arm: str, seed: int, world: Path, pairs: Path, heldout: Path, out: Path) -> dict[str, Any]:
    """Train one (arm, seed) with the demo's recipe, then POPE / CHAIR and image reliance."""
    from mmalign.benchmarks import ImageRelianceConfig, run_image_reliance
    from mmalign.benchmarks.runner import GenerationConfig
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.demo import demo_policy, demo_training_args, evaluate_scene_model
    from mmalign.dpo import DPOTrainer

    config = setting.demo_config()
    run_dir = out / "runs" / f"{arm}-seed{seed}"
    args = demo_training_args(config, run_dir / "train", pairs, loss_type=ARMS[arm], seed=seed)
    policy = demo_policy(config, seed=seed)
    trainer = DPOTrainer(policy, args, train_dataset=load_preference_dataset(pairs))
    trainer.train()
    result: dict[str, Any] = dict(evaluate_scene_model(policy, world, run_dir / "eval", f"{arm}-seed{seed}",
                                                       progress=False))
    reliance = run_image_reliance(ImageRelianceConfig(data=str(heldout), conditions=("corrupted", "blank")),
                                  adapter=policy, out=run_dir / "image-reliance", progress=False,
                                  generation=GenerationConfig(batch_size=16))
    conditions = reliance.metrics["conditions"]
    result.update(reliance_per_token=conditions["corrupted"]["reliance_per_token"],
                  reliance_per_token_blank=conditions["blank"]["reliance_per_token"],
                  reward_margin_true=conditions["true"]["mean_reward_margin"],
                  reward_margin_corrupted=conditions["corrupted"]["mean_reward_margin"],
                  reward_accuracy_true=conditions["true"]["reward_accuracy"],
                  reward_accuracy_corrupted=conditions["corrupted"]["reward_accuracy"])
    result["reward_margin_gap"] = result["reward_margin_true"] - result["reward_margin_corrupted"]
    return result


def markdown(summary: dict[str, dict[str, float]], setting: Setting, seeds: list[int]) -> str:
    def cell(row: dict[str, float], key: str) -> str:
        return f"{row[key]:.2f} ± {row.get(key + '_std', 0.0):.2f}" if key in row else "-"

    lines = [f"Pairs from {setting.feedback_scenes} feedback scenes ({setting.epochs:g} epochs, the demo's recipe); "
             f"{setting.eval_scenes} held-out scenes for POPE and CHAIR; image reliance on the base model's "
             f"correction pairs of {setting.reliance_scenes} other scenes (crop 0.8); seeds "
             f"{', '.join(map(str, seeds))} (mean ± std).", "",
             "| arm | " + " | ".join(label for _, label in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for arm in ARMS:
        if arm in summary:
            lines.append(f"| {arm} | " + " | ".join(cell(summary[arm], key) for key, _ in METRICS) + " |")
    return "\n".join(lines) + "\n"


def run_mdpo_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2), arms: Sequence[str] = tuple(ARMS),
                        setting: Setting | None = None) -> dict[str, Any]:
    """Measure every (seed, arm) not measured yet; returns ``results.json``'s content."""
    setting = setting or Setting()
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown mDPO experiment arm(s) {unknown}; choose from {sorted(ARMS)}")
    out = Path(out)
    config = setting.demo_config()
    world, pairs = dpo.build_data(config, out)
    heldout = heldout_pairs(setting, out)
    measure_missing(out, "mdpo", seeds, arms, "training, then POPE, CHAIR and image reliance",
                    lambda seed, arm: run_arm(setting, arm, seed, world, pairs, heldout, out))
    runs = load_runs(out)
    results = {"setting": asdict(setting), "runs": runs, "summary": summarise(runs)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results["summary"], setting, [r["seed"] for r in runs]))
    return results

