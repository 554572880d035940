"""POPE: official and strict parsing, metrics, the key join, data versions."""

import json
import random

import pytest

from mmalign.benchmarks.pope import (
    PopeBenchmark,
    PopeConfig,
    check_data_version,
    detect_data_version,
    load_pope,
    parse_official,
    parse_strict,
    pope_metrics,
    run_pope,
)


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("NO", "yes"),  # only "No", "no", "not" count
        ("No!", "yes"),  # "No!" is not the token "No"
        ("don't", "yes"),
        ("", "yes"),
        ("No, there is not.", "no"),
        ("no.", "no"),
        ("Yes. No", "yes"),  # only the text before the first "."
        ("There is no dog in the image.", "no"),
        ("not sure", "no"),
        ("Not sure", "yes"),
        ("No\nthere is none", "yes"),  # split on spaces only, as the official script
    ],
)
def test_official_parsing(answer, parsed):
    assert parse_official(answer) == parsed


@pytest.mark.parametrize(
    "answer, parsed",
    [("Yes", "yes"), ("NO", "no"), ("No!", "no"), ("yes, there is a dog", "yes"),
     ("don't", "unknown"), ("", "unknown"), ("There is a dog.", "unknown"), ("Maybe.", "unknown")],
)
def test_strict_parsing(answer, parsed):
    assert parse_strict(answer) == parsed


