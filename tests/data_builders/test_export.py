"""Export to other trainers' formats (TRL, LLaVA, ms-swift), and looking at TRL folders.

TRL's DPOTrainer training on the ``trl`` export of every builder's output is in
tests/dpo/test_trl_parity.py (it drives TRL on the tiny LLaVA there)."""

import json

import pytest
from datasets import Dataset, load_from_disk
from PIL import Image

from mmalign.cli import main
from mmalign.data_builders.export import EXPORT_MANIFEST, export_dataset
from mmalign.data_builders.importers import import_dataset
from mmalign.data_builders.preview import inspect_dataset, write_html_preview
from mmalign.data_builders.schema import RecordError, one_prompt_form
from mmalign.data_builders.storage import (
    load_preference_dataset,
    save_preference_dataset,
    validate_dataset,
)
from mmalign.io import OutputError


@pytest.fixture
def pairs(png, tmp_path):
    """A canonical dataset: one image first, two images at placeholders, and no image."""
    records = [
        {"images": [png((255, 0, 0))], "prompt": "What is on the table?", "chosen": "A red cup.",
         "rejected": "A blue cup.", "chosen_spans": [[2, 5]], "rejected_spans": [[2, 6]], "source": "test"},
        {"images": [png((0, 0, 255)), png((255, 0, 0))], "prompt": "<image> before, <image> after: what changed?",
         "chosen": "The cup turned red.", "rejected": "Nothing changed."},
        {"images": [], "prompt": "Say hello.", "chosen": "Hello!", "rejected": "No."},
    ]
    save_preference_dataset(records, tmp_path / "pairs")
    return tmp_path / "pairs"


