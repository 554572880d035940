"""Answers made by other tools, scored as they come: LLaVA's model_vqa_loader files (against
both LLaVA POPE layouts), LLaVA-style caption files, lmms-eval --log_samples records.

The fixtures are written here by hand in the public formats. The expected numbers are
worked out by hand with the other tools' own rules: LLaVA's eval_pope.py (first sentence,
commas dropped, "no" if a space-separated token is exactly "No", "no" or "not") and the
official CHAIR script (WordNet lemmas, the official synonym list).
"""

import json

import pytest

from mmalign.benchmarks.answers import detect_format, load_answers, normalize_answers
from mmalign.benchmarks.chair import ChairConfig, run_chair
from mmalign.benchmarks.pope import PopeConfig, run_pope
from mmalign.cli import main

from .conftest import pope_rows, write_jsonl

SUFFIX = "\nAnswer the question using a single word or phrase."

# Per-split question files as POPE and LLaVA ship them: ids restart at 1 in each split.
ADVERSARIAL = [(1, "COCO_val2014_000000000001.jpg", "dog", "yes"), (2, "COCO_val2014_000000000001.jpg", "person", "no"),
               (3, "COCO_val2014_000000000002.jpg", "car", "yes"), (4, "COCO_val2014_000000000002.jpg", "chair", "no")]
RANDOM = [(1, "COCO_val2014_000000000001.jpg", "dog", "yes"), (2, "COCO_val2014_000000000001.jpg", "cat", "no"),
          (3, "COCO_val2014_000000000002.jpg", "car", "yes"), (4, "COCO_val2014_000000000002.jpg", "kite", "no")]

# The model's answers, in question order of each split, and what eval_pope.py makes of them.
ADVERSARIAL_ANSWERS = [
    "Yes",                      # yes, label yes: TP
    "No, there is no person.",  # "No" -> no, label no: TN
    "There is not a car.",      # "not" -> no, label yes: FN
    "NO",                       # not a "No"/"no" token -> yes, label no: FP
]
RANDOM_ANSWERS = [
    "Yes. No",                  # only "Yes" before the first "." -> yes: TP
    "no",                       # TN
    "Yes, a car is there.",     # TP
    "I do not see a kite",      # "not" -> no: TN
]
# adversarial: TP=FP=TN=FN=1 -> accuracy, precision, recall, F1, yes-ratio all 50;
# random: TP=2, TN=2 -> accuracy, precision, recall, F1 100, yes-ratio 50; mean F1 75.
EXPECTED = {
    "adversarial": {"accuracy": 50.0, "precision": 50.0, "recall": 50.0, "f1": 50.0, "yes_ratio": 50.0},
    "random": {"accuracy": 100.0, "precision": 100.0, "recall": 100.0, "f1": 100.0, "yes_ratio": 50.0},
}


@pytest.fixture
def pope_folder(tmp_path):
    folder = tmp_path / "coco"
    folder.mkdir()
    write_jsonl(folder / "coco_pope_adversarial.json", pope_rows(ADVERSARIAL))
    write_jsonl(folder / "coco_pope_random.json", pope_rows(RANDOM))
    return folder


@pytest.fixture
def llava_pope_test(tmp_path):
    """LLaVA's combined question file: no labels, a category, ids unique over the splits
    (adversarial 1-4, then random 5-8), the short-answer instruction in the text."""
    rows = []
    for split, questions in (("adversarial", ADVERSARIAL), ("random", RANDOM)):
        for _, image, obj, _ in questions:
            rows.append({"question_id": len(rows) + 1, "image": image,
                         "text": f"Is there a {obj} in the image?{SUFFIX}", "category": split})
    return write_jsonl(tmp_path / "llava_pope_test.jsonl", rows)


def llava_answer(question_id, prompt, text):
    """One line of LLaVA's model_vqa_loader answers file."""
    return {"question_id": question_id, "prompt": prompt, "text": text,
            "answer_id": f"ans{question_id:04d}", "model_id": "llava-v1.5-7b", "metadata": {}}


def assert_expected(result):
    for split, metrics in EXPECTED.items():
        for name, value in metrics.items():
            assert result.metrics["splits"][split][name] == pytest.approx(value), (split, name)
    assert result.metrics["mean_f1"] == pytest.approx(75.0)


