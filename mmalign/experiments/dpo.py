"""Dense DPO versus plain DPO, and QLoRA versus 16- and 32-bit LoRA, in the scene world, same budget.

RLHF-V's ablation asks whether weighting the corrected segments (Dense DPO, γ > 1) cuts
hallucination more than plain DPO on the same correction pairs; QLoRA should match LoRA on
an unquantised base within noise while holding the base weights in far less memory. Run
with ``mmalign experiments dpo --out DIR`` or :func:`run_dpo_experiment`.

Every method trains on the same pairs (the demo's: the shipped scene VLM's own answers on
feedback scenes, corrected against the annotations) with the demo's recipe
(:class:`mmalign.demo.DemoConfig`), the same steps and the same seeds, and is evaluated on
the same held-out scenes (POPE, CHAIR). Data, reference log-probs and each (seed, method)
result are written under ``OUT`` and reused, so a crashed run resumes and several
invocations can share a folder; ``results.md`` / ``results.json`` summarise mean ± std.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mmalign.demo import (
    DemoConfig,
    build_feedback_pairs,
    demo_base,
    demo_policy,
    demo_training_args,
    evaluate_scene_model,
)
from mmalign.experiments.seeds import load_runs, measure_missing, summarise

#: method -> (DPO loss type, base precision, DPOConfig changes to the demo's recipe).
#: ``ddpo-norm-qlora`` is the RLHF-V paper's own form: scores normalised by N = |y_u| + γ|y_c|, β 0.5.
METHODS = {"ddpo-qlora": ("ddpo", "nf4", {}), "dpo-qlora": ("sigmoid", "nf4", {}),
           "ddpo-norm-qlora": ("ddpo", "nf4", {"ddpo_normalize": True, "beta": 0.5}),
           "ddpo-lora": ("ddpo", "float32", {}), "ddpo-lora-bf16": ("ddpo", "bfloat16", {})}
TAGS = {"nf4": "4bit", "float32": "fp32", "bfloat16": "bf16"}
METRICS = (("F1 (mean of splits)", "POPE F1"), ("Accuracy (mean)", "POPE acc."), ("CHAIR_s", "CHAIR_s"),
           ("CHAIR_i", "CHAIR_i"), ("Recall", "recall"), ("Length (words)", "words"))


def weight_megabytes(model) -> float:
    """Bytes held by the model's parameters and buffers (4-bit layers count their packed bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def build_data(config: DemoConfig, out: Path) -> tuple[Path, Path]:
    """Held-out world and the correction pairs, built once with the 4-bit base (as the demo)."""
    from mmalign.scene.exports import make_world

    world, pairs = out / "world", out / "pairs"
    if not (world / "world.json").exists():
        make_world(world, seed=config.seed, size=config.eval_scenes)
    if not (pairs / "mmalign_dataset.json").exists():
        base = demo_base(config)
        build_feedback_pairs(base, config, pairs, out / "pairs-stats.json")
    return world, pairs


def reference_data(config: DemoConfig, pairs: Path, precision: str, out: Path):
    """Pairs with the reference log-probs of the base as each method loads it."""
    from datasets import load_from_disk

    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.dpo.reference import precompute_reference_logps
    from mmalign.io import DATASETS_FOLDER, atomic_dir

    path = out / f"pairs-ref-{TAGS[precision]}"
    if not path.exists():
        base = demo_base(config, precision=precision)
        data = precompute_reference_logps(base, load_preference_dataset(pairs), max_length=config.max_length,
                                          batch_size=32, share_prefix=True)
        with atomic_dir(path, replaces=DATASETS_FOLDER, inputs=[pairs]) as tmp:
            data.save_to_disk(str(tmp))
    return load_from_disk(str(path))