def test_trl_export_is_conversational_with_images(pairs, tmp_path):
    report = export_dataset(pairs, tmp_path / "trl", "trl")
    ds = load_from_disk(str(tmp_path / "trl"))
    assert report.rows == len(ds) == 3
    first, two, text_only = (ds[i] for i in range(3))
    parts = first["prompt"][0]["content"]
    assert first["prompt"][0]["role"] == "user" and [p["type"] for p in parts] == ["image", "text"]
    assert parts[1]["text"] == "What is on the table?"
    assert first["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "A red cup."}]}]
    assert first["rejected"][0]["content"][0]["text"] == "A blue cup."
    assert first["chosen_spans"] == [[2, 5]] and first["source"] == "test" and len(first["images"]) == 1
    # images stay where the placeholders put them; a text-only row has no image part
    assert [p["type"] for p in two["prompt"][0]["content"]] == ["image", "text", "image", "text"]
    assert text_only["images"] == [] and [p["type"] for p in text_only["prompt"][0]["content"]] == ["text"]
    # and it is still a valid mmalign dataset
    assert validate_dataset(tmp_path / "trl").ok


def test_import_of_a_conversational_trl_dataset_exports_back_to_trl(png, tmp_path):
    """The reported case: after ``import trl`` the responses are text, which TRL refuses with a
    conversational prompt; the trl export makes them conversational again."""
    rows = [{"images": [Image.new("RGB", (8, 8), c)],
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": c}]}],
             "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "purple"}]}]}
            for c in ("red", "blue")]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "raw"))
    import_dataset("trl", tmp_path / "raw", tmp_path / "canonical")
    export_dataset(tmp_path / "canonical", tmp_path / "trl", "trl")
    ds = load_from_disk(str(tmp_path / "trl"))
    assert ds[1]["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]
    assert [p["type"] for p in ds[1]["prompt"][0]["content"]] == ["image", "text"]


def test_llava_export_round_trips_through_the_llava_rlhf_importer(pairs, tmp_path):
    report = export_dataset(pairs, tmp_path / "llava", "llava")
    rows = json.loads((tmp_path / "llava" / "llava.json").read_text())
    assert report.rows == len(rows) == 3 and report.images == 2  # the red image is written once
    assert rows[0]["conversations"] == [{"from": "human", "value": "<image>\nWhat is on the table?"}]
    assert (rows[0]["output_1"]["value"], rows[0]["output_2"]["value"], rows[0]["preference"]) == (
        "A red cup.", "A blue cup.", 1)
    assert isinstance(rows[1]["image"], list) and len(rows[1]["image"]) == 2 and "image" not in rows[2]
    import_dataset("llava-rlhf", tmp_path / "llava" / "llava.json", tmp_path / "back",
                   image_root=tmp_path / "llava" / "images")
    original, back = load_preference_dataset(pairs), load_preference_dataset(tmp_path / "back")
    for i in range(3):
        assert (back[i]["prompt"], back[i]["chosen"], back[i]["rejected"]) == (
            original[i]["prompt"], original[i]["chosen"], original[i]["rejected"])
        assert [img.tobytes() for img in back[i]["images"]] == [img.tobytes() for img in original[i]["images"]]


def test_ms_swift_export_has_messages_rejected_response_and_image_files(pairs, tmp_path):
    export_dataset(pairs, tmp_path / "swift", "ms-swift")
    lines = (tmp_path / "swift" / "train.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 3
    assert rows[0]["messages"] == [{"role": "user", "content": "<image>\nWhat is on the table?"},
                                   {"role": "assistant", "content": "A red cup."}]
    assert rows[0]["rejected_response"] == "A blue cup."
    # one <image> tag per image, in order; paths relative to the export folder
    assert rows[1]["messages"][0]["content"].count("<image>") == len(rows[1]["images"]) == 2
    assert rows[1]["images"][1] == rows[0]["images"][0]
    assert all((tmp_path / "swift" / name).is_file() for name in rows[1]["images"])
    assert "images" not in rows[2]


def test_image_contrast_pairs_export_rejected_images_to_trl_and_ms_swift_and_not_to_llava(png, tmp_path):
    records = [{"images": [png((255, 0, 0))], "prompt": "Describe.", "chosen": "A red square.",
                "rejected": "A red square.", "rejected_images": [png((0, 0, 0))]}]
    save_preference_dataset(records, tmp_path / "contrast")
    export_dataset(tmp_path / "contrast", tmp_path / "trl", "trl")
    trl = load_from_disk(str(tmp_path / "trl"))[0]
    assert trl["rejected_images"][0].getpixel((0, 0)) == (0, 0, 0) and trl["images"][0].getpixel((0, 0)) == (255, 0, 0)
    export_dataset(tmp_path / "contrast", tmp_path / "swift", "ms-swift")
    row = json.loads((tmp_path / "swift" / "train.jsonl").read_text())
    assert row["rejected_response"] == "A red square." and len(row["rejected_images"]) == 1
    assert (tmp_path / "swift" / row["rejected_images"][0]).read_bytes() == png((0, 0, 0))
    assert row["rejected_images"] != row["images"]
    with pytest.raises(RecordError, match="rejected_images.*trl or ms-swift"):
        export_dataset(tmp_path / "contrast", tmp_path / "llava", "llava")
    assert not (tmp_path / "llava").exists()  # nothing half-written
    # a TRL dataset carrying rejected_images imports with them
    import_dataset("trl", tmp_path / "trl", tmp_path / "back")
    back = load_preference_dataset(tmp_path / "back")[0]
    assert back["rejected_images"][0].getpixel((0, 0)) == (0, 0, 0)
    # data inspect and the HTML preview show them
    from mmalign.data_builders.preview import render_html, render_record
    from mmalign.data_builders.schema import validate_record

    stored = validate_record(records[0])
    assert "rejected images: 1" in render_record(stored, 0) and render_html([stored]).count("<img") == 2


def test_export_is_atomic_and_replaces_only_an_earlier_export(pairs, png, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError):
        export_dataset(pairs, tmp_path / "notes", "llava")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputError):
        export_dataset(pairs, pairs, "trl")
    export_dataset(pairs, tmp_path / "out", "ms-swift")
    export_dataset(pairs, tmp_path / "out", "trl")  # an earlier export is replaced
    assert json.loads((tmp_path / "out" / EXPORT_MANIFEST).read_text())["format"] == "trl"
    assert not (tmp_path / "out" / "train.jsonl").exists()
    # a bad row: an error naming it, and the earlier export left as it was
    Dataset.from_list([{"prompt": "Hi.", "chosen": "Hello.", "rejected": "No."},
                       {"prompt": "Hi.", "chosen": "Same.", "rejected": "Same."}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(RecordError, match=r"row 1, field 'rejected': is identical"):
        export_dataset(tmp_path / "bad", tmp_path / "out", "llava")
    assert json.loads((tmp_path / "out" / EXPORT_MANIFEST).read_text())["format"] == "trl"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_export(pairs, tmp_path, capsys):
    assert main(["data", "export", str(pairs), "--format", "ms-swift", "--out", str(tmp_path / "swift")]) == 0
    assert f"wrote 3 rows in the ms-swift format to {tmp_path / 'swift' / 'train.jsonl'}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "export", str(pairs), "--format", "csv", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'csv'" in capsys.readouterr().err


def test_one_prompt_form_turns_text_prompts_into_turns_only_when_forms_mix(png):
    text = {"images": [png()], "prompt": "What is it?"}
    turn = {"images": [png()], "prompt": [{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": "And now?"}]}]}
    assert one_prompt_form([text, text]) == [text, text]
    mixed = one_prompt_form([text, turn])
    assert mixed[0]["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                               {"type": "text", "text": "What is it?"}]}]
    assert mixed[1] == turn
    with pytest.raises(RecordError, match="field 'prompt'.*placeholder"):
        one_prompt_form([{**text, "prompt": "<image> <image> two?"}, turn])


def test_inspect_shows_a_raw_trl_folder(tmp_path, capsys):
    """Conversational responses and columns that only share a name with mmalign's are shown, not a traceback."""
    rows = [{"images": [Image.new("RGB", (8, 8), "red")],
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "It is red."}]}],
             "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "It is blue."}]}],
             "chosen_spans": "n/a"}] * 2
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "raw"))
    shown = inspect_dataset(tmp_path / "raw", diff=True)
    assert "chosen: It is {+red+}." in shown and "rejected: It is [-blue-]." in shown
    assert "red" in write_html_preview(tmp_path / "raw", tmp_path / "page.html", diff=True).read_text()
    assert main(["data", "inspect", str(tmp_path / "raw"), "--diff", "--color", "always"]) == 0
    assert "It is" in capsys.readouterr().out
