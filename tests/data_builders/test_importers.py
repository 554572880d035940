"""Each importer on small hand-made files in the exact public format."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmalign.data_builders.importers import (
    IMPORTERS,
    import_dataset,
    read_beavertails_v,
    read_llava_conversations,
    read_llava_rlhf,
    read_pku_saferlhf,
    read_rlaif_v,
    read_rlhf_v,
    read_trl,
    strip_image_token,
)
from mmalign.data_builders.schema import RecordError, RowErrors
from mmalign.data_builders.storage import load_preference_dataset, read_manifest

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _parquet(path, columns, image_column="image"):
    arrays = {k: (pa.array(v, type=IMAGE_STRUCT) if k == image_column else pa.array(v)) for k, v in columns.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)
    return path


def test_strip_image_token():
    assert strip_image_token("<image>\nWhat is this?") == "What is this?"
    assert strip_image_token("Describe the photo.\n<image>") == "Describe the photo."


# ---------------------------------------------------------------------------- RLHF-V
def _rlhf_v_file(tmp_path, png, texts):
    n = len(texts)
    return _parquet(tmp_path / "RLHF-V-Dataset.parquet", {
        "ds_name": ["RLHF-V"] * n,
        "image": [{"bytes": png((i * 40, 0, 0)), "path": None} for i in range(n)],
        "text": texts,
        "origin_dataset": ["vqav2"] * n,
        "origin_split": [json.dumps({"model": "muffin", "type": "detailed_description"})] * n,
        "idx": list(range(100, 100 + n)),
        "image_path": [f"images/{i}.jpg" for i in range(n)],
    })


def test_rlhf_v(png, tmp_path):
    text = {"question": "<image>\nDescribe the image in detail.",
            "chosen": "A man is riding a blue bike down the busy street today.",
            "rejected": "A man is riding a red bike down the busy street today."}
    path = _rlhf_v_file(tmp_path, png, [json.dumps(text)])
    [rec] = list(read_rlhf_v(path))
    assert rec["prompt"] == "Describe the image in detail."
    assert rec["chosen"] == text["chosen"] and rec["rejected"] == text["rejected"]
    assert rec["chosen_spans"] == [[18, 22]] and rec["rejected_spans"] == [[18, 21]]
    assert rec["images"] == [{"bytes": png((0, 0, 0)), "path": None}]
    meta = json.loads(rec["meta"])
    assert meta["origin_split"] == {"model": "muffin", "type": "detailed_description"}
    assert meta["idx"] == 100 and meta["ds_name"] == "RLHF-V" and rec["source"] == "rlhf-v"


def test_rlhf_v_bad_rows_name_row_id_and_field(png, tmp_path):
    good = json.dumps({"question": "Q?", "chosen": "a blue one", "rejected": "a red one"})
    path = _rlhf_v_file(tmp_path, png, [good, "{not json", json.dumps({"question": "Q?", "chosen": "x"}), good])
    with pytest.raises(RecordError) as info:
        list(read_rlhf_v(path))
    assert str(info.value).startswith(f"{path} row 1 (id 101), field 'text': is not valid JSON")
    errors = RowErrors(lenient=True)
    assert len(list(read_rlhf_v(path, errors=errors))) == 2
    assert [(e.row, e.field) for e in errors.skipped] == [(1, "text"), (2, "text")]
    assert "no string 'rejected'" in str(errors.skipped[1])


def test_rlhf_v_image_by_path_must_stay_inside_the_folder(png, tmp_path):
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "ok.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    text = json.dumps({"question": "Q?", "chosen": "a blue one", "rejected": "a red one"})
    path = _parquet(tmp_path / "data" / "train.parquet", {
        "text": [text, text, text],
        "image": [{"bytes": None, "path": "imgs/ok.png"}, {"bytes": None, "path": "../secret.png"},
                  {"bytes": None, "path": str(tmp_path / "secret.png")}],
        "idx": [0, 1, 2],
    })
    errors = RowErrors(lenient=True)
    records = list(read_rlhf_v(path, errors=errors))
    assert len(records) == 1 and records[0]["images"][0]["bytes"] == png()
    assert [(e.row, e.field) for e in errors.skipped] == [(1, "images[0]"), (2, "images[0]")]
    assert all("escapes" in str(e) for e in errors.skipped)


def test_rlhf_v_symlink_out_of_the_folder_is_refused(png, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "outside.png").write_bytes(png())
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "outside.png")
    text = json.dumps({"question": "Q?", "chosen": "a blue one", "rejected": "a red one"})
    path = _parquet(tmp_path / "data" / "train.parquet", {"text": [text], "image": [{"bytes": None, "path": "link.png"}]})
    with pytest.raises(RecordError, match="escapes"):
        list(read_rlhf_v(path))


# ---------------------------------------------------------------------------- RLAIF-V
def test_rlaif_v(png, tmp_path):
    path = _parquet(tmp_path / "rlaif.parquet", {
        "ds_name": ["RLAIF-V"] * 2,
        "image": [{"bytes": png(), "path": None}, {"bytes": png((0, 255, 0)), "path": None}],
        "question": ["What color is the car?", "How many people?"],
        "chosen": ["The car is red.", "Two people."],
        "rejected": ["The car is blue.", "Three people."],
        "origin_dataset": ["coco", "vqa"],
        "idx": [5, 6],
    })
    records = list(read_rlaif_v(path))
    assert [r["prompt"] for r in records] == ["What color is the car?", "How many people?"]
    assert records[1]["chosen"] == "Two people." and records[1]["chosen_spans"] is None
    assert json.loads(records[0]["meta"]) == {"ds_name": "RLAIF-V", "idx": 5, "origin_dataset": "coco"}


def test_rlaif_v_missing_column(png, tmp_path):
    path = _parquet(tmp_path / "rlaif.parquet", {"image": [{"bytes": png(), "path": None}], "question": ["Q?"],
                                                 "chosen": ["yes"]})
    with pytest.raises(RecordError) as info:
        list(read_rlaif_v(path))
    assert (info.value.row, info.value.field, info.value.message) == (0, "rejected", "is missing")


# ---------------------------------------------------------------------------- LLaVA-RLHF
def _llava_rlhf_files(tmp_path, png, rows):
    coco = tmp_path / "train2017"
    coco.mkdir(exist_ok=True)
    for name in ("000000224052.jpg", "000000000009.jpg"):
        (coco / name).write_bytes(png(fmt="JPEG"))
    captions = {
        "000000224052.jpg": ["A man rides a bike.", "A cyclist on a street."],
        "aok_000000224052.jpg": ["The man is riding to work.", "Answer: B"],
        "000000000009.jpg": ["A bowl of fruit."],
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "llava_7b_v1_preference.json").write_text(json.dumps(rows))
    return tmp_path / "llava_7b_v1_preference.json", coco, tmp_path / "captions.json"


def _llava_row(i, image, question, pref, extra_turns=()):
    return {"id": f"pref-{i}", "image": image,
            "conversations": [*extra_turns, {"from": "human", "value": question}],
            "output_1": {"from": "llava", "value": f"Answer one for {i}."},
            "output_2": {"from": "llava", "value": f"Answer two for {i}."}, "preference": pref}


def test_llava_rlhf_single_turn_text_prompts_and_facts(png, tmp_path):
    rows = [
        _llava_row(0, "000000224052.jpg", "<image>\nWhat is the man doing?", 2),
        _llava_row(1, "000000224052.jpg", "<image>\nWhy is he riding?\nA. fun\nB. work\nC. race\nD. sport", 1),
        _llava_row(2, "000000000009.jpg", "What is in the bowl?\n<image>", 1),
    ]
    path, coco, captions = _llava_rlhf_files(tmp_path, png, rows)
    records = list(read_llava_rlhf(path, image_root=coco, facts=captions))
    assert [r["prompt"] for r in records][0] == "What is the man doing?"
    assert records[0]["chosen"] == "Answer two for 0." and records[0]["rejected"] == "Answer one for 0."
    assert records[1]["chosen"] == "Answer one for 1."
    assert records[0]["facts"] == ["A man rides a bike.", "A cyclist on a street."]
    assert records[1]["facts"] == ["The man is riding to work.", "Answer: B"]  # multiple choice → aok_
    assert records[2]["facts"] == ["A bowl of fruit."] and records[2]["prompt"] == "What is in the bowl?"
    assert records[0]["images"][0]["bytes"] == (coco / "000000224052.jpg").read_bytes()
    assert json.loads(records[0]["meta"]) == {"id": "pref-0"}


def test_llava_rlhf_multi_turn_makes_every_prompt_conversational(png, tmp_path):
    history = ({"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A bike."})
    rows = [_llava_row(0, "000000224052.jpg", "What color is it?", 1, history),
            _llava_row(1, "000000000009.jpg", "<image>\nWhat is in the bowl?", 2)]
    path, coco, _ = _llava_rlhf_files(tmp_path, png, rows)
    first, second = list(read_llava_rlhf(path, image_root=coco))
    assert first["prompt"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A bike."}]},
        {"role": "user", "content": [{"type": "text", "text": "What color is it?"}]},
    ]
    assert isinstance(second["prompt"], list) and second["facts"] is None
    out = tmp_path / "out"
    import_dataset("llava-rlhf", path, out, image_root=coco)
    assert read_manifest(out)["conversational"] is True


def test_llava_rlhf_bad_rows(png, tmp_path):
    rows = [
        _llava_row(0, "000000224052.jpg", "<image>\nQ?", 3),
        _llava_row(1, "missing.jpg", "<image>\nQ?", 1),
        {**_llava_row(2, "000000224052.jpg", "<image>\nQ?", 1),
         "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]},
        _llava_row(3, "000000224052.jpg", "<image>\nQ?", 1),
    ]
    path, coco, _ = _llava_rlhf_files(tmp_path, png, rows)
    errors = RowErrors(lenient=True)
    records = list(read_llava_rlhf(path, image_root=coco, errors=errors))
    assert len(records) == 1
    found = [(e.row, e.record_id, e.field) for e in errors.skipped]
    assert found == [(0, "pref-0", "preference"), (1, "pref-1", "images[0]"), (2, "pref-2", "conversations")]
    assert "not found" in str(errors.skipped[1])


def test_llava_conversations_prompt_set(png, tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    rows = [{"id": "c1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A red square."},
        {"from": "human", "value": "Is it big?"}, {"from": "gpt", "value": "No, it is small."}]}]
    path = tmp_path / "llava_instruct.json"
    path.write_text(json.dumps(rows))
    [first] = list(read_llava_conversations(path))
    assert first["prompt"] == "What is shown?" and first["reference"] == "A red square."
    every = list(read_llava_conversations(path, turns="all"))
    assert [r["reference"] for r in every] == ["A red square.", "No, it is small."]
    assert len(every[1]["prompt"]) == 3 and every[1]["prompt"][-1]["content"][0]["text"] == "Is it big?"
    report = import_dataset("llava-conversations", path, tmp_path / "prompts")
    assert report.kind == "prompts" and read_manifest(tmp_path / "prompts")["kind"] == "prompts"


# ---------------------------------------------------------------------------- BeaverTails-V
def _beavertails_row(png, i, helpful="1", safer="2", safe1="no", safe2="yes", rates=(-2, 1)):
    return {
        "question": f"How do I use this {i}?", "image": {"bytes": png(), "path": None},
        "category": "dangerous_behavior", "image_severity": 2,
        "response_1": f"Detailed risky steps {i}.", "response_2": f"I cannot help with that {i}.",
        "response_1_from": "model-a", "response_2_from": "model-b",
        "more_helpful_response_id": helpful, "safer_response_id": safer,
        "is_response_1_safe": safe1, "is_response_2_safe": safe2,
        "response_1_harmless_rate": rates[0], "response_2_harmless_rate": rates[1],
        "response_1_helpful_rate": 3, "response_2_helpful_rate": 0,
    }


def _beavertails_folder(tmp_path, png):
    root = tmp_path / "BeaverTails-V"
    for cat, n in (("dangerous_behavior", 2), ("violence", 1)):
        for split in ("train", "evaluation"):
            rows = [_beavertails_row(png, f"{cat}-{split}-{i}") for i in range(n)]
            cols = {k: [r[k] for r in rows] for k in rows[0]}
            _parquet(root / cat / f"{split}-00000-of-00001.parquet", cols)
    return root


def test_beavertails_v_dual_labels(png, tmp_path):
    root = _beavertails_folder(tmp_path, png)
    records = list(read_beavertails_v(root, split="train"))
    assert len(records) == 3
    rec = records[0]
    # Ordered by helpfulness: response 1 is more helpful, response 2 is safer.
    assert rec["chosen"].startswith("Detailed risky") and rec["rejected"].startswith("I cannot help")
    assert rec["more_helpful"] == "chosen" and rec["safer"] == "rejected"
    assert rec["chosen_is_safe"] is False and rec["rejected_is_safe"] is True
    assert rec["chosen_harmless_rate"] == -2 and rec["rejected_harmless_rate"] == 1
    assert rec["chosen_helpful_rate"] == 3 and rec["rejected_helpful_rate"] == 0
    meta = json.loads(rec["meta"])
    assert meta == {"category": "dangerous_behavior", "image_severity": 2, "chosen_from": "model-a",
                    "rejected_from": "model-b"}
    assert len(list(read_beavertails_v(root))) == 6  # both splits


def test_beavertails_v_prefer_safer(png, tmp_path):
    root = _beavertails_folder(tmp_path, png)
    rec = next(read_beavertails_v(root, split="evaluation", prefer="safer"))
    assert rec["chosen"].startswith("I cannot help") and rec["safer"] == "chosen"
    assert rec["more_helpful"] == "rejected" and rec["chosen_is_safe"] is True
    assert json.loads(rec["meta"])["chosen_from"] == "model-b"


def test_beavertails_v_bad_labels(png, tmp_path):
    rows = [_beavertails_row(png, 0, helpful="3"), _beavertails_row(png, 1, safe1="maybe"),
            _beavertails_row(png, 2, rates=(-5, 1)), _beavertails_row(png, 3)]
    path = _parquet(tmp_path / "train.parquet", {k: [r[k] for r in rows] for k in rows[0]})
    errors = RowErrors(lenient=True)
    assert len(list(read_beavertails_v(path, errors=errors))) == 1
    assert [(e.row, e.field) for e in errors.skipped] == [
        (0, "more_helpful_response_id"), (1, "is_response_1_safe"), (2, "chosen_harmless_rate")]


# ---------------------------------------------------------------------------- PKU-SafeRLHF
def test_pku_saferlhf_text_pairs_with_optional_images(png, tmp_path):
    (tmp_path / "x.png").write_bytes(png())
    rows = [
        {"prompt": "How to stay safe?", "response_0": "Wear a helmet.", "response_1": "Do not bother.",
         "better_response_id": 0, "safer_response_id": 0, "is_response_0_safe": True,
         "is_response_1_safe": False, "response_0_severity_level": 0, "response_1_severity_level": 2,
         "response_1_harm_category": {"Endangering": True}},
        {"prompt": "What is in the picture?", "image": "x.png", "response_0": "A gun.", "response_1": "A toy.",
         "better_response_id": 1, "safer_response_id": 0, "is_response_0_safe": 1, "is_response_1_safe": 1},
    ]
    path = tmp_path / "pku.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    first, second = list(read_pku_saferlhf(path))
    assert first["images"] == [] and first["chosen"] == "Wear a helmet."
    assert first["safer"] == "chosen" and first["rejected_is_safe"] is False
    assert first["chosen_harmless_rate"] is None
    assert json.loads(first["meta"]) == {"chosen_severity_level": 0, "rejected_severity_level": 2,
                                         "rejected_harm_category": {"Endangering": True}}
    assert second["chosen"] == "A toy." and second["safer"] == "rejected" and len(second["images"]) == 1


def test_pku_saferlhf_bad_id(tmp_path):
    path = tmp_path / "pku.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 2,
                                "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": True})
                    + "\n{broken json\n")
    errors = RowErrors(lenient=True)
    assert list(read_pku_saferlhf(path, errors=errors)) == []
    assert [(e.row, e.field) for e in errors.skipped] == [(0, "better_response_id"), (1, None)]
    assert "line 2 is not valid JSON" in str(errors.skipped[1])


# ---------------------------------------------------------------------------- TRL
def test_trl_saved_folder_with_conversational_prompts(png, tmp_path):
    features = datasets.Features({
        "images": datasets.List(datasets.Image()),
        "prompt": datasets.List({"role": datasets.Value("string"),
                                 "content": datasets.List({"type": datasets.Value("string"),
                                                           "text": datasets.Value("string")})}),
        "chosen": datasets.List({"role": datasets.Value("string"),
                                 "content": datasets.List({"type": datasets.Value("string"),
                                                           "text": datasets.Value("string")})}),
        "rejected": datasets.List({"role": datasets.Value("string"),
                                   "content": datasets.List({"type": datasets.Value("string"),
                                                             "text": datasets.Value("string")})}),
        "origin": datasets.Value("string"),
    })
    row = {
        "images": [{"bytes": png(), "path": None}],
        "prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                {"type": "text", "text": "What color?"}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}],
        "origin": "hand-made",
    }
    datasets.DatasetDict({"train": datasets.Dataset.from_list([row], features=features)}).save_to_disk(
        str(tmp_path / "trl"))
    with pytest.raises(ValueError, match="splits"):
        list(read_trl(tmp_path / "trl"))
    [rec] = list(read_trl(tmp_path / "trl", split="train"))
    assert rec["chosen"] == "Red." and rec["rejected"] == "Blue." and rec["source"] == "trl"
    assert rec["prompt"][0]["content"][1]["text"] == "What color?"
    assert json.loads(rec["meta"]) == {"origin": "hand-made"}


def test_trl_jsonl_with_image_paths_and_canonical_extras(png, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png())
    rows = [{"images": ["imgs/a.png"], "prompt": "Describe.", "chosen": "A red square.", "rejected": "A circle.",
             "chosen_spans": [[2, 5]]},
            {"prompt": "Text only?", "chosen": "Yes.", "rejected": "No."},
            {"images": ["imgs/missing.png"], "prompt": "Describe.", "chosen": "a", "rejected": "b"},
            {"prompt": "No responses"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    errors = RowErrors(lenient=True)
    first, second = list(read_trl(path, errors=errors))
    assert first["chosen_spans"] == [[2, 5]] and first["images"][0]["bytes"] == png()
    assert second["images"] == [] and second["prompt"] == "Text only?"
    assert [(e.row, e.field) for e in errors.skipped] == [(2, "images[0]"), (3, "chosen")]


# ---------------------------------------------------------------------------- registry
def test_import_dataset_writes_and_validates(png, tmp_path):
    text = json.dumps({"question": "Q?", "chosen": "A man rides a blue bike.", "rejected": "A man rides a red bike."})
    path = _rlhf_v_file(tmp_path, png, [text, text])
    report = import_dataset("rlhf-v", path, tmp_path / "out")
    assert report.rows == 2 and report.sources == {"rlhf-v": 2}
    ds = load_preference_dataset(tmp_path / "out")
    assert ds[0]["chosen_spans"] == [[14, 24]]


def test_import_strict_failure_leaves_nothing(png, tmp_path):
    good = json.dumps({"question": "Q?", "chosen": "a blue one", "rejected": "a red one"})
    path = _rlhf_v_file(tmp_path, png, [good, good, "[]"])
    with pytest.raises(RecordError, match="row 2"):
        import_dataset("rlhf-v", path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = import_dataset("rlhf-v", path, tmp_path / "out", lenient=True)
    assert report.rows == 2 and len(report.skipped) == 1


def test_every_format_is_registered():
    assert set(IMPORTERS) == {"rlhf-v", "rlaif-v", "llava-rlhf", "beavertails-v", "pku-saferlhf", "trl",
                              "llava-conversations"}
    with pytest.raises(ValueError, match="unknown format"):
        import_dataset("vlfeedback", "x", "y")


def test_llava_multi_image_rows_keep_their_images_and_placeholders_in_order(png, tmp_path):
    question = "The left photo <image> and the right photo <image>: which is red?"
    rows = [_llava_row(0, ["000000224052.jpg", "000000000009.jpg"], question, 1),
            _llava_row(1, ["000000000009.jpg"], "<image>\nWhat is in the bowl?", 2)]
    path, coco, captions = _llava_rlhf_files(tmp_path, png, rows)
    records = list(read_llava_rlhf(path, image_root=coco, facts=captions))
    assert records[0]["prompt"] == "The left photo <image> and the right photo <image> : which is red?"
    assert [im["bytes"] for im in records[0]["images"]] == [(coco / "000000224052.jpg").read_bytes(),
                                                            (coco / "000000000009.jpg").read_bytes()]
    assert records[0]["facts"] is None  # captions describe one image
    assert records[1]["prompt"] == "What is in the bowl?" and records[1]["facts"] == ["A bowl of fruit."]
