"""Online RL against learned models in the scene world: Fact-RM versus plain RM, reward-only
versus Lagrangian-constrained PPO, and the same constraint on critic-free GRPO.

Fact-RLHF's ablation asks whether PPO against a factually augmented reward model leaves
less hallucination than PPO against a plain one; Safe RLHF-V's claim is that PPO-Lagrangian
keeps answers to harmful requests safe where reward-only PPO does not, without losing
helpfulness. Safe GRPO-Lagrangian asks the same of group RL (group advantages of the reward
and of the cost, the same λ), against reward-only GRPO that logs the cost without obeying
it. Run with ``mmalign experiments ppo --out DIR`` or :func:`run_ppo_experiment`.

Stages (each written under ``OUT`` and reused when present, so a crashed run resumes):

1. ``policy-sft``: the scene VLM fine-tuned on its instruction data plus an *imperfect*
   safety mix (each safety prompt answered by a random labelled response, harmful
   compliance included), so the starting policy is sometimes unsafe, like a web-SFT model.
2. ``reward-model`` (Fact-RM) and ``plain-reward-model`` on the same pairs: that policy's
   corrected answers (hallucination pairs) plus the world's helpfulness pairs;
   ``cost-model`` on the safety pairs (graded signs). LoRA adapters on the policy's base.
3. For each seed, the arms of :data:`ARMS` with the same prompts and iterations.
4. Held-out evaluation (greedy) of the start policy and every run: Fact-RM score, caption
   hallucination rate and yes/no accuracy (against the scene annotations), unsafe rate on
   harmful requests by the world's labels and by the cost model, refusal rate on benign
   questions. ``results.md`` / ``results.json``, ``curves.png`` (cost, λ, reward, KL per
   iteration) and the peak memory of each run's process.
"""

from __future__ import annotations

import json
import resource
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmalign.experiments.seeds import load_runs, result_file, save_result, summarise
from mmalign.scene.ranges import REWARD_TRAIN, RL_EVAL, RL_PROMPTS, SAFETY_SFT
from mmalign.scene.world import WorldConfig


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
    kl_coef: float = 0.2
    learning_rate: float = 5e-4
    budget: float = -5.5  # below the start policy's held-out mean cost (-4.9), so the constraint binds
    lambda_init: float = 1.0
    grpo_iterations: int = 30  # GRPO arms: iterations of grpo_prompts prompts x grpo_generations answers
    grpo_prompts: int = 8
    grpo_generations: int = 4
    grpo_beta: float = 0.05


def quick_setting() -> Setting:
    """Tiny sizes: every stage in about a minute (a smoke run, not evidence)."""
    return Setting(sft_scenes=64, safety_sft_scenes=64, feedback_scenes=8, safety_pair_scenes=16, prompt_scenes=8,
                   eval_scenes=6, iterations=2, rollout_batch_size=8, minibatch=4, max_new_tokens=8,
                   grpo_iterations=2, grpo_prompts=2)


#: arm -> (trainer, reward model, constrained by the cost model, label). Every arm uses the same
#: start policy, prompts and seeds; the cost model only logs in reward-only arms.
ARMS = {
    "ppo": ("ppo", "reward-model", False, "PPO, Fact-RM, reward only"),
    "ppo-plain-rm": ("ppo", "plain-reward-model", False, "PPO, plain RM, reward only"),
    "safe-ppo": ("ppo", "reward-model", True, "PPO-Lagrangian, Fact-RM + cost model"),
    "grpo": ("grpo", "reward-model", False, "GRPO, Fact-RM, reward only"),
    "safe-grpo": ("grpo", "reward-model", True, "Safe GRPO-Lagrangian, Fact-RM + cost model"),
}


def _done(path: Path) -> bool:
    return (path / "done.json").exists()


def _mark(path: Path, info: dict[str, Any] | None = None) -> None:
    (path / "done.json").write_text(json.dumps(info or {}))


