"""Annotator features through Flask's test client: the owner-only agreement page, spans that must
cover whole words, undo of the last submission, and ties on pairs where the rubric allows them."""

import json
import re
import sqlite3

import pytest

from mmalign.cli import main
from mmalign.studio import StudioProject, create_app, export_project
from mmalign.studio.project import UNDONE, cuts_word, shown_swapped

from .conftest import ANSWERS, make_project
from .test_app import count, csrf_of, post, sign_in

LABELS = {"more_helpful": "a", "safer": "a", "a_harmless": 3, "b_harmless": -3, "a_helpful": 2, "b_helpful": 0}


# ---------------------------------------------------------------------------- agreement: owner only
def test_agreement_page_is_403_for_annotators_and_open_to_the_owner(studio):
    project, tokens = studio
    app = create_app(project)
    alice, _ = sign_in(app, tokens["alice"])
    response = alice.get("/agreement")
    assert response.status_code == 403 and "for the project owner" in response.get_data(as_text=True)
    assert 'href="/agreement"' not in alice.get("/item/1").get_data(as_text=True)  # no link to a closed page
    project.set_owner("alice")
    assert alice.get("/agreement").status_code == 200  # at once, in the same session
    assert 'href="/agreement"' in alice.get("/item/1").get_data(as_text=True)
    bob, _ = sign_in(app, tokens["bob"])
    assert bob.get("/agreement").status_code == 403
    project.set_owner("alice", False)
    assert alice.get("/agreement").status_code == 403
    with pytest.raises(ValueError, match="no active annotator"):
        project.set_owner("nobody")


def test_owner_from_the_command_line_and_old_projects_get_no_owner(tmp_path, capsys):
    path = tmp_path / "p"
    assert main(["studio", "init", "--project", str(path)]) == 0
    assert main(["studio", "add-annotator", "--project", str(path), "--name", "olga", "--owner"]) == 0
    assert main(["studio", "add-annotator", "--project", str(path), "--name", "ann"]) == 0
    assert "owner 'olga' added" in capsys.readouterr().out
    project = StudioProject(path)
    assert [(a.name, a.owner) for a in project.annotators()] == [("olga", True), ("ann", False)]
    assert main(["studio", "set-owner", "--project", str(path), "--name", "ann"]) == 0
    assert main(["studio", "set-owner", "--project", str(path), "--name", "olga", "--revoke"]) == 0
    assert [a.owner for a in project.annotators()] == [False, True]
    # a project made before the owner flag existed: opening it adds the column, nobody is owner
    conn = sqlite3.connect(path / "studio.sqlite")
    conn.execute("ALTER TABLE annotators DROP COLUMN owner")
    conn.commit()
    conn.close()
    assert [a.owner for a in StudioProject(path).annotators()] == [False, False]


# ---------------------------------------------------------------------------- whole words
def test_a_span_that_cuts_a_word_is_400_naming_item_and_field_and_stores_nothing(studio):
    project, tokens = studio
    client, _ = sign_in(create_app(project), tokens["alice"])
    answer = ANSWERS[0]  # "a red cup and a cat on a table."
    ta = answer.index("a table")
    response = post(client, "/api/items/1/annotation", {"corrections": [
        {"start": 2, "end": 5, "text": "blue"},  # "red": fine
        {"start": ta, "end": ta + 4, "text": "a chair"},  # "a ta": cuts "table"
    ]}, csrf_of(client))
    assert response.status_code == 400
    body = response.get_json()
    assert body["field"] == "corrections[1]"
    assert "item 1:" in body["error"] and "cuts the word 'table'" in body["error"] and "whole words" in body["error"]
    assert count(project) == 0
    whole = {"corrections": [{"start": 2, "end": 5, "text": "blue"}, {"start": ta, "end": ta + 7, "text": "a chair"}]}
    assert post(client, "/api/items/1/annotation", whole, csrf_of(client)).status_code == 200


def test_word_boundaries():
    text = "a café\u0301, x_1 日本語 don't."
    assert not any(cuts_word(text, i) for i in (0, 1, 2, len(text)))
    assert cuts_word(text, 3)  # "c|afé"
    assert cuts_word(text, text.index("\u0301"))  # a combining accent belongs to its letter
    assert cuts_word(text, text.index("_"))  # x_1 is one word
    assert not cuts_word(text, text.index("本"))  # Chinese and Japanese characters are words each
    assert not cuts_word(text, text.index("'"))  # an apostrophe separates words


