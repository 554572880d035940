"""Bad input across the CLI: one clear line naming the file / row / field, exit code 2, no output."""

import json
from pathlib import Path

import pytest
from PIL import Image

from mmalign.cli import main

GOOD = {"prompt": "what is this?", "images": ["a.png"], "chosen": "a red cup.", "rejected": "a cat."}


@pytest.fixture()
def data(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    return tmp_path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mmalign.models.tiny import save_tiny

    return save_tiny("llava", tmp_path_factory.mktemp("tiny") / "llava")


@pytest.fixture()
def unknown_model(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    return folder


def jsonl(path: Path, rows: list, extra_line: str | None = None) -> Path:
    lines = [json.dumps(r) for r in rows] + ([extra_line] if extra_line else [])
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys, argv: list[str], out: Path | None = None) -> str:
    """Run a command that must refuse its input; return its one error line."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    if out is not None:  # nothing half-written: neither the output nor a temporary sibling
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith((f".tmp-{out.name}", f".old-{out.name}"))]
    return lines[0]


# ---------------------------------------------------------------------------- files and formats
def test_missing_input_file(capsys, data):
    line = run(capsys, ["data", "import", "trl", data / "nope.jsonl", "--out", data / "out"], data / "out")
    assert "nope.jsonl does not exist" in line


def test_json_file_where_a_dataset_folder_is_expected(capsys, data, tiny):
    (data / "pairs.json").write_text("[]")
    assert "pairs.json is not a dataset folder" in run(capsys, ["data", "validate", data / "pairs.json"])
    line = run(capsys, ["train", "dpo", "--model_name_or_path", tiny, "--dataset_path", data / "pairs.json",
                        "--output_dir", data / "run"], data / "run")
    assert "pairs.json is not a dataset folder" in line


def test_broken_jsonl_line_names_file_and_line(capsys, data):
    path = jsonl(data / "pairs.jsonl", [GOOD], extra_line="{not json")
    line = run(capsys, ["data", "import", "trl", path, "--out", data / "out"], data / "out")
    assert "pairs.jsonl row 1: line 2 is not valid JSON" in line


def test_missing_recipe(capsys, data):
    assert "no recipe file" in run(capsys, ["train", "dpo", "--config", data / "nope.yaml"])


# ---------------------------------------------------------------------------- records
@pytest.mark.parametrize("row, expected", [
    ({**GOOD, "chosen": ""}, "row 1, field 'chosen': is empty"),
    ({k: v for k, v in GOOD.items() if k != "rejected"}, "row 1, field 'rejected': is missing"),
    ({**GOOD, "chosen_spans": [[0, 999]]}, "row 1, field 'chosen_spans': span 0 [0, 999) is empty or out of range"),
    ({**GOOD, "prompt": "<image> <image> what is this?"}, "row 1, field 'prompt': has 2 <image> placeholder(s)"),
    ({**GOOD, "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                      {"type": "text", "text": "what?"}]}]},
     "row 1, field 'prompt': has 2 image part(s) but the row has 1 image(s)"),
    ({**GOOD, "images": ["../a.png"]}, "row 1, field 'images[0]': image path '../a.png' escapes the image folder"),
])
def test_bad_record_is_named_and_nothing_is_written(capsys, data, row, expected):
    (data / "sub").mkdir()
    Image.new("RGB", (32, 32), "red").save(data / "sub" / "a.png")
    path = jsonl(data / "sub" / "pairs.jsonl", [GOOD, row])
    line = run(capsys, ["data", "import", "trl", path, "--out", data / "out"], data / "out")
    assert expected in line


def test_one_placeholder_per_image_is_accepted(capsys, data):
    path = jsonl(data / "pairs.jsonl", [{**GOOD, "prompt": "<image>\nwhat is this?"}])
    assert main(["data", "import", "trl", str(path), "--out", str(data / "out")]) == 0
    from datasets import load_from_disk

    assert load_from_disk(str(data / "out"))[0]["prompt"] == "<image>\nwhat is this?"


def test_training_refuses_a_dataset_folder_with_a_bad_record(capsys, data, tiny):
    from datasets import Dataset

    rows = {"images": [[{"bytes": (data / "a.png").read_bytes(), "path": None}]], "prompt": ["what is this?"],
            "chosen": ["a red cup."], "rejected": ["a cat."], "chosen_spans": [[[3, 40]]]}
    Dataset.from_dict(rows).save_to_disk(str(data / "pairs"))
    line = run(capsys, ["train", "dpo", "--model_name_or_path", tiny, "--dataset_path", data / "pairs",
                        "--output_dir", data / "run"], data / "run")
    assert "row 0, field 'chosen_spans': span 0 [3, 40) is empty or out of range" in line


# ---------------------------------------------------------------------------- models
def test_unsupported_model_type(capsys, data, unknown_model):
    line = run(capsys, ["train", "dpo", "--model_name_or_path", unknown_model, "--dataset_path", data,
                        "--output_dir", data / "run"], data / "run")
    assert f"{unknown_model}: model_type 'bert' is not supported" in line
    assert "model_type 'bert' is not supported" in run(capsys, ["plan", "--model", unknown_model, "--method", "dpo"])
    line = run(capsys, ["export", "--merge", "--base", unknown_model, "--adapter", data / "adapter",
                        "--out", data / "merged"], data / "merged")
    assert "model_type 'bert' is not supported" in line


def test_missing_model_folder_and_unknown_card(capsys, data):
    line = run(capsys, ["train", "dpo", "--model_name_or_path", data / "nomodel", "--dataset_path", data,
                        "--output_dir", data / "run"], data / "run")
    assert f"model folder {data / 'nomodel'} does not exist" in line
    assert "no model card named 'llava-9b'" in run(capsys, ["plan", "--model", "llava-9b", "--method", "dpo"])


def test_debug_shows_the_traceback(monkeypatch, data):
    monkeypatch.setenv("MMALIGN_DEBUG", "1")
    with pytest.raises(ValueError, match="no model card named"):
        main(["plan", "--model", "llava-9b", "--method", "dpo"])


# ---------------------------------------------------------------------------- builders and benchmarks
def test_correction_without_its_corrected_answer(capsys, data):
    path = jsonl(data / "fixes.jsonl", [{"image": "a.png", "question": "what is this?", "original": "a cat."}])
    line = run(capsys, ["data", "build", "corrections", path, "--out", data / "out"], data / "out")
    assert "row 0" in line and "'corrected'" in line


def test_benchmark_question_file_missing_or_escaping(capsys, data, tiny):
    line = run(capsys, ["bench", "pope", "--questions", data / "nope.json", "--answers", data / "a.jsonl",
                        "--out", data / "pope"], data / "pope")
    assert "nope.json: no such file" in line
    (data / "images").mkdir()
    jsonl(data / "q.json", [{"question_id": 1, "image": "../a.png", "text": "Is there a cat?", "label": "yes"}])
    line = run(capsys, ["bench", "pope", "--questions", f"random={data / 'q.json'}", "--images", data / "images",
                        "--model", tiny, "--out", data / "pope"], data / "pope")
    assert "POPE question random/1: image path '../a.png' escapes the image folder" in line