def stage_policy_sft(setting: Setting, out: Path) -> Path:
    from datasets import concatenate_datasets

    from mmalign.io import MODEL, atomic_dir
    from mmalign.model_config import ModelConfig
    from mmalign.scene.sft import scene_safety_sft_dataset, scene_sft_dataset
    from mmalign.sft import SFTConfig, SFTTrainer

    path = out / "policy-sft"
    if _done(path):
        return path
    print("-- ppo: start policy: SFT on instructions plus an imperfect safety mix", flush=True)
    world = WorldConfig()
    data = concatenate_datasets([
        scene_sft_dataset(world, setting.sft_scenes, split="train", seed=1),
        scene_safety_sft_dataset(world, setting.safety_sft_scenes, **SAFETY_SFT.take(setting.safety_sft_scenes)),
    ]).shuffle(seed=0)
    adapter = ModelConfig(model_name_or_path=setting.model, use_peft=False).load()
    args = SFTConfig(output_dir=str(out / "policy-sft-run"), per_device_train_batch_size=32, num_train_epochs=1,
                     learning_rate=3e-4, lr_scheduler_type="cosine", warmup_steps=0.05, save_strategy="no",
                     logging_steps=20, report_to="none", use_cpu=True, max_length=512, seed=0)
    trainer = SFTTrainer(adapter, args, train_dataset=data)
    trainer.train()
    with atomic_dir(path, replaces=MODEL) as tmp:
        adapter.model.save_pretrained(tmp, safe_serialization=True)
        adapter.processor.save_pretrained(tmp)
        _mark(tmp, {"rows": len(data), "log": trainer.state.log_history[-3:]})
    return path


def stage_scoring_models(setting: Setting, base: Path, out: Path) -> dict[str, Path]:
    """The Fact-RM, the plain RM (same pairs, no facts) and the cost model, on the policy's base."""
    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.experiments.reward_models import Setting as RMSetting
    from mmalign.experiments.reward_models import train_model
    from mmalign.io import atomic_dir
    from mmalign.models import load_adapter
    from mmalign.models.scalar_head import SCALAR_MODEL
    from mmalign.scene.feedback import scene_feedback_records, scene_safety_records

    world = WorldConfig()
    pairs = {name: out / name for name in ("rm-pairs", "cost-pairs")}
    if not pairs["rm-pairs"].exists():
        print("-- ppo: preference pairs from the start policy's corrected answers and the world's safety pairs",
              flush=True)
        feedback, _ = scene_feedback_records(load_adapter(str(base)), world, setting.feedback_scenes,
                                             **REWARD_TRAIN.take(setting.feedback_scenes))
        safety = scene_safety_records(world, setting.safety_pair_scenes, **REWARD_TRAIN.take(setting.safety_pair_scenes))
        save_preference_dataset(feedback + safety, pairs["rm-pairs"])
        save_preference_dataset(safety, pairs["cost-pairs"])
    rm_setting = RMSetting(model=str(base), epochs=1.0)
    models = {}
    for name, data, extra in (("reward-model", "rm-pairs", {"use_facts": True}),
                              ("plain-reward-model", "rm-pairs", {}),
                              ("cost-model", "cost-pairs", {"kind": "cost", "cost_signs": "graded"})):
        models[name] = out / name
        if not _done(models[name]):
            print(f"-- ppo: training the {name.replace('-', ' ')}", flush=True)
            model = train_model(rm_setting, pairs[data], out / f"{name}-run", 0, **extra)
            with atomic_dir(models[name], replaces=SCALAR_MODEL, inputs=[base, pairs[data]]) as tmp:
                model.save_pretrained(tmp)
                _mark(tmp)
    return models


def stage_prompts(setting: Setting, out: Path) -> tuple[Path, Path]:
    from mmalign.data_builders.storage import save_prompt_set
    from mmalign.scene.feedback import scene_prompt_records

    world = WorldConfig()
    train, held = out / "prompts-train", out / "prompts-eval"
    if not train.exists():
        save_prompt_set(scene_prompt_records(world, setting.prompt_scenes, **RL_PROMPTS.take(setting.prompt_scenes)), train)
    if not held.exists():
        save_prompt_set(scene_prompt_records(world, setting.eval_scenes, **RL_EVAL.take(setting.eval_scenes)), held)
    return train, held


def ppo_run_config(setting: Setting, base: Path, models: dict[str, Path], prompts: Path, path: Path, seed: int,
                   arm: str) -> tuple[Any, Any]:
    """(ModelConfig, PPOConfig) of one run: the arm's shipped recipe, with the Setting's knobs,
    the experiment's data and its bookkeeping on top."""
    from mmalign.config_io import load_recipe
    from mmalign.model_config import ModelConfig
    from mmalign.ppo import PPOConfig

    _, reward_model, safe, _ = ARMS[arm]
    return load_recipe("safe-ppo-scene-vlm" if safe else "ppo-scene-vlm", (ModelConfig, PPOConfig), {
        "model_name_or_path": str(base), "output_dir": str(path), "dataset_path": str(prompts),
        "reward_model_path": str(models[reward_model]), "cost_model_path": str(models["cost-model"]),
        "lagrangian": safe, "max_steps": setting.iterations, "rollout_batch_size": setting.rollout_batch_size,
        "per_device_train_batch_size": setting.minibatch, "max_new_tokens": setting.max_new_tokens,
        "kl_coef": setting.kl_coef, "learning_rate": setting.learning_rate, "cost_threshold": setting.budget,
        "lambda_init": setting.lambda_init, "save_strategy": "steps", "logging_steps": 1, "use_cpu": True,
        "seed": seed,
    })


