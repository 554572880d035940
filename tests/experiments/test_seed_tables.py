"""The evidence scripts' summaries: means and spreads over seeds, tables that say what was measured."""

import math

import pytest

from mmalign.experiments import ppo as ppo_scene
from mmalign.experiments import reward_models
from mmalign.experiments import seeds as seed_runs


def test_reward_model_summary_over_seeds():
    runs = [{"seed": s, "models": {
        "rm": {"accuracy": a, "accuracy_caption": a + 10, "accuracy_existence": a - 10, "pairs": 10},
        "fact_rm": {"accuracy": a + 5, "accuracy_caption": a + 15, "accuracy_existence": a - 5, "pairs": 10},
        "cost": {"accuracy": 90.0, "sign_accuracy": 80.0, "mean_cost_unsafe": 1.0 + s,
                 "mean_cost_safe": float("nan") if s else -1.0, "pairs": 4},
    }} for s, a in ((0, 60.0), (1, 64.0))]
    summary = seed_runs.summarise(runs)
    assert summary["rm"]["accuracy"] == 62.0 and summary["rm"]["accuracy_std"] == pytest.approx(math.sqrt(8))
    assert summary["cost"]["mean_cost_safe"] == -1.0  # NaN (nothing to measure) is left out, not averaged
    table = reward_models.markdown(summary, [0, 1], reward_models.Setting())
    assert "| plain RM | 62.0 ± 2.8 | 72.0 ± 2.8 | 52.0 ± 2.8 |" in table
    assert "| Fact-RM, facts in the evaluation turn (Fact-RLHF) | 67.0 ± 2.8 |" in table


def test_ppo_table_lists_start_and_every_arm():
    row = dict.fromkeys(ppo_scene.COLUMNS, 1.0)
    runs = [{"seed": 0, "models": {"ppo": row, "ppo-plain-rm": row, "safe-ppo": {**row, "peak_rss_mb": 1234.0}}},
            {"seed": 1, "models": {"ppo": {**row, "mean_cost": 3.0}, "safe-ppo": row}}]
    results = {"setting": {**ppo_scene.Setting().__dict__}, "start": row, "runs": runs,
               "summary": seed_runs.summarise(runs)}
    table = ppo_scene.markdown(results)
    assert "| start (safety-mixed SFT) | - | 1.00 |" in table
    assert "| PPO, Fact-RM, reward only | 2 | 1.00 ± 0.00 |" in table and "2.00 ± 1.41 |" in table
    assert "| PPO, plain RM, reward only | 1 |" in table and "| PPO-Lagrangian, Fact-RM + cost model | 2 |" in table
    assert "1234 MB" in table and "seeds 0, 1" in table


def test_runs_from_several_invocations_merge_by_seed_and_model(tmp_path):
    import json

    (tmp_path / "measured").mkdir()
    for seed, name, accuracy in ((0, "rm", 1.0), (0, "cost", 2.0), (1, "rm", 3.0), (1, "fact_rm_prompt", 4.0)):
        (tmp_path / "measured" / f"seed{seed}-{name}.json").write_text(json.dumps({"accuracy": accuracy}))
    runs = seed_runs.load_runs(tmp_path)
    assert runs == [{"seed": 0, "models": {"cost": {"accuracy": 2.0}, "rm": {"accuracy": 1.0}}},
                    {"seed": 1, "models": {"fact_rm_prompt": {"accuracy": 4.0}, "rm": {"accuracy": 3.0}}}]
    summary = seed_runs.summarise(runs)
    assert summary["rm"]["seeds"] == 2 and summary["cost"]["seeds"] == 1 and summary["rm"]["accuracy"] == 2.0


def test_dpo_scene_table_over_seeds(tmp_path):
    import json

    from mmalign.demo import DemoConfig
    from mmalign.experiments import dpo as dpo_scene

    headline = {"F1 (mean of splits)": 60.0, "Accuracy (mean)": 55.0, "CHAIR_s": 40.0, "CHAIR_i": 20.0,
                "Recall": 60.0, "Length (words)": 10.0, "weights_MB": 4.0}
    (tmp_path / "measured").mkdir()
    for seed, chair in ((0, 30.0), (1, 34.0)):
        for method in ("ddpo-qlora", "dpo-qlora"):
            row = {**headline, "CHAIR_s": chair + (5.0 if method == "dpo-qlora" else 0.0)}
            (tmp_path / "measured" / f"seed{seed}-{method}.json").write_text(json.dumps(row))
    runs = seed_runs.load_runs(tmp_path)
    assert [sorted(r["models"]) for r in runs] == [["ddpo-qlora", "dpo-qlora"]] * 2
    table = dpo_scene.markdown(seed_runs.summarise(runs), {"base-4bit": headline}, [0, 1], DemoConfig())
    assert "| base-4bit | - | 60.0 | 55.0 | 40.0 | 20.0 | 60.0 | 10.0 | 4.0 |" in table
    assert "| ddpo-qlora | 2 | 60.0 ± 0.0 | 55.0 ± 0.0 | 32.0 ± 2.8 |" in table
    assert "| dpo-qlora | 2 | 60.0 ± 0.0 | 55.0 ± 0.0 | 37.0 ± 2.8 |" in table
    assert "ddpo-lora" not in table  # methods not run are left out


def test_ppo_curves_average_seeds_per_iteration():
    logs = [[{"step": 1, "cost": -1.0, "kl": 0.0, "note": "x"}, {"step": 2, "cost": -3.0}],
            [{"step": 1, "cost": -2.0, "kl": 1.0}, {"reward": 5.0}]]  # an entry without a step is not an iteration
    assert ppo_scene.mean_logs(logs) == [{"step": 1, "cost": -1.5, "kl": 0.5}, {"step": 2, "cost": -3.0}]
