"""The main job on the embedded default: cut the scene VLM's object hallucination.

Stages, each resumable from its output folder:
1. write held-out scenes with POPE and COCO-style (CHAIR) files;
2. evaluate the shipped scene VLM (POPE random / popular / adversarial, CHAIR);
3. ``ddpo``: build a Dense-DPO dataset from the model's own answers on other scenes,
   corrected against the scene ground truth (the world is the annotator); ``grpo``: a
   prompt set of those scenes with their annotated objects (the world is the verifier);
4. train a 4-bit QLoRA adapter with Dense DPO, or on-policy with GRPO;
5. evaluate again and write a before/after report (markdown, JSON, PNG, example answers).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class DemoConfig:
    """The demo's data and training budget (about ten CPU minutes on two cores).

    ``replace_absent=False``: a named absent object's clause is removed rather than replaced
    by a present object the model left out; replacements taught the weakly grounded scene
    VLM to name objects it cannot see (CHAIR rose). ``sft_weight`` adds the chosen answers'
    NLL to the Dense-DPO loss, which keeps the captions fluent at this learning rate.
    """

    # GRPO with an object-F1 reward cuts hallucination without shortening the descriptions;
    # Dense DPO on the world's corrections cuts more, but a truthful description is shorter.
    method: str = "grpo"  # or "ddpo"
    eval_scenes: int = 200
    feedback_scenes: int = 600
    seed: int = 0
    model: str = "scene-vlm"
    lora_r: int | None = None  # None: the model card's LoRA (scene-vlm: r 8, alpha 16, no dropout)
    beta: float = 0.1
    gamma: float = 5.0
    sft_weight: float = 1.0
    replace_absent: bool = False
    learning_rate: float = 1e-3  # Dense DPO's
    epochs: float = 1.5
    batch_size: int = 16
    max_length: int = 512
    grpo_steps: int = 40  # GRPO iterations (8 prompts x 4 answers each)
    # Without a KL term at 1e-3, recall fell 1-8 points with the training seed alone and some
    # answers degenerated into repeated words; half the step and a k3 KL to the base keep
    # recall within 3 points over seeds at the same CHAIR_i cut (docs/scene-world.md).
    grpo_learning_rate: float = 5e-4
    grpo_beta: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown demo method {self.method!r}; choose from {', '.join(METHODS)}")


#: what the demo can train, and how the report names the aligned model
METHODS = {"ddpo": "Dense DPO", "grpo": "GRPO"}


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress:
        progress(text)


def evaluate_scene_model(adapter, world_dir: Path, out: Path, name: str, *, progress: bool = True) -> dict[str, float]:
    """POPE (three splits) and CHAIR on a written world; returns the headline numbers."""
    from mmalign.benchmarks import ChairConfig, PopeConfig, run_chair, run_pope
    from mmalign.benchmarks.runner import GenerationConfig

    pope = run_pope(
        PopeConfig(world_dir / "pope", image_dir=world_dir / "images", data_version="custom"),
        adapter=adapter, out=out / "pope", model_name=name, progress=progress,
        generation=GenerationConfig(max_new_tokens=4, batch_size=64),
    )
    chair = run_chair(
        ChairConfig(instances=world_dir / "coco" / "instances.json", captions=world_dir / "coco" / "captions.json",
                    image_dir=world_dir / "images", prompt="Describe the image."),
        adapter=adapter, out=out / "chair", model_name=name, progress=progress,
        generation=GenerationConfig(max_new_tokens=128, batch_size=64),
    )
    return {**pope.headline, **chair.headline}


def build_feedback_pairs(adapter, config: DemoConfig, pairs_dir: Path, stats_file: Path) -> None:
    """Correction pairs from ``adapter``'s answers on the feedback scenes, with their statistics."""
    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.io import atomic_write_text
    from mmalign.scene.feedback import scene_feedback_records
    from mmalign.scene.world import WorldConfig

    records, stats = scene_feedback_records(adapter, WorldConfig(seed=config.seed), config.feedback_scenes,
                                            seed=config.seed, replace_absent=config.replace_absent)
    # the statistics first: the pairs folder marks the stage done, so a run killed in between
    # builds both again instead of finding pairs without their statistics
    atomic_write_text(stats_file, json.dumps(asdict(stats), indent=2))
    save_preference_dataset(records, pairs_dir)


#: base precisions of the demo's policy: 4-bit NF4 (QLoRA, float32 compute on CPU) or unquantised
PRECISIONS = ("nf4", "float32", "bfloat16")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def demo_base(config: DemoConfig, *, precision: str = "nf4"):
    """The base model without LoRA, as a policy of that precision sees it (to answer, evaluate
    and compute reference log-probs)."""
    from mmalign.models import load_adapter
    from mmalign.qlora import QuantizationConfig

    _check_precision(precision)
    if precision == "nf4":
        return load_adapter(config.model, quantization=QuantizationConfig(compute_dtype="float32"))
    return load_adapter(config.model, dtype=precision)


