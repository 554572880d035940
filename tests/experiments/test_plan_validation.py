"""The planner stays close to a measured peak (the validation script's smallest kind of case)."""

from mmalign.experiments.perf.plan_validation import Case, build_model, measure, predict


def test_predicted_peak_is_within_fifteen_percent_of_the_measured_one(tmp_path):
    case = Case(hidden=128, layers=2, batch=2, prompt_words=30, response_words=30, checkpointing=False,
                vocab=2048, lora_r=4)
    folder = build_model(case, tmp_path / "model")
    measured = measure(case, folder)
    assert measured["image_tokens"] == 64 and measured["response_tokens"] == 31  # 30 words + end of turn
    plan = predict(case, folder, measured)
    assert 0.85 < plan.peak_bytes / measured["peak"] < 1.15
    assert measured["by_category"]["act"] > 0 and measured["by_category"]["opt"] > 0
