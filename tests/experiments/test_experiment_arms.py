"""Experiments measure their arms: tiny real runs of the DPO, GRPO, mDPO and loop experiments."""

import json

import pytest


@pytest.mark.slow
def test_dpo_experiment_measures_each_arm_once_with_the_base_of_its_precision(tmp_path):
    from mmalign.experiments.dpo import quick_config, run_dpo_experiment

    config = quick_config()
    results = run_dpo_experiment(tmp_path, seeds=[0], methods=["ddpo-qlora", "ddpo-lora-bf16"], config=config)
    assert sorted(results["base"]) == ["base-4bit", "base-bf16"]  # no fp32 arm ran, so no fp32 base row
    assert results["base"]["base-bf16"]["weights_MB"] > results["base"]["base-4bit"]["weights_MB"]
    rows = results["runs"][0]["models"]
    assert sorted(rows) == ["ddpo-lora-bf16", "ddpo-qlora"]
    for row in rows.values():
        assert {"F1 (mean of splits)", "CHAIR_s", "train_seconds", "weights_MB"} <= set(row)
    table = (tmp_path / "results.md").read_text()
    assert "| ddpo-qlora | 1 |" in table and "| base-bf16 | - |" in table and "| dpo-qlora |" not in table
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "measured").iterdir()}
    again = run_dpo_experiment(tmp_path, seeds=[0], methods=["ddpo-qlora"], config=config)  # resumes
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "measured").iterdir()} == stamps
    assert again["summary"] == results["summary"]


@pytest.mark.slow
def test_grpo_experiment_measures_its_arms_and_states_the_claims(tmp_path):
    from mmalign.experiments import grpo
    from mmalign.experiments.report import write_experiments_report

    results = grpo.run_grpo_experiment(tmp_path / "grpo", seeds=[0], arms=["grpo-f1"], setting=grpo.quick_setting())
    row = results["runs"][0]["models"]["grpo-f1"]
    assert {"CHAIR_i", "Recall", "Length (words)", "train_seconds", "final_reward"} <= set(row)
    assert {"CHAIR_i", "Recall"} <= set(results["start"])
    table = (tmp_path / "grpo" / "results.md").read_text()
    assert "| grpo-f1 | 1 |" in table and "| ddpo |" not in table
    write_experiments_report(tmp_path)
    claims = json.loads((tmp_path / "claims.json").read_text())
    against_start = [c for c in claims if c["arm"] == "grpo-f1" and c["baseline"] == "start"]
    assert len(against_start) == 3  # the claims against Dense DPO wait for its arm
    chair = next(c for c in against_start if c["metric"] == "CHAIR_i")
    assert chair["difference"] == pytest.approx(row["CHAIR_i"] - results["start"]["CHAIR_i"])


@pytest.mark.slow
def test_mdpo_experiment_measures_image_reliance_of_each_arm(tmp_path):
    from mmalign.experiments import mdpo

    setting = mdpo.Setting(feedback_scenes=3, eval_scenes=2, reliance_scenes=3, epochs=1)
    results = mdpo.run_mdpo_experiment(tmp_path, seeds=[0], arms=["mdpo"], setting=setting)
    row = results["runs"][0]["models"]["mdpo"]
    assert row["reward_margin_gap"] == pytest.approx(row["reward_margin_true"] - row["reward_margin_corrupted"])
    reliance = json.loads((tmp_path / "runs" / "mdpo-seed0" / "image-reliance" / "report.json").read_text())
    assert row["reliance_per_token"] == reliance["metrics"]["conditions"]["corrupted"]["reliance_per_token"]
    assert {"F1 adversarial", "CHAIR_i"} <= set(row) and "| mdpo |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_loop_experiment_reports_each_round_and_shares_the_base(tmp_path):
    from mmalign.experiments import loop

    setting = loop.Setting(rounds=2, scenes_per_round=2, eval_scenes=2, epochs=1, batch_size=64)
    results = loop.run_loop_experiment(tmp_path, seeds=[0], setting=setting)
    on_policy, offline = (results["runs"][0]["models"][arm] for arm in ("on-policy", "offline"))
    rounds = json.loads((tmp_path / "runs" / "on-policy-seed0" / "report.json").read_text())["rounds"]
    assert on_policy["round2 CHAIR_i"] == rounds[2]["CHAIR_i"] == on_policy["CHAIR_i"]
    assert "round2 CHAIR_i" not in offline and offline["pairs"] > 0
    assert results["base"]["base"] == json.loads((tmp_path / "base-metrics.json").read_text())  # measured once
    assert "On-policy arm per round" in (tmp_path / "results.md").read_text()
