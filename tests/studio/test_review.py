"""Nothing lost, nothing half-done: submissions checked for what they mean, reviewed and dropped
by the owner, an export that skips (and reports) what cannot become a record, loads that
check every option first and can be rerun, and ids that cannot exist answering 404."""

import json
import sqlite3

import pytest
from PIL import Image

from mmalign.cli import main
from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset
from mmalign.studio import StudioProject, create_app, export_project

from .conftest import make_project, png
from .test_app import count, csrf_of, post, sign_in

# On answer "ab": delete "a", replace "b" by "ab" -> "ab" again (the example)
UNCHANGED = {"corrections": [{"start": 0, "end": 1, "text": ""}, {"start": 1, "end": 2, "text": "ab"}]}
AB = {"kind": "correction", "images": [png("white")], "prompt": "Say ab.", "answer": "ab", "source": "test"}


@pytest.fixture()
def ab_studio(tmp_path):
    """The conftest project (items 1-4, alice and bob share everything) plus item 5 answering "ab"."""
    return make_project(tmp_path / "proj", extra_items=[AB])


def legacy_submit(project, annotator_id, item_id, payload):
    """Store a submission the way the code before these checks did: straight into the table."""
    with project.connection() as conn, project.transaction(conn):
        conn.execute("INSERT INTO annotations(item_id, annotator_id, payload, created) VALUES (?, ?, ?, ?)",
                     (item_id, annotator_id, json.dumps(payload), "2024-01-01T00:00:00+00:00"))


def make_legacy(path):
    """Turn a project back into schema 1 (no table of dropped submissions), as older versions made it."""
    conn = sqlite3.connect(path / "studio.sqlite")
    conn.execute("DROP TABLE IF EXISTS dropped")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


# ---------------------------------------------------------------------------- submission checks
def test_unchanged_answer_is_400_and_stores_nothing(ab_studio):
    project, tokens = ab_studio
    client, _ = sign_in(create_app(project), tokens["alice"])
    response = post(client, "/api/items/5/annotation", UNCHANGED, csrf_of(client))
    assert response.status_code == 400
    body = response.get_json()
    assert "leave the answer unchanged" in body["error"] and body["field"] == "corrections"
    assert count(project) == 0 and 5 in client.get("/api/queue").get_json()["pending"]


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d\ufeff", "\u2060 \u00ad", "\u3164"])
def test_invisible_correction_is_400_and_stores_nothing(ab_studio, text):
    project, tokens = ab_studio
    client, _ = sign_in(create_app(project), tokens["alice"])
    # "a red cup and a cat on a table.": replace "red" by characters that show nothing
    response = post(client, "/api/items/1/annotation",
                    {"corrections": [{"start": 2, "end": 5, "text": text}]}, csrf_of(client))
    assert response.status_code == 400
    assert "has no visible character" in response.get_json()["error"]
    assert count(project) == 0


def test_deeply_nested_json_is_400(ab_studio):
    project, tokens = ab_studio
    client, _ = sign_in(create_app(project), tokens["alice"])
    body = '{"corrections": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/api/items/1/annotation", data=body, content_type="application/json",
                           headers={"X-CSRF-Token": csrf_of(client)})
    assert response.status_code == 400 and count(project) == 0


@pytest.mark.parametrize("path", ["/item/{}", "/image/{}/0"])
@pytest.mark.parametrize("item", [2**63, 2**64, 10**30, -1, "x", "1.5", "0x1"])
def test_ids_that_cannot_exist_are_404_not_500(ab_studio, path, item):
    project, tokens = ab_studio
    client, _ = sign_in(create_app(project), tokens["alice"])
    assert client.get(path.format(item)).status_code == 404


@pytest.mark.parametrize("item", [2**63 - 1, 2**63, 2**64, 10**30, 0, -1, "x"])
def test_submitting_or_skipping_ids_that_cannot_exist_is_404(ab_studio, item):
    project, tokens = ab_studio
    client, _ = sign_in(create_app(project), tokens["alice"])
    csrf = csrf_of(client)
    assert post(client, f"/api/items/{item}/annotation", {"corrections": []}, csrf).status_code == 404
    assert post(client, f"/api/items/{item}/skip", {}, csrf).status_code == 404
    assert count(project) == 0


