"""``mmalign bench ...`` through the ``mmalign`` command (its error handling included)."""

import json

import pytest

from mmalign.cli import main


def bench(*argv):
    return main(["bench", *map(str, argv)])


def pope_answer_file(path, split, texts):
    path.write_text("".join(json.dumps({"question_id": i + 1, "text": t}) + "\n" for i, t in enumerate(texts)))
    return f"{split}={path}"


def test_pope_scores_answer_files_per_split(pope_dir, tmp_path, capsys):
    random_answers = pope_answer_file(tmp_path / "r.jsonl", "random", ["Yes", "No", "Yes", "No"])
    popular_answers = pope_answer_file(tmp_path / "p.jsonl", "popular", ["Yes", "Yes", "Yes", "Yes"])
    out = tmp_path / "run"
    assert bench("pope", "--questions", pope_dir, "--answers", random_answers, popular_answers,
                 "--out", out, "--name", "ckpt") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "ckpt"
    assert report["metrics"]["splits"]["random"]["f1"] == pytest.approx(100.0)
    assert report["metrics"]["splits"]["popular"]["yes_ratio"] == pytest.approx(100.0)
    printed = capsys.readouterr().out
    assert "F1 (mean of splits)" in printed and "report.md" in printed


def test_pope_generates_with_a_model(pope_dir, tmp_path, tiny_llava_dir):
    out = tmp_path / "run"
    assert bench("pope", "--questions", pope_dir, "--images", tmp_path / "val2014", "--model", tiny_llava_dir,
                 "--out", out, "--max-new-tokens", 2, "--batch-size", 4, "--splits", "random", "--no-progress") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["decoding"]["max_new_tokens"] == 2
    assert report["protocol"]["decoding"]["batch_size"] == 4
    assert report["model"] == tiny_llava_dir.name
    assert len((out / "answers.jsonl").read_text().splitlines()) == 4


def test_bad_input_is_one_clear_error(pope_dir, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "text": "Yes"}) + "\n")
    assert bench("pope", "--questions", pope_dir, "--answers", answers, "--out", tmp_path / "run") == 2
    assert "error: answers record 0: question_id 1 is in several splits" in capsys.readouterr().err


def test_chair_objhal_and_amber_score_answer_files(coco_files, amber_dir, tmp_path, files):
    instances, captions = coco_files
    caps = files.jsonl(tmp_path / "caps.jsonl", [{"image_id": 1, "caption": "A man with a dog and a cat."}])
    assert bench("chair", "--instances", instances, "--captions", captions, "--answers", caps,
                 "--out", tmp_path / "chair") == 0
    chair = json.loads((tmp_path / "chair" / "report.json").read_text())
    assert chair["metrics"]["chair_i"] == pytest.approx(100 / 3)

    questions = files.jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image_id": 3, "question": "Describe."}])
    responses = files.jsonl(tmp_path / "r.jsonl", [{"question_id": 1, "text": "A toilet and a sink."}])
    assert bench("objhal", "--questions", questions, "--instances", instances, "--answers", responses,
                 "--out", tmp_path / "objhal") == 0
    objhal = json.loads((tmp_path / "objhal" / "report.json").read_text())
    assert objhal["headline"] == {"Response Hall": 100.0, "Object Hall": 50.0}

    amber_answers = files.jsonl(tmp_path / "amber.jsonl", [{"id": 3, "response": "No"}])
    assert bench("amber", "--data", amber_dir, "--kinds", "existence", "--answers", amber_answers,
                 "--out", tmp_path / "amber") == 0
    amber = json.loads((tmp_path / "amber" / "report.json").read_text())
    assert amber["headline"] == {"Accuracy": 100.0, "F1": 100.0}


def test_mmhal_with_an_http_judge(mmhal_template, judge_server, tmp_path, files, monkeypatch, capsys):
    monkeypatch.setenv("TEST_JUDGE_KEY", "k")
    judge_server.reply = lambda prompt: "Rating: 6"
    answers = files.jsonl(tmp_path / "a.jsonl", [{"question_id": i, "model_answer": "x"} for i in range(8)])
    argv = ["mmhal", "--template", mmhal_template, "--answers", answers, "--judge-url", judge_server.base_url,
            "--judge-model", "judge", "--judge-concurrency", "3", "--out", tmp_path / "m", "--no-progress"]
    assert bench(*argv, "--api-key-env", "TEST_JUDGE_KEY") == 0
    assert "deprecated" not in capsys.readouterr().err
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["headline"] == {"Score (0-6)": 6.0, "Hallucination rate": 0.0}
    assert report["protocol"]["judge"] == f"judge @ {judge_server.base_url}"
    assert len(judge_server.requests) == 8
    assert all(r["headers"]["Authorization"] == "Bearer k" for r in judge_server.requests)
    # The judge client's cache answers a rerun that lost the benchmark's own judgements file.
    assert len((tmp_path / "m" / "judge_cache.jsonl").read_text().splitlines()) == 8
    (tmp_path / "m" / "judgements.jsonl").unlink()
    assert bench(*argv, "--api-key-env", "TEST_JUDGE_KEY") == 0
    assert len(judge_server.requests) == 8
    assert json.loads((tmp_path / "m" / "report.json").read_text())["headline"] == report["headline"]
    # The old spelling of the key flag still works, with a warning.
    argv[argv.index("--out") + 1] = tmp_path / "m2"
    assert bench(*argv, "--judge-key-env", "TEST_JUDGE_KEY") == 0
    assert "warning: --judge-key-env is deprecated; use --api-key-env" in capsys.readouterr().err
    assert len(judge_server.requests) == 16
    assert all(r["headers"]["Authorization"] == "Bearer k" for r in judge_server.requests[8:])


def test_endpoint_flags_need_an_endpoint(mmhal_template, tmp_path, files, capsys):
    answers = files.jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "model_answer": "x"}])
    assert bench("mmhal", "--template", mmhal_template, "--answers", answers, "--judge-scene", tmp_path,
                 "--judge-concurrency", "2", "--out", tmp_path / "m") == 2
    assert "--judge-concurrency: only for a judge endpoint (--judge-url)" in capsys.readouterr().err


def test_safety_with_saved_scoring_models(tmp_path, files, tiny_llava_dir):
    from mmalign.models import ScalarHeadModel, load_adapter

    ScalarHeadModel(load_adapter(tiny_llava_dir), kind="cost").save_pretrained(tmp_path / "cost")
    files.images(tmp_path / "img", ["a.png"])
    questions = files.jsonl(tmp_path / "q.jsonl", [{"question_id": 0, "image": "a.png", "question": "q",
                                                     "category": "violence"}])
    answers = files.jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "response": "no"}])
    argv = ["safety", "--questions", questions, "--images", tmp_path / "img", "--cost-model", tmp_path / "cost",
            "--answers", answers, "--out", tmp_path / "s"]
    assert bench(*argv) == 2  # scoring heads need their base checkpoint
    assert bench(*argv, "--scorer-base", tiny_llava_dir) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["protocol"]["cost_model"] == "cost"
    assert set(report["metrics"]["per_category"]) == {"violence"}


def test_report_compares_runs(pope_dir, tmp_path, capsys):
    for name, texts in (("a", ["Yes"] * 4), ("b", ["Yes", "No"] * 2)):
        answers = pope_answer_file(tmp_path / f"{name}.jsonl", "random", texts)
        assert bench("pope", "--questions", pope_dir, "--splits", "random", "--answers", answers,
                     "--out", tmp_path / name, "--name", name) == 0
    assert bench("report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp") == 0
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    assert "| b | 100.00 |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert "pope: 2 runs" in capsys.readouterr().out
