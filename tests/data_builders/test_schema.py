import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmalign.data_builders.images import ImageOptions
from mmalign.data_builders.schema import (
    COLUMNS,
    RecordError,
    RowErrors,
    column_names,
    features,
    schema_markdown,
    validate_prompt_record,
    validate_record,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_valid_record_comes_back_in_stored_form(record, png):
    out = validate_record(record(meta={"b": 2, "a": 1}))
    assert list(out) == column_names()
    assert out["images"] == [{"bytes": png(), "path": None}]
    assert out["meta"] == '{"a": 1, "b": 2}'
    assert out["chosen_spans"] == [[2, 5]]


def test_optional_columns_default_to_none(png):
    out = validate_record({"images": [png()], "prompt": "q?", "chosen": "yes", "rejected": "no"})
    assert out["facts"] is None and out["chosen_spans"] is None and out["safer"] is None
    assert out["source"] is None


def test_pil_images_are_stored_as_png():
    img = Image.new("RGB", (4, 4), "blue")
    out = validate_record({"images": [img], "prompt": "q", "chosen": "a", "rejected": "b"})
    assert Image.open(io.BytesIO(out["images"][0]["bytes"])).format == "PNG"


def test_conversational_responses_become_text(png):
    out = validate_record({
        "images": [png()],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        "chosen": [{"role": "assistant", "content": "A cat."}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A dog."}]}],
    })
    assert out["chosen"] == "A cat." and out["rejected"] == "A dog."
    assert out["prompt"][0]["content"][0] == {"type": "image", "text": None}


def _bomb(png):
    return [png(size=(64, 64))]


BAD = [
    ("missing chosen", lambda r, png: r.pop("chosen"), "chosen", "missing"),
    ("mistyped chosen", lambda r, png: r.update(chosen=42), "chosen", "expected a string"),
    ("empty rejected", lambda r, png: r.update(rejected="   "), "rejected", "empty"),
    ("identical responses", lambda r, png: r.update(rejected=r["chosen"], rejected_spans=None), "rejected", "identical"),
    ("span past the end", lambda r, png: r.update(chosen_spans=[[2, 99]]), "chosen_spans", "out of range"),
    ("negative span", lambda r, png: r.update(chosen_spans=[[-1, 3]]), "chosen_spans", "out of range"),
    ("empty span", lambda r, png: r.update(rejected_spans=[[3, 3]]), "rejected_spans", "empty"),
    ("reversed span", lambda r, png: r.update(rejected_spans=[[5, 2]]), "rejected_spans", "empty"),
    ("overlapping spans", lambda r, png: r.update(rejected_spans=[[0, 6], [4, 8]]), "rejected_spans", "overlaps"),
    ("unsorted spans", lambda r, png: r.update(rejected_spans=[[6, 8], [0, 2]]), "rejected_spans", "precedes"),
    ("float span", lambda r, png: r.update(chosen_spans=[[0.0, 2]]), "chosen_spans", "integers"),
    ("spans not a list", lambda r, png: r.update(chosen_spans="0-2"), "chosen_spans", "list"),
    ("corrupt image", lambda r, png: r.update(images=[b"not an image at all"]), "images[0]", "not a readable image"),
    ("truncated image", lambda r, png: r.update(images=[png(), png(size=(64, 64))[:60]]), "images[1]", "truncated"),
    ("image of wrong type", lambda r, png: r.update(images=[3.5]), "images[0]", "expected image bytes"),
    ("escaping image path", lambda r, png: r.update(images=["../outside.png"]), "images[0]", "escapes"),
    ("harmless rate out of range", lambda r, png: r.update(chosen_harmless_rate=4), "chosen_harmless_rate", "outside"),
    ("helpful rate as bool", lambda r, png: r.update(rejected_helpful_rate=True), "rejected_helpful_rate", "integer"),
    ("helpful rate negative", lambda r, png: r.update(chosen_helpful_rate=-1), "chosen_helpful_rate", "outside"),
    ("bad side label", lambda r, png: r.update(safer="first"), "safer", "'chosen' or 'rejected'"),
    ("is_safe as string", lambda r, png: r.update(chosen_is_safe="yes"), "chosen_is_safe", "true/false"),
    ("unknown column", lambda r, png: r.update(choosen="typo"), "choosen", "not a column"),
    ("facts not strings", lambda r, png: r.update(facts=["ok", 3]), "facts[1]", "string"),
    ("meta not JSON", lambda r, png: r.update(meta="{oops"), "meta", "JSON"),
    ("meta not an object", lambda r, png: r.update(meta=[1, 2]), "meta", "object"),
    ("prompt image parts mismatch",
     lambda r, png: r.update(prompt=[{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                                  {"type": "text", "text": "hi"}]}]),
     "prompt", "2 image part(s)"),
    ("prompt ends with assistant",
     lambda r, png: r.update(prompt=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
     "prompt", "last message"),
    ("rejected images count", lambda r, png: r.update(rejected_images=[png((9, 9, 9)), png((8, 8, 8))]),
     "rejected_images", "has 2 image(s) but 'images' has 1"),
    ("rejected images same as images", lambda r, png: r.update(rejected_images=[png()]), "rejected_images",
     "same images"),
    ("corrupt rejected image", lambda r, png: r.update(rejected_images=[b"nope"]), "rejected_images[0]",
     "not a readable image"),
    ("same answer without rejected images", lambda r, png: r.update(rejected=r["chosen"], rejected_spans=None,
                                                                    rejected_images=[]), "rejected", "image-contrast"),
    ("bad role", lambda r, png: r.update(prompt=[{"role": "robot", "content": "hi"}]), "prompt[0].role", "robot"),
]


def test_image_contrast_pair_keeps_one_answer_and_two_images(record, png):
    """ImageDPO / mDPO data: the same answer, the rejected side shown a different image."""
    out = validate_record(record(rejected="A red cup on the table.", chosen="A red cup on the table.",
                                 chosen_spans=None, rejected_spans=None, rejected_images=[png((0, 0, 0))]))
    assert out["chosen"] == out["rejected"]
    assert out["rejected_images"] == [{"bytes": png((0, 0, 0)), "path": None}]
    assert validate_record(record())["rejected_images"] is None  # absent: the rejected side sees 'images'


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_records_name_row_and_field(case, record, png, tmp_path):
    _, mutate, field, words = case
    bad = record()
    mutate(bad, png)
    with pytest.raises(RecordError) as info:
        validate_record(bad, row=7, record_id="abc", images=ImageOptions(root=tmp_path))
    err = info.value
    assert err.row == 7 and err.field == field
    assert str(err).startswith(f"row 7 (id abc), field {field!r}: ")
    assert words in str(err)


def test_decompression_bomb_is_refused(record, png):
    with pytest.raises(RecordError, match="decompression bomb") as info:
        validate_record(record(images=[png(size=(64, 64))]), row=0, images=ImageOptions(max_pixels=1000))
    assert info.value.field == "images[0]"


def test_pil_pixel_limit_is_followed_by_default(record, png, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(RecordError, match="decompression bomb"):
        validate_record(record(images=[png(size=(16, 16))]))
    # Between the limit and twice it PIL only warns; that is refused too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(RecordError, match="decompression bomb"):
        validate_record(record(images=[png(size=(8, 8))]), images=ImageOptions(max_pixels=None))


def test_row_errors_strict_raises_lenient_counts():
    err = RecordError("is missing", field="chosen", row=3)
    with pytest.raises(RecordError):
        RowErrors()(err)
    lenient = RowErrors(lenient=True)
    lenient(err)
    lenient(RecordError("bad", field="images[0]", row=5))
    lenient(RecordError("bad", field="chosen", row=9))
    assert lenient.count == 3
    assert lenient.summary() == "skipped 3 rows (2 × 'chosen', 1 × 'images[0]')"


def test_prompt_record_validation(png):
    out = validate_prompt_record({"images": [png()], "prompt": "Describe.", "reference": "A red square."})
    assert out["reference"] == "A red square." and list(out) == column_names("prompts")
    with pytest.raises(RecordError, match="field 'chosen'"):
        validate_prompt_record({"images": [], "prompt": "q", "chosen": "x"}, row=0)


def test_features_cover_every_column():
    for kind in ("preference", "prompts"):
        assert list(features(kind)) == column_names(kind)
    assert features(conversational=True)["prompt"] != features()["prompt"]


def test_docs_show_the_generated_schema_table():
    text = DOCS.read_text()
    assert schema_markdown("preference") in text, "docs/data.md schema table is out of date"
    assert schema_markdown("prompts") in text
    assert len(COLUMNS) == len({c.name for c in COLUMNS})


def test_stored_meta_round_trips_as_json(record):
    assert json.loads(validate_record(record(meta='{"k": [1, 2]}'))["meta"]) == {"k": [1, 2]}