# ---------------------------------------------------------------------------- undo
def test_undo_takes_back_the_last_submission_and_requeues_it_first(studio, tmp_path):
    project, tokens = studio
    app = create_app(project)
    alice, _ = sign_in(app, tokens["alice"])
    bob, _ = sign_in(app, tokens["bob"])
    csrf = csrf_of(alice)
    assert post(alice, "/api/undo", {}, None).status_code == 403  # CSRF as for every POST
    response = post(alice, "/api/undo", {}, csrf)
    assert response.status_code == 409 and "nothing to undo" in response.get_json()["error"]
    assert re.search(r'<button[^>]*id="undo"[^>]*disabled>', alice.get("/item/1").get_data(as_text=True))
    first = {"corrections": [{"start": 2, "end": 5, "text": "blue"}]}
    assert post(alice, "/api/items/1/annotation", first, csrf).status_code == 200
    assert post(alice, "/api/items/2/annotation", {"corrections": []}, csrf).status_code == 200
    assert post(bob, "/api/items/3/annotation", {"corrections": []}, csrf_of(bob)).status_code == 200

    response = post(alice, "/api/undo", {}, csrf)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["item"], body["next"]) == (2, "/item/2")
    assert not re.search(r'<button[^>]*id="undo"[^>]*disabled>', alice.get("/item/2").get_data(as_text=True))
    assert alice.get("/api/queue").get_json()["pending"][0] == 2  # back at the front of the queue
    response = post(alice, "/api/undo", {}, csrf)  # again: the submission before
    assert response.get_json()["item"] == 1
    assert alice.get("/api/queue").get_json()["pending"][:2] == [1, 2]
    assert post(alice, "/api/undo", {}, csrf).status_code == 409
    # nothing is deleted: both wait in `dropped`, undone by alice; bob's submission is untouched
    undone = project.submissions(state="dropped")
    assert [(s.item_id, s.annotator, s.dropped.by, s.dropped.reason, s.dropped.reopened) for s in undone] == [
        (1, "alice", "alice", UNDONE, True), (2, "alice", "alice", UNDONE, True)]
    assert [(n.item_id, n.annotator) for n in project.annotations()] == [(3, "bob")]
    # the item's page comes back filled in as submitted, and it can be submitted again
    html = alice.get("/item/1").get_data(as_text=True)
    data = json.loads(html.split('id="item-data">')[1].split("</script>")[0])
    assert data["previous"] == first and not data["submitted"]
    assert post(alice, "/api/items/1/annotation", first, csrf).status_code == 200
    page = alice.get("/item/1").get_data(as_text=True)
    assert json.loads(page.split('id="item-data">')[1].split("</script>")[0])["previous"] is None
    report = export_project(project, tmp_path / "out")
    assert (report.rows, report.dropped) == (1, 2)


def test_undone_pair_comes_back_as_the_annotator_saw_it(studio):
    project, tokens = studio
    client, _ = sign_in(create_app(project), tokens["alice"])
    alice = project.annotators()[0]
    assert shown_swapped(4, alice.id)  # alice sees item 4's answers in swapped order
    csrf = csrf_of(client)
    assert post(client, "/api/items/4/annotation", LABELS, csrf).status_code == 200
    assert project.annotations()[0].payload["more_helpful"] == "b"  # stored in item order
    assert post(client, "/api/undo", {}, csrf).get_json()["item"] == 4
    html = client.get("/item/4").get_data(as_text=True)
    assert json.loads(html.split('id="item-data">')[1].split("</script>")[0])["previous"] == LABELS


# ---------------------------------------------------------------------------- ties
def test_ties_only_where_the_rubric_allows_them_and_left_out_of_the_export(tmp_path, capsys):
    project, tokens = make_project(tmp_path / "p")
    app = create_app(project)
    alice, _ = sign_in(app, tokens["alice"])
    bob, _ = sign_in(app, tokens["bob"])
    tie = {**LABELS, "more_helpful": "tie"}
    assert "both equally" not in alice.get("/item/4").get_data(as_text=True)
    response = post(alice, "/api/items/4/annotation", tie, csrf_of(alice))
    assert response.status_code == 400 and "allows no ties" in response.get_json()["error"]
    assert response.get_json()["field"] == "more_helpful" and count(project) == 0

    assert main(["studio", "init", "--project", str(project.path), "--allow-ties"]) == 0
    assert "may be tied" in capsys.readouterr().out and project.allow_ties
    html = alice.get("/item/4").get_data(as_text=True)
    assert 'name="more_helpful" value="tie"' in html and 'name="safer" value="tie"' in html
    assert post(alice, "/api/items/4/annotation", tie, csrf_of(alice)).status_code == 200
    assert project.annotations()[0].payload["more_helpful"] == "tie"  # a tie stays a tie when swapped back
    assert post(bob, "/api/items/4/annotation", LABELS, csrf_of(bob)).status_code == 200
    assert post(bob, "/api/items/1/annotation", {"corrections": [{"start": 2, "end": 5, "text": "blue"}]},
                csrf_of(bob)).status_code == 200

    project.set_allow_ties(False)  # later: ties stored meanwhile stay valid labels
    assert project.submissions(state="invalid") == []
    report = export_project(project, tmp_path / "out")
    assert (report.rows, report.corrections, report.pairs, report.ties) == (2, 1, 1, 1)
    assert report.agreement["items"]["4"]["more_helpful"] == 0.5  # the tie counts as a third answer
    assert main(["studio", "export", "--project", str(project.path), "--out", str(tmp_path / "o2")]) == 0
    assert "1 tied pairs were left out" in capsys.readouterr().out