def demo_policy(config: DemoConfig, *, precision: str = "nf4", seed: int | None = None):
    """The base with a fresh LoRA, in 4-bit NF4 (QLoRA) or unquantised float32 / bfloat16.

    The LoRA's random matrices come from ``seed`` (``config.seed`` unless given)."""
    from mmalign.model_config import ModelConfig

    _check_precision(precision)
    four_bit = precision == "nf4"
    lora = {"lora_r": config.lora_r, "lora_alpha": 2 * config.lora_r} if config.lora_r else {}
    return ModelConfig(model_name_or_path=config.model, load_in_4bit=four_bit, bnb_4bit_compute_dtype="float32",
                       dtype="float32" if four_bit else precision, **lora).load(seed=config.seed if seed is None else seed)


def build_grpo_prompts(config: DemoConfig, prompts_dir: Path, stats_file: Path,
                       kinds: Sequence[str] = ("describe",)) -> None:
    """Prompts of ``kinds`` (descriptions by default) on the feedback scenes, each with the
    scene's annotated objects and reference answer."""
    from mmalign.data_builders.storage import save_prompt_set
    from mmalign.io import atomic_write_text
    from mmalign.scene.feedback import scene_prompt_records
    from mmalign.scene.ranges import FEEDBACK
    from mmalign.scene.world import WorldConfig

    records = scene_prompt_records(WorldConfig(seed=config.seed), config.feedback_scenes, kinds=list(kinds),
                                   seed=config.seed, **FEEDBACK.take(config.feedback_scenes))
    atomic_write_text(stats_file, json.dumps({"records": len(records), "scenes": config.feedback_scenes}, indent=2))
    save_prompt_set(records, prompts_dir)


def demo_grpo_args(config: DemoConfig, output_dir: str | Path, dataset_path: str | Path, *,
                   rewards: dict[str, float] | None = None, seed: int | None = None):
    """The shipped ``grpo-scene-vlm`` recipe with the DemoConfig's knobs; the reward is the
    object F1 of descriptions unless ``rewards`` (function name -> weight) says otherwise."""
    rewards = rewards or {"object_f1": 1.0}
    from mmalign.config_io import load_recipe
    from mmalign.grpo import GRPOConfig
    from mmalign.model_config import ModelConfig

    _, args = load_recipe("grpo-scene-vlm", (ModelConfig, GRPOConfig), {
        "output_dir": str(output_dir), "dataset_path": str(dataset_path), "max_steps": config.grpo_steps,
        "reward_funcs": list(rewards), "reward_weights": list(rewards.values()),
        "learning_rate": config.grpo_learning_rate, "beta": config.grpo_beta,
        "seed": config.seed if seed is None else seed, "save_strategy": "no", "logging_steps": 5,
    })
    return args


def demo_training_args(config: DemoConfig, output_dir: str | Path, dataset_path: str | Path, *,
                       loss_type: str = "ddpo", seed: int | None = None):
    """The demo's preference optimisation: the shipped ``ddpo-scene-vlm`` recipe with the
    DemoConfig's knobs and a precomputed reference on top."""
    from mmalign.config_io import load_recipe
    from mmalign.dpo import DPOConfig
    from mmalign.model_config import ModelConfig

    _, args = load_recipe("ddpo-scene-vlm", (ModelConfig, DPOConfig), {
        "output_dir": str(output_dir), "dataset_path": str(dataset_path), "loss_type": loss_type, "beta": config.beta, "gamma": config.gamma,
        "sft_weight": config.sft_weight, "precompute_ref_logps": True,
        "per_device_train_batch_size": config.batch_size, "num_train_epochs": config.epochs,
        "learning_rate": config.learning_rate, "logging_steps": 10, "per_device_eval_batch_size": 32,
        "seed": config.seed if seed is None else seed, "max_length": config.max_length,
    })
    return args