# --------------------------------------------------------------------------- POPE, LLaVA


def test_llava_answers_to_the_combined_file_against_the_per_split_files(pope_folder, llava_pope_test, tmp_path):
    questions = [json.loads(line) for line in llava_pope_test.read_text().splitlines()]
    texts = ADVERSARIAL_ANSWERS + RANDOM_ANSWERS
    rows = [llava_answer(q["question_id"], q["text"], t) for q, t in zip(questions, texts)]
    answers = write_jsonl(tmp_path / "llava-v1.5-7b.jsonl", rows[::-1])  # order does not matter
    result = run_pope(PopeConfig(pope_folder, llava_questions=llava_pope_test), answers=answers)
    assert_expected(result)
    assert result.protocol["answers_format"] == "llava"


def test_llava_answers_per_split_file_whose_ids_restart(pope_folder, tmp_path):
    adversarial = write_jsonl(tmp_path / "adv.jsonl", [llava_answer(i + 1, "q", t) for i, t in enumerate(ADVERSARIAL_ANSWERS)])
    random = write_jsonl(tmp_path / "rand.jsonl", [llava_answer(i + 1, "q", t) for i, t in enumerate(RANDOM_ANSWERS)])
    result = run_pope(PopeConfig(pope_folder), answers={"adversarial": adversarial, "random": random},
                      answers_format="llava")
    assert_expected(result)


def test_the_combined_file_as_questions_says_where_the_labels_are(llava_pope_test):
    with pytest.raises(ValueError, match=r"llava_pope_test.jsonl record 0: missing field 'label': LLaVA's "
                                         r"combined llava_pope_test.jsonl has no labels"):
        run_pope(PopeConfig(llava_pope_test), answers=[])


def test_a_combined_file_from_another_pope_version_is_refused(pope_folder, llava_pope_test, tmp_path):
    rows = [json.loads(line) for line in llava_pope_test.read_text().splitlines()]
    rows[5]["image"] = "COCO_val2014_000000000099.jpg"  # random question 2
    other = write_jsonl(tmp_path / "other.jsonl", rows)
    with pytest.raises(ValueError, match=r"other.jsonl record 5: image 'COCO_val2014_000000000099.jpg', but "
                                         r"question 2 of split 'random' \(random/2\)"):
        run_pope(PopeConfig(pope_folder, llava_questions=other), answers=[])


def test_a_llava_record_without_text_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"a.jsonl record 1: missing field 'text' \(or 'caption'\)"):
        load_answers(write_jsonl(tmp_path / "a.jsonl", [llava_answer(1, "q", "Yes"), {"question_id": 2}]), "llava")


# --------------------------------------------------------------------------- POPE, lmms-eval


def lmms_eval_pope_sample(doc_id, split, question_id, obj, label, text):
    """One --log_samples record of lmms-eval's pope_adv / pope_random tasks (the doc without
    its image, which lmms-eval does not log)."""
    scored = {"question_id": str(question_id), "score": float(text.lower().strip() == label),
              "prediction": text.lower().strip(), "ground_truth": label}
    return {
        "doc_id": doc_id,
        "doc": {"id": f"{split}-{question_id}", "question_id": str(question_id),
                "question": f"Is there a {obj} in the image?", "answer": label, "category": split},
        "target": label,
        "arguments": [[f"Is there a {obj} in the image?{SUFFIX}", {"max_new_tokens": 128}]],
        "resps": [[text]],
        "filtered_resps": [text],
        "doc_hash": f"{doc_id:064x}",
        "prompt_hash": f"{doc_id + 100:064x}",
        "target_hash": f"{doc_id + 200:064x}",
        **{metric: scored for metric in ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score",
                                          "pope_yes_ratio")},
    }


def lmms_eval_pope_files(tmp_path, random_labels=None):
    adversarial = [lmms_eval_pope_sample(i, "adversarial", q, obj, lab, t)
                   for i, ((q, _, obj, lab), t) in enumerate(zip(ADVERSARIAL, ADVERSARIAL_ANSWERS))]
    random = [lmms_eval_pope_sample(i, "random", q, obj, lab, t)
              for i, ((q, _, obj, lab), t) in enumerate(zip(RANDOM, RANDOM_ANSWERS))]
    if random_labels:
        for sample, label in zip(random, random_labels):
            sample["doc"]["answer"] = label
    return (write_jsonl(tmp_path / "20250101_120000_samples_pope_adv.jsonl", adversarial),
            write_jsonl(tmp_path / "20250101_120000_samples_pope_random.jsonl", random))


