"""The project store: submission checks, corrections applied, assignment, image confinement, tokens."""

import os
import sqlite3

import pytest

from mmalign.studio import StudioProject, SubmissionError, apply_corrections
from mmalign.studio.project import check_corrections, check_pair_labels

from .conftest import ANSWERS, make_project, png

ANSWER = ANSWERS[0]  # "a red cup and a cat on a table."


def test_apply_corrections_by_hand():
    # "a red cup and a cat on a table." : "red" = [2, 5), "a cat" = [14, 19)
    corrected, new_spans, old_spans = apply_corrections(
        ANSWER, [{"start": 2, "end": 5, "text": "blue"}, {"start": 14, "end": 19, "text": "a plate"}])
    assert corrected == "a blue cup and a plate on a table."
    assert old_spans == [[2, 5], [14, 19]]
    assert new_spans == [[2, 6], [15, 22]]
    assert corrected[2:6] == "blue" and corrected[15:22] == "a plate"
    # a deletion marks only the original side
    corrected, new_spans, old_spans = apply_corrections(ANSWER, [{"start": 9, "end": 19, "text": ""}])
    assert corrected == "a red cup on a table." and new_spans == [] and old_spans == [[9, 19]]


@pytest.mark.parametrize(("corrections", "field", "message"), [
    ([{"start": 20, "end": 99, "text": "x"}], "corrections[0]", "outside the answer (31 characters)"),
    ([{"start": 5, "end": 5, "text": "x"}], "corrections[0]", "empty or outside"),
    ([{"start": -1, "end": 3, "text": "x"}], "corrections[0]", "outside"),
    ([{"start": 0, "end": 5, "text": "x"}, {"start": 3, "end": 9, "text": "y"}], "corrections",
     "span [3, 9) overlaps span [0, 5)"),
    ([{"start": 2, "end": 5, "text": "red"}], "corrections[0].text", "repeats the marked text 'red'"),
    ([{"start": "2", "end": 5, "text": "x"}], "corrections[0].start", "expected an integer"),
    ([{"start": 2, "end": 5, "text": 7}], "corrections[0].text", "expected a string"),
    ([{"start": 0, "end": 31, "text": ""}], "corrections", "would be empty"),
    ([{"start": 0, "end": 31, "text": "  "}], "corrections[0].text", "has no visible character (U+0020, U+0020)"),
    # meaning, not only type: "ab" with "a" deleted and "b" replaced by "ab" is still "ab"
    ([{"start": 0, "end": 2, "text": ""}, {"start": 2, "end": 3, "text": "a r"}], "corrections",
     "leave the answer unchanged"),
    ([{"start": 2, "end": 5, "text": "\u200b"}], "corrections[0].text", "has no visible character (U+200B)"),
    ([{"start": 2, "end": 5, "text": "\u200b\ufeff\u00ad\u2060"}], "corrections[0].text", "no visible character"),
    ([{"start": 2, "end": 5, "text": "\u3164\u2800"}], "corrections[0].text", "no visible character"),
    ([{"start": 2, "end": 5, "text": "r\u200bed"}], "corrections[0].text", "differs only in invisible characters"),
    ([{"start": 2, "end": 5, "text": "blue\x07"}], "corrections[0].text", "control character U+0007"),
    ([{"start": 2, "end": 5, "text": "\ud800"}], "corrections[0].text", "lone surrogate U+D800"),
    ([{"start": 2**63, "end": 2**64, "text": "x"}], "corrections[0]", "outside the answer"),
])
def test_bad_corrections_name_the_field(corrections, field, message):
    with pytest.raises(SubmissionError) as info:
        check_corrections(ANSWER, {"corrections": corrections})
    assert info.value.field == field and message in info.value.message and info.value.status == 400


def test_corrections_sorted_and_pair_labels_checked():
    stored = check_corrections(ANSWER, {"corrections": [{"start": 14, "end": 19, "text": "a plate"},
                                                         {"start": 2, "end": 5, "text": "blue"}]})
    assert [c["start"] for c in stored["corrections"]] == [2, 14]
    good = {"more_helpful": "a", "safer": "b", "a_harmless": -3, "b_harmless": 3, "a_helpful": 0, "b_helpful": 3}
    assert check_pair_labels(good) == good
    for field, value, message in [("a_harmless", 4, "4 is outside -3…3"), ("b_helpful", -1, "-1 is outside 0…3"),
                                  ("safer", "c", 'expected "a" or "b"'), ("a_helpful", True, "an integer")]:
        with pytest.raises(SubmissionError) as info:
            check_pair_labels({**good, field: value})
        assert info.value.field == field and message in str(info.value)