def run_demo(out_dir: str | Path, config: DemoConfig | None = None,
             progress: Callable[[str], None] | None = print) -> Path:
    """Run every stage; returns the path of the markdown report."""
    from mmalign.dpo import DPOTrainer
    from mmalign.scene.exports import make_world

    config = config or DemoConfig()
    out = Path(out_dir)
    world_dir = out / "world"
    if not (world_dir / "world.json").exists():
        _say(progress, f"[1/5] writing {config.eval_scenes} held-out scenes and benchmark files")
        make_world(world_dir, seed=config.seed, size=config.eval_scenes)

    _say(progress, "[2/5] evaluating the base model")
    base = demo_base(config)
    before = evaluate_scene_model(base, world_dir, out / "eval-before", "base")

    name = METHODS[config.method]
    pairs_dir = out / ("pairs" if config.method == "ddpo" else "prompts")
    stats_file = out / "pairs-stats.json"
    if not (pairs_dir / "mmalign_dataset.json").exists():
        if config.method == "ddpo":
            _say(progress, f"[3/5] building Dense-DPO pairs from the model's answers on {config.feedback_scenes} scenes")
            build_feedback_pairs(base, config, pairs_dir, stats_file)
        else:
            _say(progress, f"[3/5] writing {config.feedback_scenes} description prompts with their annotated objects")
            build_grpo_prompts(config, pairs_dir, stats_file)
    pair_stats = json.loads(stats_file.read_text())

    adapter_dir = out / "adapter"
    if not (adapter_dir / "adapter_config.json").exists():
        _say(progress, f"[4/5] training a 4-bit QLoRA adapter with {name}")
        from mmalign.data_builders.storage import load_preference_dataset

        policy = demo_policy(config)
        data = load_preference_dataset(pairs_dir)
        if config.method == "ddpo":
            trainer = DPOTrainer(policy, demo_training_args(config, out / "train", pairs_dir), train_dataset=data)
        else:
            from mmalign.grpo import GRPOTrainer

            trainer = GRPOTrainer(policy, demo_grpo_args(config, out / "train", pairs_dir), data)
        trainer.train()
        policy.save_adapter(adapter_dir)
        (out / "train-log.json").write_text(json.dumps(trainer.state.log_history, indent=2))

    _say(progress, "[5/5] evaluating the aligned model")
    aligned = demo_base(config)
    aligned.load_adapter(adapter_dir)
    after = evaluate_scene_model(aligned, world_dir, out / "eval-after", config.method)
    return write_demo_report(out, before, after, pair_stats, config)


#: Which way each reported metric should move (the report says it for every row).
BETTER = {"CHAIR_s": "lower", "CHAIR_i": "lower", "Recall": "higher", "Length (words)": "higher (more detail)",
          "Yes-ratio (mean)": "closer to 50"}


def better(metric: str) -> str:
    return BETTER.get(metric, "higher")


def mark_hallucinations(caption: str, hallucinated: list[str]) -> str:
    """The caption with every word naming a hallucinated object struck through in bold."""
    import re

    from mmalign.grounding import ObjectVocabulary

    vocabulary = ObjectVocabulary.from_categories(hallucinated)

    def mark(match: re.Match) -> str:
        word = match.group(0)
        return f"**~~{word}~~**" if hallucinated and vocabulary.category_of(word) else word

    return re.sub(r"[A-Za-z]+", mark, caption)


def example_answers(out: Path, count: int = 3) -> list[dict[str, Any]]:
    """Descriptions of the same images before and after, where the base hallucinated most."""
    from mmalign.io import read_records

    before, after = (list(read_records(out / name / "chair" / "details.jsonl")) for name in ("eval-before", "eval-after"))
    after_by_id = {row["image_id"]: row for row in after}
    worst = sorted((row for row in before if row["hallucinated"] and row["image_id"] in after_by_id),
                   key=lambda row: (-len(row["hallucinated"]), str(row["image_id"])))
    return [{"image_id": row["image_id"], "objects": row["ground_truth"], "before": row,
             "after": after_by_id[row["image_id"]]} for row in worst[:count]]


def write_demo_report(out: Path, before: dict[str, float], after: dict[str, float],
                      pair_stats: dict[str, Any], config: DemoConfig) -> Path:
    from mmalign.utils import format_table

    rows = [[k, better(k), f"{before[k]:.3f}", f"{after[k]:.3f}", f"{after[k] - before[k]:+.3f}"]
            for k in before if k in after and isinstance(before[k], (int, float))]
    name = METHODS[config.method]
    table = format_table(["metric", "better", "base", f"after {name}", "change"], rows)
    (out / "results.json").write_text(json.dumps(
        {"before": before, "after": after, "pairs": pair_stats, "config": asdict(config)}, indent=2))
    lines = [
        f"# {name} on the scene VLM",
        "",
        f"Held-out scenes: {config.eval_scenes}; feedback scenes: {config.feedback_scenes}; "
        f"{'pairs' if config.method == 'ddpo' else 'prompts'}: {pair_stats.get('records')}; seed {config.seed}.",
        "",
        "```",
        table,
        "```",
        "",
    ]
    chart = _chart(out, before, after, name)
    if chart:
        lines += [f"![before and after]({chart.name})", ""]
    examples = example_answers(out)
    if examples:
        lines += ["## Examples", "",
                  "The same held-out images described before and after; objects that are not in the image "
                  "are **~~struck through~~**.", ""]
        for ex in examples:
            lines += [f"Image {ex['image_id']} (objects: {', '.join(ex['objects'])})", "",
                      f"- base: {mark_hallucinations(ex['before']['caption'], ex['before']['hallucinated'])}",
                      f"- after: {mark_hallucinations(ex['after']['caption'], ex['after']['hallucinated'])}", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(table)
    return report


def _chart(out: Path, before: dict[str, float], after: dict[str, float], name: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k in before if k in after]
    fig, ax = plt.subplots(figsize=(max(6, len(keys)), 3.5))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [before[k] for k in keys], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [after[k] for k in keys], width=0.4, label=f"after {name}")
    ax.set_xticks(list(xs), keys, rotation=30, ha="right")
    ax.legend()
    fig.tight_layout()
    path = out / "before_after.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