def test_lmms_eval_pope_samples_score_by_the_llava_rules(pope_folder, tmp_path):
    files = lmms_eval_pope_files(tmp_path)
    result = run_pope(PopeConfig(pope_folder), answers=list(files))
    assert_expected(result)
    assert result.protocol["answers_format"] == "lmms-eval"


def test_lmms_eval_old_json_log_with_logs_list(pope_folder, tmp_path):
    adversarial, random = lmms_eval_pope_files(tmp_path)
    samples = [json.loads(line) for f in (adversarial, random) for line in f.read_text().splitlines()]
    log = tmp_path / "pope.json"
    log.write_text(json.dumps({"args": {"tasks": "pope_full"}, "model_configs": {}, "logs": samples}, indent=2))
    assert_expected(run_pope(PopeConfig(pope_folder), answers=log, answers_format="lmms-eval"))


def test_lmms_eval_labels_must_match_the_questions(pope_folder, tmp_path):
    files = lmms_eval_pope_files(tmp_path, random_labels=["no", "no", "yes", "no"])
    with pytest.raises(ValueError, match=r"answer to POPE question random/1: the answers file gives the label 'no' "
                                         r"but the question's is 'yes'"):
        run_pope(PopeConfig(pope_folder), answers=list(files))


def test_lmms_eval_sample_without_response_is_named(tmp_path):
    sample = lmms_eval_pope_sample(0, "random", 1, "dog", "yes", "Yes")
    del sample["filtered_resps"]
    sample["resps"] = [[]]
    with pytest.raises(ValueError, match=r"answers record 0: field 'resps' must hold the generated text"):
        normalize_answers([sample])


def test_format_detection():
    assert detect_format(lmms_eval_pope_sample(0, "random", 1, "dog", "yes", "Yes")) == "lmms-eval"
    assert detect_format(llava_answer(1, "q", "Yes")) == "llava"
    assert detect_format({"question_id": 1, "split": "random", "text": "Yes"}) == "mmalign"
    with pytest.raises(ValueError, match="unknown answers format 'vqa'"):
        normalize_answers([], "vqa")


# --------------------------------------------------------------------------- CHAIR

# Captions of the three conftest images ({dog, person}, {hot dog, cup}, {toilet}), with
# plurals and official-list words mmalign's table used to miss. Official CHAIR mentions:
CAPTIONS = {
    1: "Two policemen and their collies stand beside a TV.",  # person, dog, tv (hallucinated)
    2: "A hot dog and a bagel on a plate.",                   # hot dog, donut (hallucinated)
    3: "A white toilet in a small bathroom.",                 # toilet
}
# CHAIR_s = 2/3 captions; CHAIR_i = 2/6 mentions; recall = (2 + 1 + 1) / (2 + 2 + 1) objects.
CHAIR_EXPECTED = {"chair_s": 200 / 3, "chair_i": 100 / 3, "recall": 80.0, "mentions": 6}


def assert_chair(result):
    for name, value in CHAIR_EXPECTED.items():
        assert result.metrics[name] == pytest.approx(value), name


@pytest.mark.parametrize("vocabulary", ["coco", "chair"])
def test_llava_caption_files(coco_files, tmp_path, vocabulary):
    instances, captions = coco_files
    by_question_id = write_jsonl(tmp_path / "a.jsonl", [llava_answer(i, "Please describe this image in detail.", c)
                                                  for i, c in CAPTIONS.items()])
    by_file_name = write_jsonl(tmp_path / "b.jsonl", [{"image_id": f"COCO_val2014_{i:012d}.jpg", "caption": c}
                                                for i, c in CAPTIONS.items()])
    config = ChairConfig(instances, captions, vocabulary=vocabulary)
    assert_chair(run_chair(config, answers=by_question_id))
    assert_chair(run_chair(config, answers=by_file_name, answers_format="llava"))


