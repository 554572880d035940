"""GRPO in the scene world: on-policy group RL with the world's annotations as the verifier.

Offline Dense DPO on the scene VLM cuts hallucination mostly by shortening answers. The
question here is whether on-policy GRPO with verifiable rewards lowers hallucination while
answers keep their length and recall. Arms, each trained from the shipped scene VLM with a
fresh 4-bit QLoRA adapter and evaluated on the same held-out scenes (POPE, CHAIR):

- ``grpo-f1``: the object-F1 reward on description prompts (the demo's GRPO);
- ``grpo-f1-yesno``: object F1 on descriptions plus the exact-answer reward on existence
  questions, one prompt set holding both;
- ``grpo-precision``: object precision weighted twice recall, plus the length reward (full
  credit from 40 words): a hallucinated object costs more than a missed one, and answers
  that shrink below 40 words lose reward;
- ``ddpo``: Dense DPO on the demo's correction pairs with the demo's recipe (the offline
  baseline), with its training time next to GRPO's.

Run with ``mmalign experiments grpo --out DIR`` or :func:`run_grpo_experiment`. Prompts,
the correction pairs and every (seed, arm) result are written under ``OUT`` and reused, so
a stopped run resumes; ``results.md`` / ``results.json`` summarise mean ± std over seeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmalign.demo import (
    DemoConfig,
    build_grpo_prompts,
    demo_grpo_args,
    demo_policy,
    evaluate_scene_model,
)
from mmalign.experiments import dpo
from mmalign.experiments.seeds import load_runs, measure_missing, summarise

#: arm -> (prompt kinds, reward function -> weight); ``ddpo`` is the offline baseline
ARMS: dict[str, tuple[tuple[str, ...], dict[str, float]]] = {
    "grpo-f1": (("describe",), {"object_f1": 1.0}),
    "grpo-f1-yesno": (("describe", "exist"), {"object_f1": 1.0, "answer_match": 1.0}),
    "grpo-precision": (("describe",), {"object_precision": 2.0, "object_recall": 1.0, "length": 0.5}),
    "ddpo": ((), {}),
}
METRICS = (*dpo.METRICS, ("train_seconds", "train s"))


@dataclass
class Setting:
    """The experiment's knobs on top of the demo's recipe (``grpo-scene-vlm``, ``ddpo-scene-vlm``)."""

    steps: int = 150  # GRPO iterations of 8 prompts x 4 answers
    learning_rate: float = 5e-4
    eval_scenes: int = 200
    prompt_scenes: int = 600

    def demo_config(self) -> DemoConfig:
        return DemoConfig(eval_scenes=self.eval_scenes, feedback_scenes=self.prompt_scenes, grpo_steps=self.steps,
                          grpo_learning_rate=self.learning_rate)


def quick_setting() -> Setting:
    """A few scenes and two iterations (a smoke run, not evidence)."""
    return Setting(steps=2, eval_scenes=4, prompt_scenes=8)


def prompt_set(config: DemoConfig, kinds: Sequence[str], out: Path) -> Path:
    """The prompts of ``kinds`` on the feedback scenes, built once per set of kinds."""
    path = out / f"prompts-{'-'.join(kinds)}"
    if not (path / "mmalign_dataset.json").exists():
        build_grpo_prompts(config, path, out / f"prompts-{'-'.join(kinds)}-stats.json", kinds=kinds)
    return path


def run_arm(setting: Setting, arm: str, seed: int, world: Path, out: Path) -> dict[str, Any]:
    """Train one (arm, seed) and evaluate it on the held-out scenes."""
    config = setting.demo_config()
    if arm == "ddpo":  # the demo's Dense DPO as it is (its own learning rate)
        _, pairs = dpo.build_data(config, out)
        return dpo.run_method(config, "ddpo-qlora", seed, world, pairs, out)
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.grpo import GRPOTrainer

    kinds, rewards = ARMS[arm]
    prompts = prompt_set(config, kinds, out)
    policy = demo_policy(config, seed=seed)
    run_dir = out / "runs" / f"{arm}-seed{seed}"
    trainer = GRPOTrainer(policy, demo_grpo_args(config, run_dir / "train", prompts, rewards=rewards, seed=seed),
                          load_preference_dataset(prompts))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    (run_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history))  # reward, length per iteration
    headline = evaluate_scene_model(policy, world, run_dir / "eval", f"{arm}-seed{seed}", progress=False)
    last = trainer.state.log_history[-1]
    return {**headline, "train_seconds": seconds, "final_reward": last.get("reward", float("nan"))}


def markdown(summary: dict[str, dict[str, float]], base: dict[str, float], seeds: list[int], setting: Setting) -> str:
    def cell(row: dict[str, float], key: str) -> str:
        if key not in row:
            return "-"
        std = row.get(key + "_std")
        return f"{row[key]:.1f}" if std is None else f"{row[key]:.1f} ± {std:.1f}"

    lines = [
        f"Held-out scenes: {setting.eval_scenes}; prompts from {setting.prompt_scenes} feedback scenes; seeds "
        f"{', '.join(map(str, seeds))} (mean ± std); GRPO: {setting.steps} iterations of 8 prompts x 4 answers, "
        f"lr {setting.learning_rate:g}, KL β {setting.demo_config().grpo_beta:g}; Dense DPO: the demo's pairs and recipe.",
        "",
        "| model | seeds | " + " | ".join(label for _, label in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
        "| start (shipped scene VLM, 4-bit) | - | " + " | ".join(cell(base, k) for k, _ in METRICS) + " |",
    ]
    for name in ARMS:
        if name in summary:
            row = summary[name]
            lines.append(f"| {name} | {row['seeds']:g} | " + " | ".join(cell(row, k) for k, _ in METRICS) + " |")
    return "\n".join(lines) + "\n"


def run_grpo_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2), arms: Sequence[str] = tuple(ARMS),
                        setting: Setting | None = None) -> dict[str, Any]:
    """Train and evaluate each (seed, arm) not measured yet; returns ``results.json``'s content."""
    setting = setting or Setting()
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown GRPO experiment arm(s) {unknown}; choose from {sorted(ARMS)}")
    from mmalign.scene.exports import make_world

    out = Path(out)
    config = setting.demo_config()
    world = out / "world"
    if not (world / "world.json").exists():
        make_world(world, seed=config.seed, size=config.eval_scenes)
    measure_missing(out, "grpo", seeds, arms, "training, then POPE and CHAIR on the held-out scenes",
                    lambda seed, arm: run_arm(setting, arm, seed, world, out))
    runs = load_runs(out)
    start = dpo.base_results(config, world, out, ["nf4"])["base-4bit"]
    results = {"setting": asdict(setting), "start": start, "runs": runs, "summary": summarise(runs)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results["summary"], start, [r["seed"] for r in runs], setting))
    return results
