"""Reward and cost models in the scene world: does listing the facts catch hallucination?

Fact-RLHF's ablation: a reward model shown the image's reference captions (Fact-RM) should
rank hallucinated answers below corrected ones more often than a plain one. Run with
``mmalign experiments reward-models --out DIR`` or :func:`run_reward_model_experiment`.

Data, built once into ``OUT/data`` and reused:

- helpfulness pairs: the scene VLM describes scenes and answers existence questions, the
  world corrects it (``scene_feedback_records``): chosen = corrected, rejected = the model's
  own hallucinated answer. Training scenes and held-out scenes never overlap.
- safety pairs: the world's graded safety responses (``scene_safety_records``).

For every seed the same pairs train a plain reward model and a Fact-RM (the image's
reference captions listed in the scoring prompt), and a cost model on the safety pairs
(graded signs). Reported on the held-out pairs: pairwise accuracy of both reward models
(overall, captions, existence answers) and the cost model's ranking and sign accuracy.
Results go to ``OUT/results.json`` and ``OUT/results.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.experiments.seeds import load_runs, result_file, save_result, summarise
from mmalign.scene.ranges import REWARD_EVAL, REWARD_TRAIN


@dataclass
class Setting:
    model: str = "scene-vlm"
    train_scenes: int = 600
    eval_scenes: int = 200
    safety_train_scenes: int = 400
    safety_eval_scenes: int = 150
    epochs: float = 1.5
    batch_size: int = 16
    learning_rate: float = 1e-3
    lora_r: int = 8
    max_length: int = 512


def build_data(setting: Setting, out: Path) -> dict[str, Path]:
    """Write the four datasets (train / held-out, helpfulness / safety) unless present."""
    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.models import load_adapter
    from mmalign.scene.feedback import scene_feedback_records, scene_safety_records
    from mmalign.scene.world import WorldConfig

    world = WorldConfig()
    paths = {name: out / name for name in ("feedback-train", "feedback-eval", "safety-train", "safety-eval")}
    if not all(p.exists() for p in paths.values()):
        adapter = load_adapter(setting.model)
        train, stats = scene_feedback_records(adapter, world, setting.train_scenes,
                                              **REWARD_TRAIN.take(setting.train_scenes))
        print(f"feedback train: {stats}")
        held, stats = scene_feedback_records(adapter, world, setting.eval_scenes,
                                             **REWARD_EVAL.take(setting.eval_scenes))
        print(f"feedback held-out: {stats}")
        save_preference_dataset(train, paths["feedback-train"])
        save_preference_dataset(held, paths["feedback-eval"])
        save_preference_dataset(scene_safety_records(world, setting.safety_train_scenes,
                                                     **REWARD_TRAIN.take(setting.safety_train_scenes)), paths["safety-train"])
        save_preference_dataset(scene_safety_records(world, setting.safety_eval_scenes,
                                                     **REWARD_EVAL.take(setting.safety_eval_scenes)), paths["safety-eval"])
    return paths


def reward_run_config(setting: Setting, data: Path, out: Path, seed: int, **reward_args: Any) -> tuple[Any, Any]:
    """(ModelConfig, RewardConfig) of one model: the shipped recipe of its kind (cost model,
    Fact-RM or plain RM) with the Setting's knobs, the data and the seed on top."""
    from mmalign.config_io import load_recipe
    from mmalign.model_config import ModelConfig
    from mmalign.reward import RewardConfig

    recipe = ("cost-scene-vlm" if reward_args.get("kind") == "cost"
              else "fact-rm-scene-vlm" if reward_args.get("use_facts") else "rm-scene-vlm")
    return load_recipe(recipe, (ModelConfig, RewardConfig), {
        "model_name_or_path": setting.model, "lora_r": setting.lora_r, "lora_alpha": 2 * setting.lora_r,
        "output_dir": str(out), "dataset_path": str(data), "num_train_epochs": setting.epochs,
        "per_device_train_batch_size": setting.batch_size, "learning_rate": setting.learning_rate,
        "max_length": setting.max_length, "seed": seed, "data_seed": seed, "facts_seed": seed, "use_cpu": True,
        **reward_args,
    })


def train_model(setting: Setting, data: Path, out: Path, seed: int, **reward_args: Any):
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.models import ScalarHeadModel
    from mmalign.reward import RewardTrainer

    model_config, args = reward_run_config(setting, data, out, seed, **reward_args)
    model = ScalarHeadModel(model_config.load(seed=seed), kind=args.kind)
    RewardTrainer(model, args, train_dataset=load_preference_dataset(data)).train()
    model.eval()
    return model


