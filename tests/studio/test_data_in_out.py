"""Loading and exporting across prompt forms: a project may hold text and conversational
prompts (loaded from different sources) and still exports; file errors name the file."""

import json

from PIL import Image

from mmalign.cli import main
from mmalign.data_builders.storage import load_preference_dataset, read_manifest
from mmalign.studio import StudioProject

from .conftest import png

CONVERSATION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]


def test_a_project_with_text_and_conversational_prompts_exports(tmp_path, capsys):
    project = StudioProject.create(tmp_path / "proj")
    project.add_annotator("alice")
    project.add_items([
        {"kind": "correction", "images": [png("red")], "prompt": "Describe the image.", "answer": "A blue square."},
        {"kind": "correction", "images": [png("green")], "prompt": CONVERSATION, "answer": "It is purple."},
        {"kind": "pair", "images": [png("gray")], "prompt": "<image> What is this?", "answer": "A grey square.",
         "answer_b": "A cat."},
    ])
    project.assign()
    alice = project.annotators()[0].id
    project.submit(alice, 1, {"corrections": [{"start": 2, "end": 6, "text": "red"}]})
    project.submit(alice, 2, {"corrections": [{"start": 6, "end": 12, "text": "green"}]})
    project.submit(alice, 3, {"more_helpful": "a", "safer": "a", "a_harmless": 3, "b_harmless": 3,
                              "a_helpful": 3, "b_helpful": 0})
    assert main(["studio", "export", "--project", str(project.path), "--out", str(tmp_path / "out")]) == 0, (
        capsys.readouterr().err)
    ds = load_preference_dataset(tmp_path / "out")
    assert read_manifest(tmp_path / "out")["conversational"] is True
    prompts = [ds[i]["prompt"] for i in range(len(ds))]
    assert prompts[0] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                       {"type": "text", "text": "Describe the image."}]}]
    assert prompts[1] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                       {"type": "text", "text": "What colour is it?"}]}]
    assert [p["type"] for p in prompts[2][0]["content"]] == ["image", "text"]  # the placeholder became the part
    assert [ds[i]["chosen"] for i in range(3)] == ["A red square.", "It is green.", "A grey square."]


def test_a_bad_record_in_a_jsonl_file_names_the_file(tmp_path, capsys):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"images": ["red.png"], "prompt": "Describe.", "chosen": "a red square.",
                                "rejected": "a blue square."}) + "\n"
                    + json.dumps({"images": ["red.png"], "prompt": "Describe.", "chosen": "same.",
                                  "rejected": "same."}) + "\n")
    project = StudioProject.create(tmp_path / "proj")
    assert main(["studio", "load", "--project", str(project.path), "--from-dataset", str(path)]) == 2
    assert f"{path} row 1, field 'rejected'" in capsys.readouterr().err and project.items() == []