def run_method(config: DemoConfig, method: str, seed: int, world: Path, pairs: Path, out: Path) -> dict[str, Any]:
    """Train one (method, seed) with the demo's recipe and evaluate it on the held-out scenes."""
    from mmalign.dpo import DPOTrainer

    loss_type, precision, changes = METHODS[method]
    data = reference_data(config, pairs, precision, out)
    policy = demo_policy(config, precision=precision, seed=seed)
    run_dir = out / "runs" / f"{method}-seed{seed}"
    args = replace(demo_training_args(config, run_dir / "train", pairs, loss_type=loss_type, seed=seed), **changes)
    trainer = DPOTrainer(policy, args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    headline = evaluate_scene_model(policy, world, run_dir / "eval", f"{method}-seed{seed}", progress=False)
    summary = trainer.state.log_history[-1]  # the run's mean of every logged step metric
    return {**headline, "train_seconds": seconds, "weights_MB": weight_megabytes(policy.model),
            "reward_accuracy": summary.get("rewards/accuracies", float("nan"))}


def base_results(config: DemoConfig, world: Path, out: Path, precisions: Sequence[str]) -> dict[str, dict[str, float]]:
    """The base model's rows, one per precision, measured once each (``OUT/base/<name>.json``)."""

    results = {}
    for precision in precisions:
        name = f"base-{TAGS[precision]}"
        file = out / "base" / f"{name}.json"
        if not file.exists():
            adapter = demo_base(config, precision=precision)
            row = {**evaluate_scene_model(adapter, world, out / "base" / name, name, progress=False),
                   "weights_MB": weight_megabytes(adapter.model)}
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(row, indent=1))
        results[name] = json.loads(file.read_text())
    return results


def markdown(summary: dict[str, dict[str, float]], base: dict[str, dict[str, float]], seeds: list[int],
             config: DemoConfig) -> str:
    def cell(row: dict[str, float], key: str) -> str:
        std = row.get(key + "_std")
        return f"{row[key]:.1f}" if std is None else f"{row[key]:.1f} ± {std:.1f}"

    lora = "the model card's LoRA" if config.lora_r is None else f"LoRA r={config.lora_r}"
    lines = [
        f"Held-out scenes: {config.eval_scenes}; pairs from {config.feedback_scenes} feedback scenes; seeds "
        f"{', '.join(map(str, seeds))} (mean ± std over the seeds each method has); {lora}, "
        f"lr {config.learning_rate:g}, {config.epochs:g} epochs, β {config.beta:g}, γ {config.gamma:g} (Dense DPO), "
        f"SFT term {config.sft_weight:g}.",
        "",
        "| model | seeds | " + " | ".join(label for _, label in METRICS) + " | weights MB |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    for name, row in base.items():
        lines.append(f"| {name} | - | " + " | ".join(cell(row, k) for k, _ in METRICS)
                     + f" | {row['weights_MB']:.1f} |")
    for name in METHODS:
        if name in summary:
            row = summary[name]
            lines.append(f"| {name} | {row['seeds']:g} | " + " | ".join(cell(row, k) for k, _ in METRICS)
                         + f" | {row['weights_MB']:.1f} |")
    return "\n".join(lines) + "\n"


def quick_config() -> DemoConfig:
    """A few scenes and one short epoch (a smoke run, not evidence)."""
    return replace(DemoConfig(), eval_scenes=4, feedback_scenes=4, epochs=1, batch_size=8)


def run_dpo_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] = tuple(METHODS),
                       config: DemoConfig | None = None) -> dict[str, Any]:
    """Train and evaluate each (seed, method) not measured yet; returns ``results.json``'s content."""
    config = config or DemoConfig()
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown DPO experiment method(s) {unknown}; choose from {sorted(METHODS)}")
    out = Path(out)
    world, pairs = build_data(config, out)
    measure_missing(out, "dpo", seeds, methods, "training, then POPE and CHAIR on the held-out scenes",
                    lambda seed, method: run_method(config, method, seed, world, pairs, out))
    runs = load_runs(out)
    measured_precisions = {METHODS[m][1] for r in runs for m in r["models"]}
    base = base_results(config, world, out, [p for p in TAGS if p in measured_precisions | {"nf4"}])
    results = {"config": asdict(config), "base": base, "runs": runs, "summary": summarise(runs)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results["summary"], base, [r["seed"] for r in runs], config))
    return results
