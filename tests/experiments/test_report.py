"""The experiments report: verdicts computed by hand, tables and charts from the results on disk, the CLI."""

import json
import math

import pytest

from mmalign.experiments import report as experiments


def row(mean: float, std: float, seeds: int = 3, metric: str = "m") -> dict[str, float]:
    return {metric: mean, metric + "_std": std, "seeds": seeds}


@pytest.mark.parametrize(("arm", "baseline", "better", "word"), [
    (row(20.0, 1.0), row(30.0, 2.0), "lower", "appeared"),      # -10 against 2*sqrt(1/3 + 4/3) = 2.58
    (row(29.0, 1.0), row(30.0, 2.0), "lower", "within noise"),
    (row(35.0, 1.0), row(30.0, 2.0), "lower", "reversed"),
    (row(35.0, 1.0), row(30.0, 2.0), "higher", "appeared"),
    (row(31.0, 1.0), row(30.0, 2.0), "equal", "appeared (equal within noise)"),
    (row(40.0, 1.0), row(30.0, 2.0), "equal", "did not appear"),
])
def test_verdict_against_twice_the_standard_error(arm, baseline, better, word):
    diff, margin, verdict = experiments.verdict(arm, baseline, "m", better)
    assert diff == arm["m"] - baseline["m"]
    assert margin == pytest.approx(2 * math.sqrt(1 / 3 + 4 / 3))
    assert verdict == word


def test_verdict_uses_each_arms_own_seed_count():
    _, margin, _ = experiments.verdict(row(1.0, 2.0, seeds=4), row(1.0, 3.0, seeds=1), "m", "lower")
    assert margin == pytest.approx(2 * math.sqrt(4 / 4 + 9 / 1))


def test_one_seed_on_each_side_gets_no_verdict():
    """A single seed has no spread: a 5-point gap between two one-seed arms is not 'appeared'."""
    diff, margin, verdict = experiments.verdict(row(65.0, 0.0, seeds=1), row(60.0, 0.0, seeds=1), "m", "higher")
    assert (diff, margin, verdict) == (5.0, 0.0, "one seed: no verdict")
    assert experiments.verdict(row(65.0, 1.0, seeds=2), row(60.0, 0.0, seeds=1), "m", "higher")[2] == "appeared"


def _write(folder, name, results, table):
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps(results))
    (folder / name / "results.md").write_text(table)


def test_report_gathers_tables_charts_and_verdicts(tmp_path):
    dpo_row = {"F1 (mean of splits)": 60.0, "CHAIR_s": 30.0, "CHAIR_i": 20.0, "Recall": 50.0, "weights_MB": 3.7}
    summary = {"ddpo-qlora": {**{k: v for k, v in dpo_row.items()}, **{k + "_std": 1.0 for k in dpo_row}, "seeds": 3},
               "dpo-qlora": {**{k: v + 10 for k, v in dpo_row.items()}, **{k + "_std": 1.0 for k in dpo_row},
                             "seeds": 3}}
    _write(tmp_path, "dpo", {"base": {"base-4bit": {**dpo_row, "CHAIR_s": 45.0}}, "summary": summary}, "DPO TABLE\n")
    _write(tmp_path, "reward-models", {"summary": {"rm": row(55.0, 1.0, metric="accuracy"),
                                                   "fact_rm": row(50.0, 1.0, metric="accuracy")}}, "RM TABLE\n")
    report = experiments.write_experiments_report(tmp_path)
    text = report.read_text()
    assert "DPO TABLE" in text and "RM TABLE" in text and "![](dpo.png)" in text and "ppo.png" not in text
    # CHAIR_s: 30 vs 40 with std 1 over 3 seeds each -> -10.00 against 2*sqrt(2/3) = 1.63
    assert "| Dense DPO hallucinates less than plain DPO (CHAIR_s) | CHAIR_s | 3 | -10.00 | 1.63 | appeared |" in text
    assert "| -5.00 | 1.63 | reversed |" in text  # the Fact-RM was worse
    assert "GiB with QLoRA against" in text
    assert (tmp_path / "dpo.png").read_bytes()[:4] == b"\x89PNG"
    # the base is one model: its spread is zero and it counts as one seed -> 2*sqrt(1/3) = 1.15
    assert "| CHAIR_s | 1 | -15.00 | 1.15 | appeared |" in text
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert [c["verdict"] for c in claims] == ["appeared", "appeared", "appeared", "reversed", "reversed"]


def test_report_without_results_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        experiments.write_experiments_report(tmp_path)


