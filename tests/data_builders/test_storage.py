import json

import datasets
import pytest

from mmalign.data_builders.schema import RecordError, validate_record
from mmalign.data_builders.storage import (
    MANIFEST,
    load_preference_dataset,
    read_manifest,
    save_preference_dataset,
    save_prompt_set,
    validate_dataset,
    write_dataset,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".chunks-", ".old-")))


def test_round_trip_keeps_every_column(record, png, tmp_path):
    records = [record(chosen=f"A red cup number {i}.", chosen_spans=[[2, 5]]) for i in range(3)]
    report = save_preference_dataset(records, tmp_path / "ds")
    assert report.rows == 3 and report.sources == {"test": 3}
    ds = load_preference_dataset(tmp_path / "ds")
    assert isinstance(ds.features["images"], datasets.List)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    row = ds[1]
    assert row["chosen"] == "A red cup number 1." and row["chosen_spans"] == [[2, 5]]
    assert row["images"][0].size == (8, 8) and row["images"][0].getpixel((0, 0)) == (255, 0, 0)
    assert row["chosen_harmless_rate"] == 2 and row["rejected_is_safe"] is True
    assert json.loads(row["meta"]) == {"id": 1}
    assert read_manifest(tmp_path / "ds")["rows"] == 3
    assert _leftovers(tmp_path) == []


def test_saved_folder_loads_with_plain_datasets(record, tmp_path):
    save_preference_dataset([record()], tmp_path / "ds")
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert ds.column_names[:4] == ["images", "prompt", "chosen", "rejected"]


def test_chunked_writing_matches_single_chunk(record, tmp_path):
    records = [validate_record(record(chosen=f"A red cup {i}.", chosen_spans=None)) for i in range(5)]
    write_dataset(records, tmp_path / "chunked", chunk_rows=2)
    write_dataset(records, tmp_path / "single", chunk_rows=100)
    a = datasets.load_from_disk(str(tmp_path / "chunked"))
    b = datasets.load_from_disk(str(tmp_path / "single"))
    assert a.with_format("arrow")[:].equals(b.with_format("arrow")[:])
    assert _leftovers(tmp_path) == []


def test_strict_save_writes_nothing_on_a_bad_row(record, tmp_path):
    records = [record(), record(), record(chosen_spans=[[0, 500]]), record()]
    with pytest.raises(RecordError) as info:
        save_preference_dataset(records, tmp_path / "ds")
    assert info.value.row == 2 and info.value.field == "chosen_spans"
    assert not (tmp_path / "ds").exists()
    assert _leftovers(tmp_path) == []


def test_crash_mid_write_leaves_no_partial_folder_and_keeps_the_old_one(record, tmp_path):
    out = tmp_path / "ds"
    save_preference_dataset([record(source="old")], out)
    before = sorted(p.name for p in out.iterdir())

    def crashing():
        for i in range(5):
            if i == 3:
                raise KeyboardInterrupt("power cut")
            yield validate_record(record(source="new"))

    with pytest.raises(KeyboardInterrupt):
        write_dataset(crashing(), out, chunk_rows=2)  # two chunks already on disk when it dies
    assert sorted(p.name for p in out.iterdir()) == before
    assert load_preference_dataset(out)["source"] == ["old"]
    assert _leftovers(tmp_path) == []


def test_lenient_save_counts_and_skips(record, png, tmp_path):
    records = [record(), record(images=[b"junk"]), record(rejected=""), record()]
    report = save_preference_dataset(records, tmp_path / "ds", lenient=True)
    assert report.rows == 2
    assert [(e.row, e.field) for e in report.skipped] == [(1, "images[0]"), (2, "rejected")]
    assert read_manifest(tmp_path / "ds")["skipped"] == 2


def test_all_rows_bad_is_an_error_even_when_lenient(record, tmp_path):
    with pytest.raises(ValueError, match="no valid records"):
        save_preference_dataset([record(chosen="")], tmp_path / "ds", lenient=True)
    assert not (tmp_path / "ds").exists()


def test_mixed_prompt_forms_are_refused(record, png, tmp_path):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(RecordError, match="mixes text and conversational"):
        save_preference_dataset([record(), record(prompt=conv)], tmp_path / "ds")


def test_conversational_dataset_round_trips(record, tmp_path):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    save_preference_dataset([record(prompt=conv)], tmp_path / "ds")
    ds = load_preference_dataset(tmp_path / "ds")
    assert ds[0]["prompt"][0]["content"][1]["text"] == "What is it?"
    assert read_manifest(tmp_path / "ds")["conversational"] is True


def _write_raw(tmp_path, rows):
    """A folder written with plain `datasets`, bypassing validation (as a foreign tool would)."""
    path = tmp_path / "raw"
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def test_load_validates_and_names_row_and_field(tmp_path):
    path = _write_raw(tmp_path, [
        {"prompt": "q", "chosen": "good answer", "rejected": "bad answer", "chosen_spans": [[0, 4]]},
        {"prompt": "q", "chosen": "good", "rejected": "bad", "chosen_spans": [[2, 40]]},
    ])
    with pytest.raises(RecordError) as info:
        load_preference_dataset(path)
    assert (info.value.row, info.value.field) == (1, "chosen_spans")
    ds = load_preference_dataset(path, lenient=True)
    assert len(ds) == 1 and ds[0]["chosen"] == "good answer"


def test_load_does_not_touch_the_folder(tmp_path):
    path = _write_raw(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                 {"prompt": "q", "chosen": "a", "rejected": ""}])
    before = sorted(p.name for p in path.iterdir())
    load_preference_dataset(path, lenient=True)
    validate_dataset(path, lenient=True)
    assert sorted(p.name for p in path.iterdir()) == before


def test_load_accepts_trl_datasets_with_extra_columns(tmp_path):
    path = _write_raw(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b", "score": 0.5}])
    assert load_preference_dataset(path)["score"] == [0.5]
    assert read_manifest(path) == {}


def test_corrupt_image_in_a_saved_dataset_is_caught_on_load(record, png, tmp_path):
    good = png(size=(32, 32))
    path = tmp_path / "raw"
    features = datasets.Features({"images": datasets.List(datasets.Image()), "prompt": datasets.Value("string"),
                                  "chosen": datasets.Value("string"), "rejected": datasets.Value("string")})
    datasets.Dataset.from_list(
        [{"images": [{"bytes": good, "path": None}], "prompt": "q", "chosen": "a", "rejected": "b"},
         {"images": [{"bytes": good[: len(good) // 2], "path": None}], "prompt": "q", "chosen": "a", "rejected": "b"}],
        features=features,
    ).save_to_disk(str(path))
    report = validate_dataset(path, lenient=True)
    assert report.kept == [0] and [(e.row, e.field) for e in report.errors] == [(1, "images[0]")]
    assert "truncated" in str(report.errors[0])
    # Without full decoding the truncated file goes unnoticed: that is what the check is for.
    assert validate_dataset(path, check_images=False).ok


def test_prompt_sets_save_and_load(png, tmp_path):
    save_prompt_set([{"images": [png()], "prompt": "Describe.", "reference": "Red.", "facts": ["A red cup."],
                      "objects": ["cup"]}], tmp_path / "p")
    assert read_manifest(tmp_path / "p")["kind"] == "prompts"
    ds = load_preference_dataset(tmp_path / "p")
    assert ds.column_names == ["images", "prompt", "facts", "reference", "objects", "source", "meta"]
    assert ds[0]["objects"] == ["cup"]
    assert ds[0]["facts"] == ["A red cup."] and ds[0]["reference"] == "Red."
    assert (tmp_path / "p" / MANIFEST).exists()
