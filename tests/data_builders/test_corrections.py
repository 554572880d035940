"""The RLHF-V diff rules on hand-worked examples; every span below was counted by hand."""

import json

import pytest

from mmalign.data_builders.corrections import (
    Edit,
    correction_record,
    correction_spans,
    diff_edits,
    read_corrections,
    tokenize,
    word_diff,
)
from mmalign.data_builders.schema import RecordError, RowErrors


def _texts(text, spans):
    return [text[a:b] for a, b in spans]


def test_tokens_are_words_and_punctuation_with_offsets():
    assert [(t.text, t.start, t.end) for t in tokenize("A cat, isn't it?")] == [
        ("A", 0, 1), ("cat", 2, 5), (",", 5, 6), ("isn", 7, 10), ("'", 10, 11), ("t", 11, 12),
        ("it", 13, 15), ("?", 15, 16),
    ]


def test_single_word_replacement_in_the_middle():
    original = "A man is riding a red bike down the busy street today."
    corrected = "A man is riding a blue bike down the busy street today."
    spans = correction_spans(original, corrected)
    assert spans.rejected == [[18, 21]] and spans.chosen == [[18, 22]]
    assert _texts(original, spans.rejected) == ["red"] and _texts(corrected, spans.chosen) == ["blue"]


def test_short_matching_blocks_are_absorbed_into_the_edit():
    # "The" (1 token) and "." (1 token) match but are shorter than 3, so they join the edits.
    original = "The cat sat on the red mat near a tree."
    corrected = "The dog sat on the red mat near a house."
    spans = correction_spans(original, corrected)
    assert spans.rejected == [[0, 7], [34, 39]]
    assert spans.chosen == [[0, 7], [34, 40]]
    assert _texts(corrected, spans.chosen) == ["The dog", "house."]


def test_min_match_decides_how_edits_merge():
    original = "It is a cat on a mat."
    corrected = "It is a dog on a rug."
    # "on a" (2 tokens) and "." are too short: one replacement from "cat" to the end.
    merged = correction_spans(original, corrected)
    assert merged.rejected == [[8, 21]] and merged.chosen == [[8, 21]]
    # With every match kept there are two separate one-word replacements.
    fine = correction_spans(original, corrected, min_match=1)
    assert fine.rejected == [[8, 11], [17, 20]] and _texts(corrected, fine.chosen) == ["dog", "rug"]


def test_two_swapped_words_give_two_segments_per_side():
    original = "The sky is green and the grass is blue in this photo."
    corrected = "The sky is blue and the grass is green in this photo."
    spans = correction_spans(original, corrected)
    assert spans.rejected == [[11, 16], [34, 38]]
    assert spans.chosen == [[11, 15], [33, 38]]


def test_pure_deletion_and_insertion_are_not_corrected_segments():
    long = "There are two dogs and a ball on the grass in the park."
    short = "There are two dogs on the grass in the park."
    assert diff_edits(long, short) == [Edit("delete", (19, 29), None)]
    assert correction_spans(long, short).chosen == [] and correction_spans(long, short).rejected == []
    assert diff_edits(short, long) == [Edit("insert", None, (19, 29))]
    assert correction_spans(short, long).rejected == []


def test_replacement_next_to_an_insertion_only_marks_the_replacement():
    original = "Two cats sit on a sofa in the living room."
    corrected = "Two dogs sit on a sofa in the living room with a ball."
    edits = diff_edits(original, corrected)
    # "Two" alone is too short to anchor, so the first edit starts at 0.
    assert edits[0] == Edit("replace", (0, 8), (0, 8))
    # The tail: "." is replaced by "with a ball." (both sides non-empty, so a replacement).
    assert edits[1] == Edit("replace", (41, 42), (42, 54))
    assert correction_spans(original, corrected).chosen == [[0, 8], [42, 54]]


def test_whole_answer_replaced_when_nothing_matches():
    assert correction_spans("yes", "no").rejected == [[0, 3]]
    assert correction_spans("yes", "no").chosen == [[0, 2]]
    assert correction_spans("Same answer here.", "Same answer here.").chosen == []


def test_word_diff_shows_every_change():
    original = "It is a cat on a mat."
    corrected = "It is a dog on a rug."
    assert word_diff(original, corrected) == [
        Edit("replace", (8, 11), (8, 11)),
        Edit("replace", (17, 20), (17, 20)),
    ]
    assert word_diff("a b c", "a c") == [Edit("delete", (2, 3), None)]


def test_correction_record_orients_the_pair(png):
    rec = correction_record("A red bike.", "A blue bike.", prompt="What?", images=[png()])
    assert rec["chosen"] == "A blue bike." and rec["rejected"] == "A red bike."
    # No matching block reaches 3 tokens, so the whole answers are the corrected segments.
    assert rec["chosen_spans"] == [[0, 12]] and rec["rejected_spans"] == [[0, 11]]
    rec = correction_record("A man rides a red bike.", "A man rides a blue bike.", prompt="What?")
    assert rec["chosen_spans"] == [[14, 24]] and rec["rejected_spans"] == [[14, 23]]


def test_read_corrections_file(png, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png())
    rows = [
        {"id": "r1", "image": "img/a.png", "question": "<image>\nWhat is it?", "original": "A man is riding a red bike down the road.",
         "corrected": "A man is riding a blue bike down the road.", "annotator": "x"},
        {"id": "r2", "image": "img/a.png", "question": "What?", "original": "same text", "corrected": "same text"},
        {"id": "r3", "image": "../a.png", "question": "What?", "original": "one", "corrected": "two"},
    ]
    path = tmp_path / "corrections.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(RecordError) as info:
        list(read_corrections(path))
    assert (info.value.row, info.value.record_id, info.value.field) == (1, "r2", "rejected")
    errors = RowErrors(lenient=True)
    records = list(read_corrections(path, errors=errors))
    assert len(records) == 1 and errors.count == 2
    assert [e.field for e in errors.skipped] == ["rejected", "images[0]"]
    rec = records[0]
    assert rec["prompt"] == "<image>\nWhat is it?"
    assert rec["chosen_spans"] == [[18, 22]] and json.loads(rec["meta"]) == {"annotator": "x", "id": "r1"}