def test_metrics_by_hand():
    labels = ["yes", "yes", "no", "no", "yes"]
    predictions = ["yes", "no", "yes", "no", "unknown"]
    m = pope_metrics(labels, predictions)
    # tp=1 fp=1 tn=1 fn=2 (the "no" and the unknown on yes questions)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["unknown"]) == (1, 1, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(40.0)
    assert m["precision"] == pytest.approx(50.0)
    assert m["recall"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(40.0)
    assert m["yes_ratio"] == pytest.approx(40.0)  # predicted yes, not labels


def answers_for(questions, texts):
    return [{"question_id": q.question_id, "split": q.split, "text": t} for q, t in zip(questions, texts)]


# random:  labels yes no yes no -> answers Yes, No, No, Yes  -> tp1 fp1 tn1 fn1
# popular: labels yes no yes no -> answers Yes, No., yes, NO -> official: yes no yes yes -> tp2 fp1 tn1
TEXTS = ["Yes", "No", "No", "Yes", "Yes", "No.", "yes", "NO"]


def test_scores_each_split_and_the_mean_f1(pope_dir):
    bench = PopeBenchmark(PopeConfig(pope_dir))
    result = bench.score(answers_for(bench.questions, TEXTS), None)
    random_split, popular = result.metrics["splits"]["random"], result.metrics["splits"]["popular"]
    assert random_split["accuracy"] == pytest.approx(50.0) and random_split["f1"] == pytest.approx(50.0)
    assert popular["accuracy"] == pytest.approx(75.0)
    assert popular["precision"] == pytest.approx(200 / 3) and popular["recall"] == pytest.approx(100.0)
    assert popular["f1"] == pytest.approx(80.0)
    assert popular["yes_ratio"] == pytest.approx(75.0)
    assert result.headline["F1 (mean of splits)"] == pytest.approx(65.0)
    assert result.protocol["parsing"] == "official" and result.protocol["data_version"] == "custom"


def test_strict_mode_changes_the_numbers(pope_dir):
    bench = PopeBenchmark(PopeConfig(pope_dir, parsing="strict"))
    popular = bench.score(answers_for(bench.questions, TEXTS), None).metrics["splits"]["popular"]
    assert popular["accuracy"] == pytest.approx(100.0)  # "NO" is now a no


def test_answers_are_joined_by_key_not_position(pope_dir, tmp_path):
    bench = PopeBenchmark(PopeConfig(pope_dir))
    answers = answers_for(bench.questions, TEXTS)
    shuffled = answers[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != answers
    path = tmp_path / "shuffled.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in shuffled))
    in_order = run_pope(PopeConfig(pope_dir), answers=answers, progress=False)
    from_file = run_pope(PopeConfig(pope_dir), answers=path, progress=False)
    assert from_file.metrics == in_order.metrics


def test_one_answers_file_per_split(pope_dir, tmp_path):
    bench = PopeBenchmark(PopeConfig(pope_dir))
    files = {}
    for split in ("random", "popular"):
        rows = [{"question_id": a["question_id"], "text": a["text"]}
                for a in answers_for(bench.questions, TEXTS) if a["split"] == split]
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    result = run_pope(PopeConfig(pope_dir), answers=files, progress=False)
    assert result.headline["F1 (mean of splits)"] == pytest.approx(65.0)


def test_join_errors_name_the_record(pope_dir):
    bench = PopeBenchmark(PopeConfig(pope_dir))
    good = answers_for(bench.questions, TEXTS)
    with pytest.raises(ValueError, match=r"answers record 0: question_id 1 is in several splits"):
        bench.score([{"question_id": 1, "text": "Yes"}], None)
    with pytest.raises(ValueError, match=r"answers record 8: there is no POPE question random/99"):
        bench.score(good + [{"question_id": 99, "split": "random", "text": "Yes"}], None)
    with pytest.raises(ValueError, match=r"answers record 8: a second answer for random/1"):
        bench.score(good + [good[0]], None)
    with pytest.raises(ValueError, match=r"no answer for 1 POPE question\(s\): popular/4"):
        bench.score(good[:-1], None)
    with pytest.raises(ValueError, match=r"answers record 0: missing field 'question_id'"):
        bench.score([{"text": "Yes"}], None)


def test_unique_ids_need_no_split(pope_dir):
    bench = PopeBenchmark(PopeConfig(pope_dir, splits=["random"]))
    answers = [{"question_id": q.question_id, "text": "Yes"} for q in bench.questions]
    assert bench.score(answers, None).metrics["splits"]["random"]["yes_ratio"] == pytest.approx(100.0)


def test_combined_file_with_category_field(tmp_path, files):
    rows = [{"question_id": i, "image": "a.jpg", "text": "Is there a dog?", "label": lab, "category": cat}
            for i, (lab, cat) in enumerate([("yes", "random"), ("no", "random"), ("yes", "adversarial")])]
    questions = load_pope(files.jsonl(tmp_path / "llava_pope_test.jsonl", rows))
    assert [(q.split, q.label) for q in questions] == [("random", "yes"), ("random", "no"), ("adversarial", "yes")]


def test_bad_question_records_are_named(tmp_path, files):
    path = files.jsonl(tmp_path / "coco_pope_random.json",
                       [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}])
    with pytest.raises(ValueError, match=r"coco_pope_random.json record 0: field 'label' must be 'yes' or 'no'"):
        load_pope(path)


def test_data_versions():
    assert detect_data_version({"random": 2910, "popular": 3000, "adversarial": 3000}) == "llava-1.5"
    assert detect_data_version({"random": 3000, "popular": 3000, "adversarial": 3000}) == "current"
    assert detect_data_version({"random": 4}) == "custom"
    assert check_data_version("llava-1.5", {"random": 2910}) == "llava-1.5"
    with pytest.raises(ValueError, match="mixing data versions"):
        check_data_version("llava-1.5", {"random": 3000})
    with pytest.raises(ValueError, match="mixing data versions"):
        check_data_version("current", {"random": 2910, "popular": 3000})


def test_generation_with_a_tiny_model(pope_dir, tiny_llava, tiny_llava_dir, tmp_path):
    from mmalign.benchmarks.runner import GenerationConfig

    out = tmp_path / "run"
    result = run_pope(PopeConfig(pope_dir, image_dir=tmp_path / "val2014"), adapter=tiny_llava, out=out,
                      generation=GenerationConfig(max_new_tokens=3, batch_size=3), progress=False)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [(r["split"], r["question_id"]) for r in rows] == [(q[0], q[1]) for q in
                                                            [("random", i) for i in (1, 2, 3, 4)] +
                                                            [("popular", i) for i in (1, 2, 3, 4)]]
    assert rows[0]["prompt"].endswith("\nAnswer the question using a single word or phrase.")
    assert result.protocol["decoding"]["max_new_tokens"] == 3
    assert result.protocol["prompt_suffix"] == "\nAnswer the question using a single word or phrase."
    assert result.model == tiny_llava_dir.name  # the checkpoint folder, not the family's card
    again = run_pope(PopeConfig(pope_dir), answers=out / "answers.jsonl", progress=False)
    assert again.metrics == result.metrics