def grpo_run_config(setting: Setting, base: Path, models: dict[str, Path], prompts: Path, path: Path, seed: int,
                    arm: str) -> tuple[Any, Any]:
    """(ModelConfig, GRPOConfig) of a GRPO arm: the ``safe-grpo-scene-vlm`` recipe, the cost
    only logged in the reward-only arm."""
    from mmalign.config_io import load_recipe
    from mmalign.grpo import GRPOConfig
    from mmalign.model_config import ModelConfig

    _, reward_model, safe, _ = ARMS[arm]
    return load_recipe("safe-grpo-scene-vlm", (ModelConfig, GRPOConfig), {
        "model_name_or_path": str(base), "output_dir": str(path), "dataset_path": str(prompts),
        "reward_model_path": str(models[reward_model]), "cost_model_path": str(models["cost-model"]),
        "lagrangian": safe, "max_steps": setting.grpo_iterations, "prompts_per_step": setting.grpo_prompts,
        "num_generations": setting.grpo_generations,
        "per_device_train_batch_size": setting.grpo_prompts * setting.grpo_generations // 2,
        "max_new_tokens": setting.max_new_tokens, "beta": setting.grpo_beta, "learning_rate": setting.learning_rate,
        "cost_threshold": setting.budget, "lambda_init": setting.lambda_init, "save_strategy": "steps",
        "logging_steps": 1, "use_cpu": True, "seed": seed,
    })


def stage_rl(setting: Setting, base: Path, models: dict[str, Path], prompts: Path, out: Path, seed: int,
             arm: str) -> Path:
    """Train one (seed, arm) with PPO or GRPO; a finished run is reused, a stopped one resumes."""
    from mmalign.grpo import run_grpo
    from mmalign.ppo import run_ppo

    path = out / f"{arm}-{seed}"
    if (path / "final").exists():
        return path / "final"
    configs, run = ((ppo_run_config, run_ppo) if ARMS[arm][0] == "ppo" else (grpo_run_config, run_grpo))
    model_config, args = configs(setting, base, models, prompts, path, seed, arm)
    if any(path.glob("checkpoint-*")):
        args.resume_from_checkpoint = "auto"
    return run(model_config, args)  # seeds everything from args.seed


def evaluate_policy(base: Path, adapter_path: Path | None, rm: Path, cm: Path, prompts: Path) -> dict[str, float]:
    """Greedy answers to the held-out prompts, judged by the world, the Fact-RM and the cost model."""
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.models import load_adapter
    from mmalign.reward import RewardScorer, load_reward_model
    from mmalign.scene.feedback import caption_hallucination_rate, safety_response_kind
    from mmalign.scene.world import scene_at

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
    described, exist_right, harmful_unsafe, harmful_unsafe_cm, benign_refused = [], [], [], [], []
    for row, answer, cost in zip(data, answers, costs):
        meta = json.loads(row["meta"]) if isinstance(row["meta"], str) else row["meta"]
        scene = scene_at(world, int(meta["scene"].rsplit("-", 1)[1]), RL_EVAL.split)
        kind = row["source"].rsplit("/", 1)[1]
        if kind == "describe":
            described.append((answer, scene))
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
            "caption_hallucination": 100 * caption_hallucination_rate(*zip(*described)) if described else float("nan"), "existence_accuracy": pct(exist_right),
            "unsafe_rate_harmful_world": pct(harmful_unsafe), "unsafe_rate_harmful_cost_model": pct(harmful_unsafe_cm),
            "over_refusal_benign": pct(benign_refused)}


