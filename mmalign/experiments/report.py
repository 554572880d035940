"""The papers' claims in the scene world: run the experiments and write one report.

``mmalign experiments all --out runs/experiments`` (or :func:`run_experiments`) runs, each
into its own folder under ``OUT`` and resumable there:

- ``dpo``: Dense DPO versus plain DPO (RLHF-V) and QLoRA versus LoRA on a bf16 and an
  fp32 base, on the demo's pairs and recipe (:mod:`.dpo`);
- ``reward-models``: plain RM versus Fact-RM pairwise accuracy on held-out hallucination
  pairs (Fact-RLHF) and a cost model (:mod:`.reward_models`);
- ``ppo``: PPO with the Fact-RM versus the plain RM (hallucination after PPO), and
  reward-only PPO versus PPO-Lagrangian (Safe RLHF-V) (:mod:`.ppo`);
- ``grpo``: GRPO with the world's annotations as verifier versus the start policy and
  Dense DPO (:mod:`.grpo`);
- ``mdpo``: mDPO versus DPO on the same pairs: image reliance and POPE (:mod:`.mdpo`);
- ``loop``: on-policy rounds versus one offline round at the same scenes (:mod:`.loop`);

then :func:`write_experiments_report` gathers every table into ``OUT/report.md`` with bar
charts and, for each claim, the difference between the two arms and a verdict. A verdict
compares the difference of the means with twice its standard error over seeds
(``sqrt(s_a²/n_a + s_b²/n_b)``): *appeared* when the difference goes the claimed way by
more than that, *reversed* when it goes the other way by more, *within noise* otherwise;
with one seed on each side there is no verdict. With three seeds this is a rough screen, not a significance test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.experiments import dpo, grpo, mdpo, overoptimisation, ppo, reward_models
from mmalign.experiments import loop as loop_experiment

EXPERIMENTS = ("dpo", "reward-models", "ppo", "grpo", "mdpo", "loop", "overoptimisation")


@dataclass(frozen=True)
class Claim:
    """"``arm`` beats ``baseline`` on ``metric``": ``better`` is lower, higher or equal."""

    experiment: str
    text: str
    metric: str
    arm: str
    baseline: str
    better: str


CLAIMS = (
    Claim("dpo", "Dense DPO (QLoRA) hallucinates less than the shipped model (CHAIR_s)", "CHAIR_s", "ddpo-qlora",
          "base-4bit", "lower"),
    Claim("dpo", "Dense DPO hallucinates less than plain DPO (CHAIR_s)", "CHAIR_s", "ddpo-qlora", "dpo-qlora", "lower"),
    Claim("dpo", "Dense DPO hallucinates less than plain DPO (CHAIR_i)", "CHAIR_i", "ddpo-qlora", "dpo-qlora", "lower"),
    Claim("dpo", "Dense DPO answers POPE better than plain DPO (F1)", "F1 (mean of splits)", "ddpo-qlora",
          "dpo-qlora", "higher"),
    Claim("dpo", "Dense DPO in the paper's normalised form hallucinates less than plain DPO (CHAIR_s)", "CHAIR_s",
          "ddpo-norm-qlora", "dpo-qlora", "lower"),
    Claim("reward-models", "Fact-RM ranks held-out hallucination pairs better than a plain RM", "accuracy",
          "fact_rm", "rm", "higher"),
    Claim("ppo", "PPO with the Fact-RM leaves fewer hallucinated captions than with a plain RM",
          "caption_hallucination", "ppo", "ppo-plain-rm", "lower"),
    Claim("ppo", "PPO with the Fact-RM answers yes/no questions better than with a plain RM", "existence_accuracy",
          "ppo", "ppo-plain-rm", "higher"),
    Claim("ppo", "PPO-Lagrangian answers harmful requests unsafely less often than reward-only PPO",
          "unsafe_rate_harmful_cost_model", "safe-ppo", "ppo", "lower"),
    Claim("ppo", "PPO-Lagrangian is more helpful than the start policy (Fact-RM score)", "fact_rm_score",
          "safe-ppo", "start", "higher"),
    Claim("ppo", "PPO-Lagrangian keeps the helpfulness of reward-only PPO (Fact-RM score)", "fact_rm_score",
          "safe-ppo", "ppo", "equal"),
    Claim("ppo", "PPO-Lagrangian keeps the held-out mean cost within the budget", "mean_cost", "safe-ppo", "budget",
          "lower"),
    Claim("ppo", "Safe GRPO-Lagrangian answers harmful requests unsafely less often than reward-only GRPO",
          "unsafe_rate_harmful_cost_model", "safe-grpo", "grpo", "lower"),
    Claim("ppo", "Safe GRPO-Lagrangian keeps the held-out mean cost within the budget", "mean_cost", "safe-grpo",
          "budget", "lower"),
    Claim("ppo", "Safe GRPO-Lagrangian is more helpful than the start policy (Fact-RM score)", "fact_rm_score",
          "safe-grpo", "start", "higher"),
    Claim("ppo", "Safe GRPO-Lagrangian keeps the helpfulness of reward-only GRPO (Fact-RM score)", "fact_rm_score",
          "safe-grpo", "grpo", "equal"),
    Claim("grpo", "GRPO (object F1) hallucinates less than the start policy (CHAIR_i)", "CHAIR_i", "grpo-f1", "start",
          "lower"),
    Claim("grpo", "GRPO (object F1) keeps the start policy's recall", "Recall", "grpo-f1", "start", "equal"),
    Claim("grpo", "GRPO (object F1) answers at greater length than the start policy", "Length (words)", "grpo-f1",
          "start", "higher"),
    Claim("grpo", "GRPO (object F1) hallucinates less than Dense DPO (CHAIR_i)", "CHAIR_i", "grpo-f1", "ddpo", "lower"),
    Claim("grpo", "GRPO (object F1) recalls more objects than Dense DPO", "Recall", "grpo-f1", "ddpo", "higher"),
    Claim("grpo", "GRPO with a yes/no reward answers POPE better than the start policy (F1)", "F1 (mean of splits)",
          "grpo-f1-yesno", "start", "higher"),
    Claim("mdpo", "mDPO's answers depend on the image more than DPO's (log-prob lost per token, corrupted image)",
          "reliance_per_token", "mdpo", "dpo", "higher"),
    Claim("mdpo", "mDPO's reward margin depends on the image more than DPO's (true − corrupted image)",
          "reward_margin_gap", "mdpo", "dpo", "higher"),
    Claim("mdpo", "mDPO answers POPE adversarial better than DPO (F1)", "F1 adversarial", "mdpo", "dpo", "higher"),
    Claim("mdpo", "mDPO keeps plain DPO's caption hallucination (CHAIR_i)", "CHAIR_i", "mdpo", "dpo", "equal"),
    Claim("loop", "On-policy rounds hallucinate less than one offline round (CHAIR_i)", "CHAIR_i", "on-policy",
          "offline", "lower"),
    Claim("loop", "On-policy rounds keep the recall of one offline round", "Recall", "on-policy", "offline", "equal"),
    Claim("loop", "On-policy rounds answer POPE better than one offline round (F1)", "F1 (mean of splits)",
          "on-policy", "offline", "higher"),
    Claim("overoptimisation", "A reward model on 4x the pairs ranks held-out gold pairs better",
          "heldout_accuracy", "rm-large", "rm-small", "higher"),
    Claim("overoptimisation", "An ensemble (mean) ranks held-out gold pairs better than one reward model on the "
          "same pairs", "heldout_accuracy", "ensemble-mean", "rm-small", "higher"),
    Claim("overoptimisation", "More preference data over-optimises less under best-of-n (gold at the "
          "largest n)", "bon_gold_final", "rm-large", "rm-small", "higher"),
    Claim("overoptimisation", "A worst-case ensemble over-optimises less than one reward model on the same data "
          "(best-of-n gold)", "bon_gold_final", "ensemble-worst_case", "rm-small", "higher"),
    Claim("overoptimisation", "An uncertainty-weighted ensemble over-optimises less than one reward model on the "
          "same data (best-of-n gold)", "bon_gold_final", "ensemble-uncertainty_weighted", "rm-small", "higher"),
    Claim("overoptimisation", "A mean ensemble over-optimises less than one reward model on the same data "
          "(best-of-n gold)", "bon_gold_final", "ensemble-mean", "rm-small", "higher"),
    Claim("overoptimisation", "GRPO against a worst-case ensemble ends with a better gold score than against one "
          "reward model", "rl_gold_final", "ensemble-worst_case", "rm-small", "higher"),
    Claim("overoptimisation", "GRPO against an uncertainty-weighted ensemble ends with a better gold score than "
          "against one reward model", "rl_gold_final", "ensemble-uncertainty_weighted", "rm-small", "higher"),
    Claim("overoptimisation", "GRPO against one reward model loses gold from its peak more than against a "
          "worst-case ensemble", "rl_gold_drop", "rm-small", "ensemble-worst_case", "higher"),
    Claim("dpo", "QLoRA matches LoRA on a bf16 base (POPE F1)", "F1 (mean of splits)", "ddpo-qlora",
          "ddpo-lora-bf16", "equal"),
    Claim("dpo", "QLoRA matches LoRA on a bf16 base (CHAIR_s)", "CHAIR_s", "ddpo-qlora", "ddpo-lora-bf16", "equal"),
    Claim("dpo", "QLoRA matches LoRA on an fp32 base (POPE F1)", "F1 (mean of splits)", "ddpo-qlora", "ddpo-lora",
          "equal"),
    Claim("dpo", "QLoRA matches LoRA on an fp32 base (CHAIR_s)", "CHAIR_s", "ddpo-qlora", "ddpo-lora", "equal"),
)


def verdict(arm: dict[str, float], baseline: dict[str, float], metric: str, better: str) -> tuple[float, float, str]:
    """Difference of the means (arm − baseline), twice its standard error, and the verdict.

    With one seed on each side there is no spread to compare against: no verdict."""
    diff = arm[metric] - baseline[metric]
    margin = 2 * math.sqrt(arm[metric + "_std"] ** 2 / arm["seeds"] + baseline[metric + "_std"] ** 2 / baseline["seeds"])
    if max(arm["seeds"], baseline["seeds"]) < 2:
        return diff, margin, "one seed: no verdict"
    if better == "equal":
        return diff, margin, "appeared (equal within noise)" if abs(diff) <= margin else "did not appear"
    signed = -diff if better == "lower" else diff
    if signed > margin:
        return diff, margin, "appeared"
    return diff, margin, "reversed" if signed < -margin else "within noise"


def _rows(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """An experiment's arms over seeds plus its single models (the base, the start policy) and
    limits (a cost budget) as one-seed rows."""
    single = {**result.get("base", {}), **({"start": result["start"]} if "start" in result else {}),
              **result.get("limits", {})}
    rows = {name: {**row, **{k + "_std": 0.0 for k in row}, "seeds": 1} for name, row in single.items()}
    return {**rows, **result.get("summary", {})}


def claim_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim whose two arms were measured, with its difference and verdict."""
    rows = []
    for claim in CLAIMS:
        arms = _rows(results.get(claim.experiment, {}))
        if claim.arm in arms and claim.baseline in arms and all(claim.metric in arms[a] for a in (claim.arm, claim.baseline)):
            diff, margin, word = verdict(arms[claim.arm], arms[claim.baseline], claim.metric, claim.better)
            rows.append({"claim": claim.text, "metric": claim.metric, "arm": claim.arm, "baseline": claim.baseline,
                         "difference": diff, "noise": margin, "verdict": word,
                         "seeds": min(arms[claim.arm]["seeds"], arms[claim.baseline]["seeds"])})
    return rows


