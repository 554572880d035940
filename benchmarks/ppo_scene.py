"""PPO (Fact-RLHF) versus Safe RLHF-V's PPO-Lagrangian in the scene world, same budget.

Usage::

    python benchmarks/ppo_scene.py --out runs/ppo-scene                 # 2 seeds, CPU
    python benchmarks/ppo_scene.py --out runs/ppo-quick --quick          # smoke run

Stages (each written to ``OUT/<stage>`` and reused when present, so a crashed run resumes):

1. ``policy-sft``: the scene VLM fine-tuned on its instruction data plus an *imperfect*
   safety mix (each safety prompt answered by a random labelled response, harmful
   compliance included), so the starting policy is sometimes unsafe, like a web-SFT model.
2. ``reward-model``: a Fact-RM on that policy's corrected answers (hallucination pairs)
   plus the world's helpfulness pairs; ``cost-model``: a cost model on the safety pairs
   (graded signs). Both LoRA adapters on the same base as the policy.
3. For each seed, ``ppo-<seed>`` (reward only, Fact-RLHF shaping; the cost model only
   logs) and ``safe-ppo-<seed>`` (PPO-Lagrangian, budget ``--budget``) with the same
   prompts and iterations.
4. Held-out evaluation (greedy) of the start policy and every run: Fact-RM score, caption
   hallucination rate and existence accuracy (against the scene annotations), unsafe rate
   on harmful requests by the world's labels and by the cost model, refusal rate on benign
   questions. ``results.md`` / ``results.json``, ``curves.png`` (cost, λ, reward, KL per
   iteration) and the peak memory of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mmalign.data_builders.scene_world import WorldConfig


@dataclass
class Setting:
    model: str = "scene-vlm"
    sft_scenes: int = 3000
    safety_sft_scenes: int = 1500
    feedback_scenes: int = 300
    safety_pair_scenes: int = 600
    prompt_scenes: int = 200
    eval_scenes: int = 120
    iterations: int = 30
    rollout_batch_size: int = 16
    minibatch: int = 8
    max_new_tokens: int = 32
    kl_coef: float = 0.05
    learning_rate: float = 5e-4
    budget: float = -0.5
    lambda_init: float = 1.0


def _done(path: Path) -> bool:
    return (path / "done.json").exists()


def _mark(path: Path, info: dict[str, Any] | None = None) -> None:
    (path / "done.json").write_text(json.dumps(info or {}))


def stage_policy_sft(setting: Setting, out: Path) -> Path:
    from datasets import concatenate_datasets

    from mmalign.data_builders.scene_sft import scene_safety_sft_dataset, scene_sft_dataset
    from mmalign.io import atomic_dir
    from mmalign.model_config import ModelConfig
    from mmalign.sft import SFTConfig, SFTTrainer

    path = out / "policy-sft"
    if _done(path):
        return path
    world = WorldConfig()
    data = concatenate_datasets([
        scene_sft_dataset(world, setting.sft_scenes, split="train", seed=1),
        scene_safety_sft_dataset(world, setting.safety_sft_scenes, split="train", start=50_001),
    ]).shuffle(seed=0)
    adapter = ModelConfig(model_name_or_path=setting.model, use_peft=False).load()
    args = SFTConfig(output_dir=str(out / "policy-sft-run"), per_device_train_batch_size=32, num_train_epochs=1,
                     learning_rate=3e-4, lr_scheduler_type="cosine", warmup_steps=0.05, save_strategy="no",
                     logging_steps=20, report_to="none", use_cpu=True, max_length=512, seed=0)
    trainer = SFTTrainer(adapter, args, train_dataset=data)
    trainer.train()
    with atomic_dir(path) as tmp:
        adapter.model.save_pretrained(tmp, safe_serialization=True)
        adapter.processor.save_pretrained(tmp)
        _mark(tmp, {"rows": len(data), "log": trainer.state.log_history[-3:]})
    return path


def stage_scoring_models(setting: Setting, base: Path, out: Path) -> tuple[Path, Path]:
    from mmalign.benchmarks.reward_models import Setting as RMSetting
    from mmalign.benchmarks.reward_models import train_model
    from mmalign.data_builders.scene_feedback import scene_feedback_records, scene_safety_records
    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.models import load_adapter

    world = WorldConfig()
    paths = {name: out / name for name in ("rm-pairs", "cost-pairs", "reward-model", "cost-model")}
    if not paths["rm-pairs"].exists():
        feedback, _ = scene_feedback_records(load_adapter(str(base)), world, setting.feedback_scenes,
                                             split="train", start=300_001)
        safety = scene_safety_records(world, setting.safety_pair_scenes, split="train", start=300_001)
        save_preference_dataset(feedback + safety, paths["rm-pairs"])
        save_preference_dataset(safety, paths["cost-pairs"])
    rm_setting = RMSetting(model=str(base), epochs=1.0)
    for name, data, extra in (("reward-model", "rm-pairs", {"use_facts": True}),
                              ("cost-model", "cost-pairs", {"kind": "cost", "cost_signs": "graded"})):
        if not _done(paths[name]):
            model = train_model(rm_setting, paths[data], out / f"{name}-run", 0, **extra)
            model.save_pretrained(paths[name])
            _mark(paths[name])
    return paths["reward-model"], paths["cost-model"]


def stage_prompts(setting: Setting, out: Path) -> tuple[Path, Path]:
    from mmalign.data_builders.scene_feedback import scene_prompt_records
    from mmalign.data_builders.storage import save_prompt_set

    world = WorldConfig()
    train, held = out / "prompts-train", out / "prompts-eval"
    if not train.exists():
        save_prompt_set(scene_prompt_records(world, setting.prompt_scenes, split="train", start=600_001), train)
    if not held.exists():
        save_prompt_set(scene_prompt_records(world, setting.eval_scenes, split="eval", start=700_001), held)
    return train, held


def stage_ppo(setting: Setting, base: Path, rm: Path, cm: Path, prompts: Path, out: Path, seed: int,
              safe: bool) -> Path:
    from mmalign.model_config import ModelConfig
    from mmalign.ppo import PPOConfig, run_ppo

    path = out / f"{'safe-ppo' if safe else 'ppo'}-{seed}"
    if (path / "final").exists():
        return path / "final"
    args = PPOConfig(
        output_dir=str(path), dataset_path=str(prompts), reward_model_path=str(rm),
        cost_model_path=str(cm), lagrangian=safe, max_steps=setting.iterations,
        rollout_batch_size=setting.rollout_batch_size, per_device_train_batch_size=setting.minibatch,
        per_device_eval_batch_size=16, ppo_epochs=2, max_new_tokens=setting.max_new_tokens,
        kl_coef=setting.kl_coef, learning_rate=setting.learning_rate, lr_scheduler_type="constant",
        shaping=True, lam=0.95, value_clip=5.0 if safe else 0.2, score_clip=50.0,
        cost_threshold=setting.budget, lambda_init=setting.lambda_init, lambda_lr=0.1, lambda_max=20.0,
        episode_cost_window=64, save_strategy="steps", save_steps=10, logging_steps=1, report_to="none",
        use_cpu=True, seed=seed, max_length=512,
    )
    model_config = ModelConfig(model_name_or_path=str(base), use_peft=True, lora_r=8, lora_alpha=16,
                               lora_dropout=0.0)
    torch.manual_seed(seed)
    return run_ppo(model_config, args)


def evaluate_policy(base: Path, adapter_path: Path | None, rm: Path, cm: Path, prompts: Path) -> dict[str, float]:
    """Greedy answers to the held-out prompts, judged by the world, the Fact-RM and the cost model."""
    from mmalign.data_builders.scene_feedback import correct_caption, safety_response_kind
    from mmalign.data_builders.scene_world import scene_at
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.models import load_adapter
    from mmalign.reward import RewardScorer, load_reward_model

    world = WorldConfig()
    data = load_preference_dataset(prompts)
    policy = load_adapter(str(base))
    if adapter_path is not None:
        policy.load_adapter(adapter_path)
    policy.model.eval()
    answers: list[str] = []
    for lo in range(0, len(data), 32):
        rows = data[lo : lo + 32]
        answers += policy.generate(rows["images"], rows["prompt"], max_new_tokens=32)
    images, prompts_, facts = data["images"], data["prompt"], data["facts"]
    rm_scores = RewardScorer(load_reward_model(rm, base), batch_size=16, max_length=512)(images, prompts_, answers, facts)
    costs = RewardScorer(load_reward_model(cm, base), batch_size=16, max_length=512)(images, prompts_, answers, facts)
    caption_bad, exist_right, harmful_unsafe, harmful_unsafe_cm, benign_refused = [], [], [], [], []
    for row, answer, cost in zip(data, answers, costs):
        meta = json.loads(row["meta"]) if isinstance(row["meta"], str) else row["meta"]
        scene = scene_at(world, int(meta["scene"].rsplit("-", 1)[1]), "eval")
        kind = row["source"].rsplit("/", 1)[1]
        if kind == "describe":
            caption_bad.append(bool(correct_caption(answer, scene).hallucinated))
        elif kind == "exist":
            exist_right.append(answer.strip().lower().startswith(row["reference"]))
        elif meta.get("harmful_request"):
            harmful_unsafe.append(safety_response_kind(row["prompt"], answer, scene) == "harmful_compliance")
            harmful_unsafe_cm.append(cost > 0)
        elif meta.get("harm_category") is None:
            benign_refused.append(safety_response_kind(row["prompt"], answer, scene) == "bare_refusal")

    def pct(values: list[bool]) -> float:
        return 100 * statistics.fmean(values) if values else float("nan")

    return {"fact_rm_score": statistics.fmean(rm_scores), "mean_cost": statistics.fmean(costs),
            "caption_hallucination": pct(caption_bad), "existence_accuracy": pct(exist_right),
            "unsafe_rate_harmful_world": pct(harmful_unsafe), "unsafe_rate_harmful_cost_model": pct(harmful_unsafe_cm),
            "over_refusal_benign": pct(benign_refused)}


def plot_curves(runs: dict[str, Path], setting: Setting, out: Path) -> None:
    from mmalign.ppo.plots import plot_ppo_logs

    logs = {name: json.loads((path / "ppo_log.json").read_text()) for name, path in runs.items()}
    plot_ppo_logs(logs, out / "curves.png", budget=setting.budget)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=Setting.iterations)
    parser.add_argument("--budget", type=float, default=Setting.budget, help="cost threshold of PPO-Lagrangian")
    parser.add_argument("--kl-coef", type=float, default=Setting.kl_coef, help="β of the per-token KL penalty")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    args = parser.parse_args(argv)
    setting = Setting(iterations=args.iterations, budget=args.budget, kl_coef=args.kl_coef)
    if args.quick:
        setting = Setting(sft_scenes=64, safety_sft_scenes=64, feedback_scenes=8, safety_pair_scenes=16,
                          prompt_scenes=8, eval_scenes=6, iterations=2, rollout_batch_size=8, minibatch=4,
                          max_new_tokens=8, budget=args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = stage_policy_sft(setting, out)
    rm, cm = stage_scoring_models(setting, base, out)
    train_prompts, eval_prompts = stage_prompts(setting, out)
    results: dict[str, Any] = {"setting": asdict(setting), "start": evaluate_policy(base, None, rm, cm, eval_prompts)}
    print("start policy:", results["start"], flush=True)
    finals: dict[str, Path] = {}
    for seed in args.seeds:
        for safe in (False, True):
            name = f"{'safe-ppo' if safe else 'ppo'}-{seed}"
            finals[name] = stage_ppo(setting, base, rm, cm, train_prompts, out, seed, safe)
            results[name] = evaluate_policy(base, finals[name], rm, cm, eval_prompts)
            print(name, results[name], flush=True)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_curves(finals, setting, out)
    (out / "results.md").write_text(markdown(results, args.seeds))
    print(markdown(results, args.seeds))
    return 0


def markdown(results: dict[str, Any], seeds: list[int]) -> str:
    keys = ["fact_rm_score", "caption_hallucination", "existence_accuracy", "unsafe_rate_harmful_world",
            "unsafe_rate_harmful_cost_model", "over_refusal_benign", "mean_cost"]
    lines = ["| policy | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]

    def row(label: str, values: list[dict[str, float]]) -> str:
        cells = []
        for k in keys:
            v = [x[k] for x in values]
            cells.append(f"{statistics.fmean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""))
        return f"| {label} | " + " | ".join(cells) + " |"

    lines.append(row("start (safety-mixed SFT)", [results["start"]]))
    lines.append(row("PPO, reward only", [results[f"ppo-{s}"] for s in seeds]))
    lines.append(row("PPO-Lagrangian", [results[f"safe-ppo-{s}"] for s in seeds]))
    lines.append(f"\nPeak RSS of the whole run: {results['peak_rss_mb']:.0f} MB.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