def test_lmms_eval_coco_cap_chair_samples(coco_files, tmp_path):
    instances, captions = coco_files
    samples = [
        {"doc_id": k, "doc": {"question_id": str(i), "gt_object": []}, "target": "[]",
         "arguments": [["Please describe this image in detail.", {"max_new_tokens": 2048}]],
         "resps": [[c]], "filtered_resps": [c], "doc_hash": "0", "prompt_hash": "0", "target_hash": "0",
         "coco_cap_chair_i": {"answer": [], "pred": [], "image_id": i}}
        for k, (i, c) in enumerate(CAPTIONS.items())
    ]
    result = run_chair(ChairConfig(instances, captions), answers=write_jsonl(tmp_path / "samples.jsonl", samples))
    assert_chair(result)
    assert result.protocol["answers_format"] == "lmms-eval"


# --------------------------------------------------------------------------- the CLI


def bench(*argv):
    return main(["bench", *map(str, argv)])


def test_cli_pope_llava_and_lmms_eval(pope_folder, llava_pope_test, tmp_path):
    questions = [json.loads(line) for line in llava_pope_test.read_text().splitlines()]
    answers = write_jsonl(tmp_path / "llava.jsonl", [llava_answer(q["question_id"], q["text"], t) for q, t in
                                               zip(questions, ADVERSARIAL_ANSWERS + RANDOM_ANSWERS)])
    assert bench("pope", "--questions", pope_folder, "--llava-questions", llava_pope_test, "--answers", answers,
                 "--format", "llava", "--out", tmp_path / "llava") == 0
    assert json.loads((tmp_path / "llava" / "report.json").read_text())["metrics"]["mean_f1"] == pytest.approx(75.0)

    adversarial, random = lmms_eval_pope_files(tmp_path)
    assert bench("pope", "--questions", pope_folder, "--answers", adversarial, random,
                 "--out", tmp_path / "lmms") == 0
    report = json.loads((tmp_path / "lmms" / "report.json").read_text())
    assert report["metrics"]["mean_f1"] == pytest.approx(75.0)
    assert report["protocol"]["answers_format"] == "lmms-eval"


def test_cli_wrong_format_is_one_clear_error(pope_folder, tmp_path, capsys):
    answers = write_jsonl(tmp_path / "mine.jsonl", [{"question_id": 1, "split": "random", "answer_text": "Yes"}])
    assert bench("pope", "--questions", pope_folder, "--answers", answers, "--format", "llava",
                 "--out", tmp_path / "run") == 2
    assert "mine.jsonl record 0: missing field 'text' (or 'caption') of a LLaVA answer" in capsys.readouterr().err


def test_cli_chair_and_objhal_with_llava_answers_and_a_synonyms_file(coco_files, tmp_path):
    instances, captions = coco_files
    answers = write_jsonl(tmp_path / "caps.jsonl", [llava_answer(i, "Describe.", c) for i, c in CAPTIONS.items()])
    assert bench("chair", "--instances", instances, "--captions", captions, "--answers", answers,
                 "--format", "llava", "--vocabulary", "chair", "--out", tmp_path / "chair") == 0
    report = json.loads((tmp_path / "chair" / "report.json").read_text())
    assert report["metrics"]["chair_i"] == pytest.approx(100 / 3)
    assert report["protocol"]["vocabulary"]["name"] == "chair-official"

    # another list: "bagel" is a bread here, not a donut, so only the TV is hallucinated
    synonyms = tmp_path / "my_synonyms.txt"
    synonyms.write_text("person, policeman\ndog, collie\ntv\nhot dog\ndonut\ntoilet\ncup\n")
    assert bench("chair", "--instances", instances, "--captions", captions, "--answers", answers,
                 "--synonyms", synonyms, "--out", tmp_path / "mine") == 0
    report = json.loads((tmp_path / "mine" / "report.json").read_text())
    assert report["metrics"]["hallucinated_mentions"] == 1
    assert report["protocol"]["vocabulary"]["name"] == "synonyms file my_synonyms.txt"

    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 7, "image_id": 3, "question": "Describe."}])
    responses = write_jsonl(tmp_path / "r.jsonl", [llava_answer(7, "Describe.", "A toilet and a sink.")])
    assert bench("objhal", "--questions", questions, "--instances", instances, "--answers", responses,
                 "--format", "llava", "--out", tmp_path / "objhal") == 0
    objhal = json.loads((tmp_path / "objhal" / "report.json").read_text())
    assert objhal["headline"] == {"Response Hall": 100.0, "Object Hall": 50.0}