def test_unknown_experiment_arm_is_refused_before_any_work(tmp_path):
    from mmalign.experiments import dpo as dpo_scene
    from mmalign.experiments import reward_models

    with pytest.raises(ValueError, match="unknown DPO experiment method"):
        dpo_scene.run_dpo_experiment(tmp_path, methods=["ddpo-qlora", "kto"])
    with pytest.raises(ValueError, match="unknown reward-model experiment model"):
        reward_models.run_reward_model_experiment(tmp_path, models=["prm"])
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.run_experiments(tmp_path, experiments=["sft"])
    assert list(tmp_path.iterdir()) == []


def test_mdpo_and_loop_claims_get_verdicts_and_sections(tmp_path):
    mdpo = {"dpo": {**row(0.10, 0.02, metric="reliance_per_token"), **row(0.5, 0.1, metric="reward_margin_gap"),
                    **row(70.0, 1.0, metric="F1 adversarial")},
            "mdpo": {**row(0.30, 0.02, metric="reliance_per_token"), **row(0.6, 0.1, metric="reward_margin_gap"),
                     **row(69.0, 1.0, metric="F1 adversarial")}}
    _write(tmp_path, "mdpo", {"summary": mdpo}, "MDPO TABLE\n")
    loop = {"offline": {**row(20.0, 1.0, metric="CHAIR_i"), **row(70.0, 1.0, metric="Recall")},
            "on-policy": {**row(15.0, 1.0, metric="CHAIR_i"), **row(70.5, 1.0, metric="Recall")}}
    _write(tmp_path, "loop", {"base": {"base": row(21.0, 0.0, 1, metric="CHAIR_i")}, "summary": loop}, "LOOP TABLE\n")
    text = experiments.write_experiments_report(tmp_path).read_text()
    assert "## 6. mDPO versus DPO" in text and "MDPO TABLE" in text and "LOOP TABLE" in text
    verdicts = {c["claim"]: c["verdict"] for c in json.loads((tmp_path / "claims.json").read_text())}
    # reliance +0.20 against 2*sqrt(2*0.02²/3) = 0.033; the margin gap +0.1 against 0.163; F1 -1 against 1.63
    assert verdicts["mDPO's answers depend on the image more than DPO's (log-prob lost per token, corrupted image)"] \
        == "appeared"
    assert verdicts["mDPO's reward margin depends on the image more than DPO's (true − corrupted image)"] \
        == "within noise"
    assert verdicts["mDPO answers POPE adversarial better than DPO (F1)"] == "within noise"
    assert verdicts["On-policy rounds hallucinate less than one offline round (CHAIR_i)"] == "appeared"
    assert verdicts["On-policy rounds keep the recall of one offline round"] == "appeared (equal within noise)"


def test_unknown_mdpo_and_loop_arms_are_refused_before_any_work(tmp_path):
    from mmalign.experiments import loop, mdpo

    with pytest.raises(ValueError, match="unknown mDPO experiment arm"):
        mdpo.run_mdpo_experiment(tmp_path, arms=["ipo"])
    with pytest.raises(ValueError, match="unknown loop experiment arm"):
        loop.run_loop_experiment(tmp_path, arms=["online"])
    assert list(tmp_path.iterdir()) == []


def test_safe_grpo_claims_compare_the_cost_with_the_budget_as_a_fixed_row():
    cols = ("unsafe_rate_harmful_cost_model", "mean_cost", "fact_rm_score")

    def arm(unsafe, cost, score, std=1.0):
        return {**dict(zip(cols, (unsafe, cost, score))), **{c + "_std": std for c in cols}, "seeds": 3}

    ppo_results = {"start": dict(zip(cols, (50.0, -1.0, 0.0))), "limits": {"budget": {"mean_cost": -3.0}},
                   "summary": {"grpo": arm(60.0, -1.0, 2.0), "safe-grpo": arm(10.0, -4.0, 1.9)}}
    rows = {r["claim"]: r for r in experiments.claim_rows({"ppo": ppo_results})}
    budget = rows["Safe GRPO-Lagrangian keeps the held-out mean cost within the budget"]
    # -4 against the fixed -3: the budget has no spread and counts as one seed -> 2*sqrt(1/3) = 1.15
    assert budget["difference"] == -1.0 and budget["noise"] == pytest.approx(2 * math.sqrt(1 / 3))
    assert budget["verdict"] == "within noise" and budget["seeds"] == 1
    unsafe = rows["Safe GRPO-Lagrangian answers harmful requests unsafely less often than reward-only GRPO"]
    assert unsafe["difference"] == -50.0 and unsafe["verdict"] == "appeared"
    assert rows["Safe GRPO-Lagrangian keeps the helpfulness of reward-only GRPO (Fact-RM score)"]["verdict"] == \
        "appeared (equal within noise)"
    assert not any("PPO-Lagrangian" in claim and "Safe GRPO" not in claim for claim in rows)  # no PPO arms measured