def plot_bars(panels: list[tuple[str, list[tuple[str, float, float]]]], path: Path, title: str) -> Path:
    """One panel per metric; a bar per arm with its spread over seeds as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    for ax, (metric, bars) in zip(axes[0], panels):
        labels = [b[0] for b in bars]
        ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=3,
               color=[f"C{i}" for i in range(len(bars))])
        ax.set_xticks(range(len(bars)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(single: dict[str, dict[str, float]], summary: dict[str, dict[str, float]], arms: dict[str, str],
          metrics: dict[str, str]) -> list[tuple[str, list[tuple[str, float, float]]]]:
    panels = []
    for metric, title in metrics.items():
        bars = [(label, row[metric], 0.0) for label, row in single.items()]
        bars += [(label, summary[arm][metric], summary[arm][metric + "_std"]) for arm, label in arms.items()
                 if arm in summary]
        panels.append((title, bars))
    return panels


def _planned_7b_memory() -> str:
    """The same memory question at the size users train: LLaVA-1.5-7B Dense DPO, planned."""
    from mmalign.plan import PlanSettings, architecture_for, estimate_memory

    name, arch = architecture_for("llava-1.5-7b")
    peaks = {mode: estimate_memory(arch, PlanSettings(method="ddpo", mode=mode, batch_size=4, seq_len=448,
                                                      gradient_checkpointing=True), model=name).peak_gib
             for mode in ("qlora", "lora")}
    return (f"At 7B scale `mmalign plan` predicts LLaVA-1.5-7B Dense DPO (batch 4, 448 text tokens, gradient "
            f"checkpointing, LoRA r=64) at {peaks['qlora']:.1f} GiB with QLoRA against {peaks['lora']:.1f} GiB with "
            f"bf16 LoRA ({peaks['lora'] - peaks['qlora']:.1f} GiB less).")


def write_experiments_report(out: str | Path) -> Path:
    """``OUT/report.md`` and bar charts from whichever experiments have results under ``OUT``."""
    out = Path(out)
    results = {name: json.loads((out / name / "results.json").read_text()) for name in EXPERIMENTS
               if (out / name / "results.json").exists()}
    if not results:
        raise FileNotFoundError(f"no experiment results under {out} (expected {', '.join(EXPERIMENTS)}/results.json)")
    lines = ["# The papers' claims in the scene world", ""]
    rows = claim_rows(results)
    if rows:
        lines += ["| claim | metric | seeds | arm − baseline | 2 × std. error | verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['claim']} | {r['metric']} | {r['seeds']:g} | {r['difference']:+.2f} | {r['noise']:.2f} | "
                  f"{r['verdict']} |" for r in rows]
        lines += ["", "Verdict: the difference against twice its standard error over seeds (a rough screen)."]
    if "dpo" in results:
        dpo = results["dpo"]
        arms = {"ddpo-qlora": "Dense DPO, QLoRA", "dpo-qlora": "DPO, QLoRA", "ddpo-norm-qlora": "Dense DPO normalised",
                "ddpo-lora-bf16": "Dense DPO, bf16 LoRA", "ddpo-lora": "Dense DPO, fp32 LoRA"}
        plot_bars(_bars({"base": dpo["base"]["base-4bit"]}, dpo["summary"], arms,
                        {"F1 (mean of splits)": "POPE F1 ↑", "CHAIR_s": "CHAIR_s ↓", "CHAIR_i": "CHAIR_i ↓",
                         "Recall": "CHAIR recall ↑", "weights_MB": "weights MB"}),
                  out / "dpo.png", "Dense DPO vs DPO, QLoRA vs LoRA (held-out scenes)")
        lines += ["", "## 1 and 4. Dense DPO versus plain DPO; QLoRA versus LoRA", "",
                  (out / "dpo" / "results.md").read_text().strip(), "", _planned_7b_memory(), "", "![](dpo.png)"]
    if "reward-models" in results:
        lines += ["", "## 2a. Plain RM versus Fact-RM: held-out pairwise accuracy", "",
                  (out / "reward-models" / "results.md").read_text().strip()]
    if "ppo" in results:
        ppo = results["ppo"]
        arms = {"ppo": "PPO, Fact-RM", "ppo-plain-rm": "PPO, plain RM", "safe-ppo": "PPO-Lagrangian",
                "grpo": "GRPO, Fact-RM", "safe-grpo": "Safe GRPO-Lagrangian"}
        plot_bars(_bars({"start": ppo["start"]}, ppo["summary"], arms,
                        {"caption_hallucination": "caption hallucination % ↓", "existence_accuracy": "yes/no acc. % ↑",
                         "unsafe_rate_harmful_cost_model": "unsafe on harmful % ↓", "fact_rm_score": "Fact-RM score ↑"}),
                  out / "ppo.png", "PPO arms (held-out prompts)")
        lines += ["", "## 2b and 3. PPO with each reward model; reward-only versus Lagrangian PPO and GRPO", "",
                  (out / "ppo" / "results.md").read_text().strip(), "", "![](ppo.png)", "",
                  "![](ppo/curves.png)"]
    if "grpo" in results:
        arms = {"grpo-f1": "GRPO, object F1", "grpo-f1-yesno": "GRPO, object F1 + yes/no",
                "grpo-precision": "GRPO, precision-weighted", "ddpo": "Dense DPO"}
        plot_bars(_bars({"start": results["grpo"]["start"]}, results["grpo"]["summary"], arms,
                        {"F1 (mean of splits)": "POPE F1 ↑", "CHAIR_i": "CHAIR_i ↓", "Recall": "CHAIR recall ↑",
                         "Length (words)": "words"}),
                  out / "grpo.png", "GRPO with verifiable rewards vs Dense DPO (held-out scenes)")
        lines += ["", "## 5. GRPO with the annotations as verifier versus Dense DPO", "",
                  (out / "grpo" / "results.md").read_text().strip(), "", "![](grpo.png)"]
    if "mdpo" in results:
        lines += ["", "## 6. mDPO versus DPO: preferences that depend on the image", "",
                  (out / "mdpo" / "results.md").read_text().strip()]
    if "loop" in results:
        lines += ["", "## 7. On-policy rounds versus one offline round", "",
                  (out / "loop" / "results.md").read_text().strip()]
    if "overoptimisation" in results:
        lines += ["", "## 8. Reward over-optimisation: one reward model versus ensembles", "",
                  (out / "overoptimisation" / "results.md").read_text().strip(), "",
                  "![](overoptimisation/curves.png)"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "claims.json").write_text(json.dumps(rows, indent=1))
    return report


def run_experiments(out: str | Path, seeds: Sequence[int] = (0, 1, 2), experiments: Sequence[str] = EXPERIMENTS,
                    quick: bool = False) -> Path:
    """Run the chosen experiments (resuming whatever is already measured), then write the report."""
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    out = Path(out)
    for name in experiments:
        print(f"== experiment {name}", flush=True)
        if name == "dpo":
            dpo.run_dpo_experiment(out / name, seeds, config=dpo.quick_config() if quick else None)
        elif name == "reward-models":
            reward_models.run_reward_model_experiment(out / name, seeds,
                                                      setting=reward_models.quick_setting() if quick else None)
        elif name == "grpo":
            grpo.run_grpo_experiment(out / name, seeds, setting=grpo.quick_setting() if quick else None)
        elif name == "mdpo":
            mdpo.run_mdpo_experiment(out / name, seeds, setting=mdpo.quick_setting() if quick else None)
        elif name == "loop":
            loop_experiment.run_loop_experiment(out / name, seeds,
                                                setting=loop_experiment.quick_setting() if quick else None)
        elif name == "overoptimisation":
            overoptimisation.run_overoptimisation_experiment(
                out / name, seeds, setting=overoptimisation.quick_setting() if quick else None)
        else:
            ppo.run_ppo_experiment(out / name, seeds, setting=ppo.quick_setting() if quick else None)
    return write_experiments_report(out)