def mean_logs(logs: list[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """Per-iteration mean over seeds of every numeric entry (iterations that some seeds lack use the rest)."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for log in logs:
        for entry in log:
            if "step" in entry:
                by_step.setdefault(entry["step"], []).append(entry)
    merged = []
    for step in sorted(by_step):
        entries = by_step[step]
        keys = {k for e in entries for k, v in e.items() if isinstance(v, (int, float))}
        merged.append({k: statistics.fmean(e[k] for e in entries if k in e) for k in keys} | {"step": step})
    return merged


def plot_curves(runs: list[dict[str, Any]], setting: Setting, out: Path) -> Path | None:
    """Cost, λ, reward and KL per iteration: one line per arm, the mean over its seeds."""
    from mmalign.online_rl import plot_rl_logs, run_log

    logs: dict[str, list[list[dict[str, Any]]]] = {}
    for run in runs:
        for arm in run["models"]:
            final = out / f"{arm}-{run['seed']}" / "final"
            if arm in ARMS and final.exists():
                logs.setdefault(arm, []).append(run_log(final)[1])
    if not logs:
        return None
    lines = {f"{ARMS[arm][3]} (mean of {len(group)})": mean_logs(group) for arm, group in logs.items()}
    return plot_rl_logs(lines, out / "curves.png", budget=setting.budget)


def run_ppo_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2), arms: Sequence[str] = tuple(ARMS),
                       setting: Setting | None = None) -> dict[str, Any]:
    """Every stage, then each (seed, arm) not measured yet; returns ``results.json``'s content.

    Each (seed, arm) result is its own file under ``OUT/measured``, so a stopped run resumes and
    several invocations (say one per seed) can share ``OUT``; the tables cover every file there.
    """

    setting = setting or Setting()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = stage_policy_sft(setting, out)
    models = stage_scoring_models(setting, base, out)
    train_prompts, eval_prompts = stage_prompts(setting, out)
    start_file = out / "measured" / "start.json"  # one model: not a (seed, arm) result
    start_file.parent.mkdir(exist_ok=True)
    if not start_file.exists():
        print("-- ppo: evaluating the start policy", flush=True)
        start_file.write_text(json.dumps(evaluate_policy(base, None, models["reward-model"], models["cost-model"],
                                                         eval_prompts)))
    for seed in seeds:
        for arm in arms:
            if result_file(out, seed, arm).exists():
                continue
            print(f"-- ppo: seed {seed}, {ARMS[arm][3]}: training, then the held-out evaluation", flush=True)
            final = stage_rl(setting, base, models, train_prompts, out, seed, arm)
            result = evaluate_policy(base, final, models["reward-model"], models["cost-model"], eval_prompts)
            result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            save_result(out, seed, arm, result)
            print(f"-- ppo: seed {seed}, {arm}: {result}", flush=True)
    runs = load_runs(out)
    start = json.loads(start_file.read_text())
    results = {"setting": asdict(setting), "start": start, "runs": runs, "summary": summarise(runs),
               "limits": {"budget": {"mean_cost": setting.budget}}}  # what the claims compare the cost with
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    plot_curves(runs, setting, out)
    return results


#: metric key -> column heading
COLUMNS = {"fact_rm_score": "Fact-RM score", "caption_hallucination": "caption hallucination %",
           "existence_accuracy": "yes/no accuracy %", "unsafe_rate_harmful_cost_model": "unsafe (cost model) %",
           "unsafe_rate_harmful_world": "unsafe (world's text) %", "over_refusal_benign": "benign refused %",
           "mean_cost": "mean cost"}


def markdown(results: dict[str, Any]) -> str:
    """The start policy and every arm, mean ± std over the seeds each arm has."""
    setting, summary = results["setting"], results["summary"]
    seeds = [r["seed"] for r in results["runs"]]
    lines = [
        f"Held-out prompts from {setting['eval_scenes']} scenes; {setting['iterations']} PPO iterations of "
        f"{setting['rollout_batch_size']} prompts, KL β {setting['kl_coef']:g}; {setting['grpo_iterations']} GRPO "
        f"iterations of {setting['grpo_prompts']} prompts x {setting['grpo_generations']} answers, k3 KL β "
        f"{setting['grpo_beta']:g}; cost budget {setting['budget']:g}; "
        f"seeds {', '.join(map(str, seeds))} (mean ± std over the seeds each arm has).",
        "",
        "| policy | seeds | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
        "| start (safety-mixed SFT) | - | " + " | ".join(f"{results['start'][k]:.2f}" for k in COLUMNS) + " |",
    ]
    for arm in ARMS:
        if arm in summary:
            row = summary[arm]
            cells = [f"{row[k]:.2f} ± {row[k + '_std']:.2f}" for k in COLUMNS]
            lines.append(f"| {ARMS[arm][3]} | {row['seeds']:g} | " + " | ".join(cells) + " |")
    peaks = [m["peak_rss_mb"] for r in results["runs"] for m in r["models"].values() if "peak_rss_mb" in m]
    if peaks:
        lines.append(f"\nPeak RSS of a run's process (training and evaluation): {max(peaks):.0f} MB.")
    return "\n".join(lines) + "\n"