def test_huge_ids_through_the_python_api(ab_studio):
    from mmalign.studio import SubmissionError

    project, _ = ab_studio
    alice = project.annotators()[0]
    with pytest.raises(SubmissionError) as info:
        project.submit(alice.id, 2**63, {"corrections": []})
    assert info.value.status == 404
    with pytest.raises(ValueError, match="no submission"):
        project.drop_submission(2**64, "x")
    with pytest.raises(ValueError, match="no item"):
        project.submissions(item=2**64)


# ---------------------------------------------------------------------------- export what is valid
def test_export_skips_a_legacy_bad_submission_and_reports_it(ab_studio, tmp_path, capsys):
    project, tokens = ab_studio
    alice, bob = project.annotators()
    project.submit(alice.id, 1, {"corrections": [{"start": 2, "end": 5, "text": "blue"}]})
    project.submit(bob.id, 4, {"more_helpful": "a", "safer": "a", "a_harmless": 3, "b_harmless": -3,
                               "a_helpful": 2, "b_helpful": 1})
    make_legacy(project.path)
    legacy_submit(project, bob.id, 5, UNCHANGED)  # accepted with 200 by the old code
    legacy_submit(project, alice.id, 2, {"corrections": [{"start": 0, "end": 5, "text": "\u200b"}]})
    project = StudioProject(project.path)  # opening an old project adds what schema 2 needs

    # before: `rejected is identical to chosen` and no export at all
    report = export_project(project, tmp_path / "out")
    assert (report.rows, report.corrections, report.pairs) == (2, 1, 1)
    assert [(s.item, s.annotator) for s in report.skipped] == [(5, "bob"), (2, "alice")]
    rows = load_preference_dataset(tmp_path / "out")
    assert rows[0]["chosen"] == "a blue cup and a cat on a table."

    invalid = project.submissions(state="invalid")
    assert [(s.item_id, s.annotator) for s in invalid] == [(5, "bob"), (2, "alice")]
    assert "leave the answer unchanged" in invalid[0].problem and "no visible character" in invalid[1].problem
    assert str(report.skipped[0]).startswith(f"submission {invalid[0].id} (item 5, bob): ")
    project.set_owner("alice")  # the agreement page is the owner's
    client, _ = sign_in(create_app(project), tokens["alice"])
    assert client.get("/agreement").status_code == 200  # the agreement page does not break either

    assert main(["studio", "export", "--project", str(project.path), "--out", str(tmp_path / "out2")]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 rows" in out and "skipped 2 submissions that cannot become a valid record" in out
    assert f"submission {invalid[0].id} (item 5, bob): field 'corrections': the corrections leave" in out
    assert main(["studio", "status", "--project", str(project.path)]) == 0
    assert "submissions: 2 valid, 2 invalid, 0 dropped" in capsys.readouterr().out


def test_export_with_only_bad_submissions_names_them(ab_studio, tmp_path):
    project, _ = ab_studio
    legacy_submit(project, project.annotators()[1].id, 5, UNCHANGED)
    with pytest.raises(ValueError, match=r"no annotation to export yet .*skipped submission 1 \(item 5, bob\)"):
        export_project(project, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_skips_a_submission_whose_image_is_gone(ab_studio, tmp_path):
    project, _ = ab_studio
    alice = project.annotators()[0]
    project.submit(alice.id, 1, {"corrections": [{"start": 2, "end": 5, "text": "blue"}]})
    project.submit(alice.id, 2, {"corrections": [{"start": 11, "end": 15, "text": "red"}]})
    project.image_path(project.items()[1].images[0]).unlink()
    report = export_project(project, tmp_path / "out")
    assert report.rows == 1 and [(s.item, s.annotator) for s in report.skipped] == [(2, "alice")]
    assert "images/" in report.skipped[0].reason


# ---------------------------------------------------------------------------- review and drop
def test_drop_through_the_api_is_recorded_and_requeues(tmp_path):
    project, tokens = make_project(tmp_path / "p", overlap=0.0, extra_items=[AB])
    alice, bob = project.annotators()
    with project.connection() as conn:
        owner = {item: "alice" if item in project.queue(conn, alice.id) else "bob" for item in range(1, 6)}
    five = alice if owner[5] == "alice" else bob
    other = bob if five is alice else alice
    legacy_submit(project, five.id, 5, UNCHANGED)
    (bad,) = project.submissions(state="invalid")

    with pytest.raises(ValueError, match="give a reason"):
        project.drop_submission(bad.id, "  ")
    result = project.drop_submission(bad.id, "unchanged answer", by="owner")
    assert result == {"submission": bad.id, "item": 5, "annotator": five.name, "reopened": False,
                      "queued_for": other.name, "other_submissions": 0}
    (dropped,) = project.submissions(state="dropped")
    assert dropped.id == bad.id and dropped.payload == UNCHANGED  # kept, never deleted
    assert (dropped.dropped.by, dropped.dropped.reason, dropped.dropped.reopened) == ("owner", "unchanged answer",
                                                                                      False)
    assert dropped.dropped.at.startswith("20")
    with project.connection() as conn:
        assert 5 in project.queue(conn, other.id) and 5 not in project.queue(conn, five.id)
    with pytest.raises(ValueError, match=f"submission {bad.id} was already dropped .* by owner: unchanged answer"):
        project.drop_submission(bad.id, "again")
    assert project.status()["submissions"] == {"valid": 0, "invalid": 0, "dropped": 1}

    # the other annotator corrects it for real; ids are never reused
    new = project.submit(other.id, 5, {"corrections": [{"start": 0, "end": 2, "text": "ac"}]})
    assert new > bad.id
    report = export_project(project, tmp_path / "out")
    assert (report.rows, report.skipped, report.dropped) == (1, (), 1)


def test_reopen_gives_the_item_back_to_the_same_annotator(ab_studio):
    project, tokens = ab_studio
    app = create_app(project)
    client, _ = sign_in(app, tokens["alice"])
    csrf = csrf_of(client)
    first = post(client, "/api/items/1/annotation",
                 {"corrections": [{"start": 2, "end": 5, "text": "blue"}]}, csrf).get_json()["annotation"]
    assert 1 not in client.get("/api/queue").get_json()["pending"]
    result = project.drop_submission(first, "wrong colour; look again", reopen=True)
    assert result["reopened"] and result["queued_for"] == "alice"
    assert 1 in client.get("/api/queue").get_json()["pending"]
    response = post(client, "/api/items/1/annotation", {"corrections": [{"start": 2, "end": 5, "text": "green"}]},
                    csrf)
    assert response.status_code == 200 and response.get_json()["annotation"] > first
    states = [(s.id, s.state) for s in project.submissions(item=1)]
    assert states == [(first, "dropped"), (response.get_json()["annotation"], "valid")]
    # a removed annotator cannot get anything back
    project.remove_annotator("alice")
    with pytest.raises(ValueError, match="was removed"):
        project.drop_submission(response.get_json()["annotation"], "x", reopen=True)


def test_dropping_a_shared_items_submission_keeps_the_other(ab_studio):
    project, _ = ab_studio
    alice, bob = project.annotators()
    a = project.submit(alice.id, 1, {"corrections": [{"start": 2, "end": 5, "text": "blue"}]})
    project.submit(bob.id, 1, {"corrections": [{"start": 2, "end": 9, "text": "blue mug"}]})
    result = project.drop_submission(a, "sloppy", by="owner")
    assert result["other_submissions"] == 1 and result["queued_for"] is None
    assert [s.annotator for s in project.submissions(state="valid")] == ["bob"]
    with project.connection() as conn:
        assert project.progress(conn, alice.id) == (0, 4)  # the dropped assignment ended


def test_drop_is_all_or_nothing(ab_studio):
    project, _ = ab_studio
    alice = project.annotators()[0]
    a = project.submit(alice.id, 1, {"corrections": []})
    with pytest.raises(ValueError, match="no submission 99"):
        project.drop_submissions([a, 99], "x")
    assert [s.state for s in project.submissions()] == ["valid"]


def test_submissions_cli_list_and_drop(ab_studio, capsys):
    project, _ = ab_studio
    alice, bob = project.annotators()
    proj = str(project.path)
    good = project.submit(alice.id, 1, {"corrections": [{"start": 2, "end": 5, "text": "blue"}]})
    legacy_submit(project, bob.id, 5, UNCHANGED)
    bad = good + 1

    assert main(["studio", "submissions", "list", "--project", proj]) == 0
    out = capsys.readouterr().out
    assert f"{good:>6}  item 1" in out and "[2, 5) → 'blue'" in out
    assert "invalid: field 'corrections': the corrections leave the answer unchanged" in out
    assert "2 submissions: 1 valid, 1 invalid, 0 dropped" in out
    assert main(["studio", "submissions", "list", "--project", proj, "--state", "invalid"]) == 0
    out = capsys.readouterr().out
    assert "item 5" in out and "item 1 " not in out

    # bad input: one error line, exit 2, nothing dropped
    for argv, message in [(["--id", "99", "--reason", "x"], "no submission 99"),
                          (["--id", str(bad), "--reason", " "], "give a reason"),
                          (["--reason", "x"], "give --id ID [ID ...] or --all-invalid"),
                          (["--id", str(2**64), "--reason", "x"], "no submission")]:
        assert main(["studio", "submissions", "drop", "--project", proj, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert main(["studio", "submissions", "list", "--project", proj, "--item", "99"]) == 2
    assert "no item 99" in capsys.readouterr().err
    assert main(["studio", "submissions", "list", "--project", proj, "--annotator", "carol"]) == 2
    assert "no annotator named 'carol'" in capsys.readouterr().err
    assert [s.state for s in project.submissions()] == ["valid", "invalid"]

    assert main(["studio", "submissions", "drop", "--project", proj, "--all-invalid", "--reason", "unchanged",
                 "--by", "owner"]) == 0
    out = capsys.readouterr().out
    # alice already has item 5 pending (overlap 1), so it stays in her queue
    assert f"dropped submission {bad} (item 5, bob): the item is queued for alice" in out
    assert main(["studio", "submissions", "drop", "--project", proj, "--id", str(good), "--reason", "redo",
                 "--reopen"]) == 0
    assert f"dropped submission {good} (item 1, alice): reopened in alice's queue" in capsys.readouterr().out
    assert main(["studio", "submissions", "list", "--project", proj, "--state", "dropped"]) == 0
    out = capsys.readouterr().out
    assert "by owner: unchanged" in out and "(reopened): redo" in out
    assert main(["studio", "submissions", "drop", "--project", proj, "--all-invalid", "--reason", "x"]) == 0
    assert "nothing dropped" in capsys.readouterr().out


# ---------------------------------------------------------------------------- loading
@pytest.fixture()
def preference_set(tmp_path):
    records = [{"images": [Image.new("RGB", (32, 32), "red")], "prompt": "Describe the image.",
                "chosen": "a red square.", "rejected": "a red square and a cat.", "source": "src"},
               {"images": [Image.new("RGB", (32, 32), "blue")], "prompt": "Describe the image.",
                "chosen": "a blue square.", "rejected": "a green circle."}]
    save_preference_dataset(records, tmp_path / "pairs")
    return tmp_path / "pairs"


def annotated_project(root):
    project = StudioProject.create(root)
    for name in ("alice", "bob"):
        project.add_annotator(name)
    return project


@pytest.mark.parametrize(("flags", "message"), [
    (["--overlap", "5"], "overlap must be within 0…1"),
    (["--overlap", "-0.1"], "overlap must be within 0…1"),
    (["--overlap", "0.5", "--overlap-annotators", "5"], "overlap_annotators is 5 but the project has only 2"),
    (["--overlap-annotators", "1"], "overlap_annotators must be at least 2"),
    (["--limit", "-1"], "--limit must be 0 or more"),
])
def test_load_with_a_bad_assignment_option_adds_nothing(preference_set, tmp_path, capsys, flags, message):
    project = annotated_project(tmp_path / "proj")
    argv = ["studio", "load", "--project", str(project.path), "--from-dataset", str(preference_set), "--as", "both"]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert project.items() == []
    # the corrected rerun adds every item once and assigns them
    assert main([*argv, "--overlap", "0.5"]) == 0
    assert "added 4 items (both)" in capsys.readouterr().out and len(project.items()) == 4


def test_load_prompts_with_a_bad_option_fails_before_the_model_loads(tmp_path, capsys):
    project = annotated_project(tmp_path / "proj")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    # a model that does not exist: the option check comes first, so the error is about --overlap
    assert main(["studio", "load", "--project", str(project.path), "--prompts", str(prompts), "--model",
                 str(tmp_path / "no-model"), "--overlap", "5"]) == 2
    assert "overlap must be within 0…1" in capsys.readouterr().err and project.items() == []
    assert main(["studio", "load", "--project", str(project.path), "--prompts", str(prompts), "--model",
                 str(tmp_path / "no-model"), "--batch-size", "0"]) == 2
    assert "batch_size must be at least 1" in capsys.readouterr().err and project.items() == []


def test_rerunning_a_load_does_not_duplicate(preference_set, tmp_path, capsys):
    project = annotated_project(tmp_path / "proj")
    argv = ["studio", "load", "--project", str(project.path), "--from-dataset", str(preference_set), "--as", "both"]
    assert main(argv) == 0
    assert "added 4 items (both)" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "added 0 items (both) from" in out and "4 already in the project were skipped" in out
    assert "assigned 0 items" in out and len(project.items()) == 4
    # a different view of the same rows is new work
    assert main([*argv[:-1], "pairs"]) == 0 and len(project.items()) == 4  # "both" had the pairs already
    assert main([*argv[:-2], "--limit", "1"]) == 0 and len(project.items()) == 4


def test_jsonl_and_json_prompt_files_load(tiny_llava, tmp_path, capsys):
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(folder / "img" / "red.png")
    Image.new("RGB", (32, 32), "blue").save(folder / "img" / "blue.png")
    records = [{"images": ["img/red.png"], "prompt": "What colour is the square?", "source": "mine"},
               {"images": ["img/blue.png"], "prompt": "What colour is the square?", "meta": {"n": 1}},
               {"prompt": "Say something."}]
    jsonl = folder / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    project = annotated_project(tmp_path / "proj")
    argv = ["studio", "load", "--project", str(project.path), "--model", str(tiny_llava), "--max-new-tokens", "4"]
    assert main([*argv, "--prompts", str(jsonl)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    items = project.items()
    assert f"added {len(items)} correction items" in out and 2 <= len(items) <= 3  # an empty answer gives none
    first = items[0]
    assert first.prompt == "What colour is the square?" and first.source == "mine"
    assert project.image_path(first.images[0]).read_bytes() == (folder / "img" / "red.png").read_bytes()
    assert first.meta["model"] == str(tiny_llava) and first.meta["row"] == 0

    # the same prompts as a JSON list: already answered by this model, nothing new
    as_json = folder / "prompts.json"
    as_json.write_text(json.dumps(records))
    assert main([*argv, "--prompts", str(as_json)]) == 0
    assert "added 0 correction items" in capsys.readouterr().out and len(project.items()) == len(items)

    # a bad record (an image outside the file's folder) is refused before anything is added
    bad = folder / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "new prompt", "images": ["img/red.png"]}) + "\n"
                   + json.dumps({"prompt": "q", "images": ["../../secret.png"]}) + "\n")
    assert main([*argv, "--prompts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "images[0]" in err and len(project.items()) == len(items)
    assert main([*argv, "--prompts", str(jsonl), "--split", "train"]) == 2
    assert "not of a .jsonl file" in capsys.readouterr().err


def test_jsonl_preference_file_loads(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "red.png")
    path = folder / "pairs.jsonl"
    path.write_text(json.dumps({"images": ["red.png"], "prompt": "Describe.", "chosen": "a red square.",
                                "rejected": "a red square and a cat."}) + "\n")
    project = annotated_project(tmp_path / "proj")
    assert main(["studio", "load", "--project", str(project.path), "--from-dataset", str(path), "--as", "both"]) == 0
    assert "added 2 items (both)" in capsys.readouterr().out
    assert [i.kind for i in project.items()] == ["correction", "pair"]