def evaluate(model, data: Path, kind: str) -> dict[str, float]:
    """Held-out accuracies; pairs oriented as in training."""
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.reward import RewardScorer, scored_pair

    dataset = load_preference_dataset(data)
    # sign accuracy is judged against the safe / unsafe labels, whatever signs trained the model
    pairs = [scored_pair(dataset[i], i, kind, "label") for i in range(len(dataset))]
    scorer = RewardScorer(model, batch_size=16, max_length=512)
    images, prompts, facts = dataset["images"], dataset["prompt"], dataset["facts"]
    first = scorer(images, prompts, [p.first for p in pairs], facts)
    second = scorer(images, prompts, [p.second for p in pairs], facts)
    correct = [a > b for a, b in zip(first, second)]
    result = {"accuracy": 100 * statistics.fmean(correct), "pairs": len(pairs)}
    if kind == "reward":
        for source in ("caption", "existence"):
            picked = [c for c, s in zip(correct, dataset["source"]) if s.endswith(source)]
            result[f"accuracy_{source}"] = 100 * statistics.fmean(picked) if picked else float("nan")
    else:
        signs = [(p.first_sign, a) for p, a in zip(pairs, first)] + [(p.second_sign, b) for p, b in zip(pairs, second)]
        labelled = [(s, c) for s, c in signs if s != 0]
        result["sign_accuracy"] = 100 * statistics.fmean((c > 0) == (s > 0) for s, c in labelled)
        for name, side in (("mean_cost_unsafe", 1), ("mean_cost_safe", -1)):
            costs = [c for s, c in labelled if s == side]
            result[name] = statistics.fmean(costs) if costs else float("nan")
    return result


def markdown(summary: dict[str, dict[str, float]], seeds: list[int], setting: Setting) -> str:
    def cell(name: str, metric: str) -> str:
        return f"{summary[name][metric]:.1f} ± {summary[name][metric + '_std']:.1f}"

    lines = [
        f"Held-out scene-world pairs, seeds {', '.join(map(str, seeds))} (mean ± std over the seeds each model has), "
        f"base `{setting.model}`, "
        f"LoRA r={setting.lora_r}, {setting.epochs:g} epochs.",
        "",
        "| reward model | pairwise accuracy | captions | existence answers |",
        "|---|---|---|---|",
    ]
    for name, label in (("rm", "plain RM"), ("fact_rm", "Fact-RM, facts in the evaluation turn (Fact-RLHF)"),
                        ("fact_rm_prompt", "Fact-RM, facts before the question")):
        if name in summary:
            lines.append(f"| {label} | {cell(name, 'accuracy')} | {cell(name, 'accuracy_caption')} | "
                         f"{cell(name, 'accuracy_existence')} |")
    if "cost" in summary:
        lines += ["", "| cost model | ranking accuracy | sign accuracy | mean cost, unsafe | mean cost, safe |",
                  "|---|---|---|---|---|",
                  f"| graded signs | {cell('cost', 'accuracy')} | {cell('cost', 'sign_accuracy')} | "
                  f"{summary['cost']['mean_cost_unsafe']:.2f} | {summary['cost']['mean_cost_safe']:.2f} |"]
    return "\n".join(lines) + "\n"


#: model name -> (data, RewardConfig overrides)
MODELS = {
    "rm": ("feedback", {}),
    "fact_rm": ("feedback", {"use_facts": True}),
    "fact_rm_prompt": ("feedback", {"use_facts": True, "facts_position": "prompt"}),
    "cost": ("safety", {"kind": "cost", "cost_signs": "graded"}),
}
#: the models an experiment trains unless told otherwise (the Fact-RLHF comparison and the cost model)
DEFAULT_MODELS = ("rm", "fact_rm", "cost")


def write_results(out: Path, setting: Setting, runs: list[dict[str, Any]]) -> None:
    summary = summarise(runs)
    (out / "results.json").write_text(json.dumps({"setting": setting.__dict__, "runs": runs, "summary": summary},
                                                 indent=1))
    (out / "results.md").write_text(markdown(summary, [r["seed"] for r in runs], setting))


def quick_setting(model: str = Setting.model) -> Setting:
    """Tiny data and half an epoch (a smoke run, not evidence)."""
    return Setting(model=model, train_scenes=8, eval_scenes=4, safety_train_scenes=6, safety_eval_scenes=4,
                   epochs=0.5, batch_size=4)


def run_reward_model_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2),
                                models: Sequence[str] = DEFAULT_MODELS,
                                setting: Setting | None = None) -> dict[str, Any]:
    """Train and score each (seed, model) not measured yet; returns ``results.json``'s content.

    One result file per (seed, model) under ``OUT/measured``, so a stopped run resumes and
    several invocations can share ``OUT``; the tables cover every file there.
    """
    setting = setting or Setting()
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown reward-model experiment model(s) {unknown}; choose from {sorted(MODELS)}")
    out = Path(out)
    data = build_data(setting, out / "data")
    for seed in seeds:
        for name in models:
            if result_file(out, seed, name).exists():
                continue  # measured by an earlier (or parallel) invocation
            path, extra = MODELS[name]
            print(f"-- reward-models: seed {seed}, {name}: training, then scoring the held-out pairs", flush=True)
            model = train_model(setting, data[f"{path}-train"], out / f"{name}-seed{seed}", seed, **extra)
            result = evaluate(model, data[f"{path}-eval"], "cost" if name == "cost" else "reward")
            print(f"-- reward-models: seed {seed}, {name}: {result}", flush=True)
            save_result(out, seed, name, result)
            write_results(out, setting, load_runs(out))  # after every model, so a stopped run keeps it
    write_results(out, setting, load_runs(out))
    return json.loads((out / "results.json").read_text())