def test_assign_overlap_share_and_balance(tmp_path):
    project = StudioProject.create(tmp_path / "p")
    for name in ("a", "b", "c"):
        project.add_annotator(name)
    project.add_items([{"kind": "correction", "images": [], "prompt": "q", "answer": f"answer {i}"}
                       for i in range(10)])
    report = project.assign(overlap=0.2, overlap_annotators=2, seed=1)
    # 2 of 10 items shared by 2 people: 8 + 2*2 = 12 assignments, 4 per annotator
    assert report == {"items": 10, "shared": 2, "assignments": 12}
    with project.connection() as conn:
        loads = [r[0] for r in conn.execute("SELECT COUNT(*) FROM assignments GROUP BY annotator_id")]
        per_item = [r[0] for r in conn.execute("SELECT COUNT(*) FROM assignments GROUP BY item_id")]
    assert loads == [4, 4, 4] and sorted(per_item) == [1] * 8 + [2] * 2
    assert project.assign(overlap=0.2)["items"] == 0  # nothing new
    with pytest.raises(ValueError, match="overlap must be within"):
        project.assign(overlap=1.5)


def test_queue_is_per_annotator(tmp_path):
    project, _ = make_project(tmp_path / "p", annotators=("alice", "bob"), overlap=0.0)
    with project.connection() as conn:
        alice, bob = project.annotators_of(conn)
        a, b = project.queue(conn, alice.id), project.queue(conn, bob.id)
    assert sorted(a + b) == [1, 2, 3, 4] and not set(a) & set(b)
    with pytest.raises(SubmissionError) as info:
        project.submit(alice.id, b[0], {"corrections": []})
    assert info.value.status == 404


def test_image_paths_stay_in_the_project(tmp_path):
    project, _ = make_project(tmp_path / "p")
    rel = project.items()[0].images[0]
    assert project.image_path(rel).read_bytes() == png("red")
    outside = tmp_path / "secret.png"
    outside.write_bytes(png("black"))
    os.symlink(outside, project.images_dir / "link.png")
    for bad in ["images/../studio.sqlite", str(outside), "../secret.png", "images/link.png", "studio.sqlite",
                "images/missing.png", ""]:
        with pytest.raises(PermissionError):
            project.image_path(bad)


def test_tokens_are_stored_only_as_hashes(tmp_path):
    project = StudioProject.create(tmp_path / "p")
    token = project.add_annotator("carol")
    raw = b"".join(p.read_bytes() for p in (tmp_path / "p").glob("studio.sqlite*"))
    assert token.encode() not in raw and len(token) >= 32
    assert project.sign_in(token)[2].name == "carol" and project.sign_in(token + "x") is None
    with pytest.raises(ValueError, match="already exists"):
        project.add_annotator("carol")
    assert sqlite3.connect(tmp_path / "p" / "studio.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_opening_a_folder_that_is_not_a_project(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a studio project"):
        StudioProject(tmp_path)


def test_public_names_resolve_without_importing_torch():
    import importlib
    import subprocess
    import sys

    import mmalign.studio as studio

    for name, module in studio._EXPORTS.items():
        assert getattr(studio, name) is getattr(importlib.import_module(module), name)
    code = "import sys, mmalign.studio.app, mmalign.studio.export; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_pair_labels_given_in_shown_order_are_stored_in_item_order(tmp_path):
    from mmalign.studio.project import shown_swapped, swap_pair_labels

    project, _ = make_project(tmp_path / "p", annotators=("alice", "bob"), overlap=1.0)
    alice, bob = project.annotators()
    assert (shown_swapped(4, alice.id), shown_swapped(4, bob.id)) == (True, False)
    shown = {"more_helpful": "a", "safer": "b", "a_harmless": 1, "b_harmless": -2, "a_helpful": 3, "b_helpful": 0}
    swapped = {"more_helpful": "b", "safer": "a", "a_harmless": -2, "b_harmless": 1, "a_helpful": 0, "b_helpful": 3}
    assert swap_pair_labels(shown) == swapped and swap_pair_labels(swapped) == shown
    project.submit(alice.id, 4, shown, as_shown=True)  # alice saw B first
    project.submit(bob.id, 4, shown, as_shown=True)  # bob saw A first
    stored = {n.annotator: n.payload for n in project.annotations()}
    assert stored == {"alice": swapped, "bob": shown}
    # about half of all (item, annotator) pairs are swapped
    assert 400 < sum(shown_swapped(i, a) for i in range(500) for a in (1, 2)) < 600
