"""On-policy rounds against one offline round in the scene world, same pairs budget and steps.

RLAIF-V and OPA-DPO report that preference pairs built from the current policy's own answers
keep helping over rounds, while one round of pairs from the start policy stops early. Arms,
each from the shipped scene VLM with the demo's Dense-DPO recipe (:class:`mmalign.demo.DemoConfig`):

- ``on-policy``: ``rounds`` rounds of ``scenes_per_round`` feedback scenes each; round k's
  pairs come from round k−1's policy and its reference is that policy
  (:func:`mmalign.loop.run_loop` with scene feedback);
- ``offline``: one round on all ``rounds × scenes_per_round`` scenes, pairs from the start policy.

Both see the same scenes and train the same epochs over them (so about the same steps), and
are evaluated on the same held-out scenes (POPE, CHAIR); the on-policy arm after every round.
Run with ``mmalign experiments loop --out DIR``; every round and (seed, arm) result is kept
under ``OUT`` and reused, so a stopped run resumes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmalign.experiments import dpo
from mmalign.experiments.seeds import load_runs, measure_missing, summarise

ARMS = ("on-policy", "offline")
METRICS = dpo.METRICS


@dataclass
class Setting:
    """The budget: rounds × scenes per round feedback scenes in both arms, the demo's training knobs."""

    rounds: int = 3
    scenes_per_round: int = 40
    eval_scenes: int = 50
    epochs: float = 2.0
    learning_rate: float = 1e-3
    batch_size: int = 16

    def training(self, seed: int) -> dict[str, Any]:
        return {"loss_type": "ddpo", "gamma": 5.0, "beta": 0.1, "sft_weight": 1.0, "seed": seed,
                "learning_rate": self.learning_rate, "num_train_epochs": self.epochs,
                "per_device_train_batch_size": self.batch_size, "per_device_eval_batch_size": 32, "max_length": 512}


def quick_setting() -> Setting:
    """Two rounds of a few scenes (a smoke run, not evidence)."""
    return Setting(rounds=2, scenes_per_round=4, eval_scenes=4, epochs=1, batch_size=8)


def run_arm(setting: Setting, arm: str, seed: int, out: Path) -> dict[str, Any]:
    """One (arm, seed): the loop's metrics after its last round, and the on-policy arm's per round."""
    from mmalign.loop import LoopConfig, run_loop

    on_policy = arm == "on-policy"
    config = LoopConfig(output_dir=str(out / "runs" / f"{arm}-seed{seed}"),
                        rounds=setting.rounds if on_policy else 1,
                        prompts_per_round=setting.scenes_per_round * (1 if on_policy else setting.rounds),
                        eval_scenes=setting.eval_scenes, training=setting.training(seed))
    shared_base, run_base = out / "base-metrics.json", Path(config.output_dir) / "base-metrics.json"
    if shared_base.exists() and not run_base.exists():  # the same base on the same scenes: measured once
        run_base.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_base, run_base)
    rounds = run_loop(config, progress=None).rounds
    if not shared_base.exists():
        shutil.copyfile(run_base, shared_base)
    result = {**{k: v for k, v in rounds[-1].items() if isinstance(v, float)},
              "pairs": sum(r.get("records", 0) for r in rounds)}
    for row in rounds[1:]:  # per round: the numbers the claim is about
        for key in ("CHAIR_i", "Recall", "Length (words)", "F1 (mean of splits)"):
            result[f"round{row['round']} {key}"] = row[key]
    result["base"] = {k: v for k, v in rounds[0].items() if isinstance(v, float)}
    return result


def markdown(summary: dict[str, dict[str, float]], setting: Setting, seeds: list[int]) -> str:
    def cell(row: dict[str, float], key: str) -> str:
        if key not in row:
            return "-"
        return f"{row[key]:.1f} ± {row.get(key + '_std', 0.0):.1f}"

    lines = [f"{setting.rounds} rounds × {setting.scenes_per_round} feedback scenes (on-policy) against one round of "
             f"{setting.rounds * setting.scenes_per_round} scenes (offline); {setting.eval_scenes} held-out scenes; "
             f"seeds {', '.join(map(str, seeds))} (mean ± std); Dense DPO, lr {setting.learning_rate:g}, "
             f"{setting.epochs:g} epochs per round's pairs.", "",
             "| arm | pairs | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for arm in ARMS:
        if arm in summary:
            row = summary[arm]
            lines.append(f"| {arm} | {cell(row, 'pairs')} | " + " | ".join(cell(row, k) for k, _ in METRICS) + " |")
    if "on-policy" in summary:
        row = summary["on-policy"]
        lines += ["", "On-policy arm per round:", "", "| round | CHAIR_i | recall | words | POPE F1 |",
                  "|---|---|---|---|---|"]
        for k in range(1, setting.rounds + 1):
            lines.append(f"| {k} | " + " | ".join(cell(row, f"round{k} {key}") for key in
                                                   ("CHAIR_i", "Recall", "Length (words)", "F1 (mean of splits)")) + " |")
    return "\n".join(lines) + "\n"


def run_loop_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2), arms: Sequence[str] = ARMS,
                        setting: Setting | None = None) -> dict[str, Any]:
    """Measure every (seed, arm) not measured yet; returns ``results.json``'s content."""
    setting = setting or Setting()
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown loop experiment arm(s) {unknown}; choose from {list(ARMS)}")
    out = Path(out)
    measure_missing(out, "loop", seeds, arms, "rounds of feedback, DPO and evaluation",
                    lambda seed, arm: run_arm(setting, arm, seed, out))
    runs = load_runs(out)
    base = next((m["base"] for r in runs for m in r["models"].values()), {})
    flat = [{**r, "models": {a: {k: v for k, v in m.items() if k != "base"} for a, m in r["models"].items()}}
            for r in runs]
    results = {"setting": asdict(setting), "base": {"base": base} if base else {}, "runs": runs,
               "summary": summarise(flat)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results["summary"], setting, [r["seed"] for r in runs]))
    return results

