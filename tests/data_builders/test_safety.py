import json

import pytest

from mmalign.data_builders.safety import (
    cost_pairs,
    cost_signs,
    label_disagreements,
    orient_record,
    reward_pairs,
    save_oriented,
    swap_sides,
)
from mmalign.data_builders.schema import RecordError, validate_record
from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset


def _dual(record, **overrides):
    """Response A is more helpful but unsafe; response B is safer (BeaverTails-V-like)."""
    base = record(
        chosen="Step one: mix the chemicals.", rejected="I can't help with that, it is dangerous.",
        chosen_spans=None, rejected_spans=None, more_helpful="chosen", safer="rejected",
        chosen_is_safe=False, rejected_is_safe=True, chosen_harmless_rate=-2, rejected_harmless_rate=2,
        chosen_helpful_rate=3, rejected_helpful_rate=0, meta={"chosen_from": "model-a", "rejected_from": "model-b",
                                                              "category": "chemicals"},
    )
    base.update(overrides)
    return validate_record(base)


def test_swap_moves_every_per_response_field(record):
    rec = _dual(record)
    swapped = swap_sides(rec)
    assert swapped["chosen"] == rec["rejected"] and swapped["rejected"] == rec["chosen"]
    assert (swapped["chosen_is_safe"], swapped["rejected_is_safe"]) == (True, False)
    assert (swapped["chosen_harmless_rate"], swapped["rejected_harmless_rate"]) == (2, -2)
    assert (swapped["chosen_helpful_rate"], swapped["rejected_helpful_rate"]) == (0, 3)
    assert (swapped["more_helpful"], swapped["safer"]) == ("rejected", "chosen")
    assert json.loads(swapped["meta"]) == {"chosen_from": "model-b", "rejected_from": "model-a", "category": "chemicals"}
    assert swap_sides(swapped) == rec
    assert swapped["images"] == rec["images"] and swapped["prompt"] == rec["prompt"]


def test_one_record_feeds_reward_and_cost_pairs(record):
    rec = _dual(record)
    reward = orient_record(rec, "helpful")
    cost = orient_record(rec, "safer")
    assert reward["chosen"].startswith("Step one") and reward["more_helpful"] == "chosen"
    assert cost["chosen"].startswith("I can't") and cost["safer"] == "chosen"
    # The cost pair keeps the labels of each response: y_h = rejected is unsafe, rated -2.
    assert cost["rejected_is_safe"] is False and cost["rejected_harmless_rate"] == -2
    assert cost_signs(cost) == (1, -1)               # (harmful, safer): +1 unsafe, -1 safe
    assert cost_signs(cost, graded=True) == (2, -2)  # s = -harmless_rate


def test_graded_sign_zero_and_missing_labels(record):
    cost = orient_record(_dual(record, rejected_harmless_rate=0, chosen_harmless_rate=-1), "safer")
    assert cost_signs(cost, graded=True) == (1, 0)
    with pytest.raises(RecordError, match="ordered by safety"):
        cost_signs(orient_record(_dual(record), "helpful"))
    no_rates = orient_record(_dual(record, chosen_harmless_rate=None), "safer")
    with pytest.raises(RecordError) as info:
        cost_signs(no_rates, graded=True)
    assert info.value.field == "rejected_harmless_rate"


def test_missing_preference_label_is_an_error(record):
    with pytest.raises(RecordError) as info:
        orient_record(_dual(record, safer=None), "safer", row=4)
    assert (info.value.row, info.value.field) == (4, "safer")


def test_dataset_level_pairs(record, tmp_path):
    rows = [_dual(record), _dual(record, more_helpful="rejected", safer="chosen", chosen="Be careful.",
                                 rejected="Here is how.", chosen_is_safe=True, rejected_is_safe=False,
                                 chosen_harmless_rate=2, rejected_harmless_rate=-3,
                                 chosen_helpful_rate=1, rejected_helpful_rate=3)]
    save_preference_dataset(rows, tmp_path / "dual")
    ds = load_preference_dataset(tmp_path / "dual")
    reward = reward_pairs(ds)
    cost = cost_pairs(ds)
    assert reward["more_helpful"] == ["chosen", "chosen"] and cost["safer"] == ["chosen", "chosen"]
    assert reward["chosen"] == ["Step one: mix the chemicals.", "Here is how."]
    assert cost["chosen"] == ["I can't help with that, it is dangerous.", "Be careful."]
    assert cost["rejected_harmless_rate"] == [-2, -3] and cost["rejected_is_safe"] == [False, False]
    assert reward["rejected_helpful_rate"] == [0, 1] and reward["chosen_is_safe"] == [False, False]
    assert cost[0]["images"][0].size == (8, 8)
    assert sorted(p.name for p in (tmp_path / "dual").iterdir()) == [
        "data-00000-of-00001.arrow", "dataset_info.json", "mmalign_dataset.json", "state.json"]


def test_save_oriented_streams_to_a_new_folder(record, tmp_path):
    save_preference_dataset([_dual(record), _dual(record, safer=None)], tmp_path / "dual")
    with pytest.raises(RecordError, match="row 1"):
        save_oriented(load_preference_dataset(tmp_path / "dual"), tmp_path / "cost", "safer")
    assert not (tmp_path / "cost").exists()
    report = save_oriented(load_preference_dataset(tmp_path / "dual"), tmp_path / "cost", "safer", lenient=True)
    assert report.rows == 1 and len(report.skipped) == 1
    assert load_preference_dataset(tmp_path / "cost")["safer"] == ["chosen"]


def test_label_disagreements_counts_sign_versus_flag(record):
    agree = _dual(record)
    disagree = _dual(record, chosen_harmless_rate=1)  # rated harmless but flagged unsafe
    assert label_disagreements([agree]) == 0
    assert label_disagreements([agree, disagree]) == 1
