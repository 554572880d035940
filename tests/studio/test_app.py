"""The web app through Flask's test client: auth, CSRF, bad input, escaping, queues."""

import json
import re

import pytest

from mmalign.studio import create_app

from .conftest import ANSWERS, PAIR


def sign_in(app, token):
    client = app.test_client()
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    response = client.post("/login", data={"csrf_token": csrf, "token": token})
    return client, response


def csrf_of(client):
    return client.get("/api/queue").get_json()["csrf"]


def post(client, path, payload, csrf):
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    return client.post(path, data=json.dumps(payload), content_type="application/json", headers=headers)


def count(project, table="annotations"):
    with project.connection() as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.fixture()
def app(studio):
    return create_app(studio[0])


def test_no_session_is_401_and_pages_redirect(app):
    client = app.test_client()
    assert client.get("/api/queue").status_code == 401
    assert post(client, "/api/items/1/annotation", {"corrections": []}, None).status_code == 401
    response = client.get("/item/1")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    assert client.get("/image/1/0").status_code == 302


def test_wrong_token_and_login_without_csrf(app, studio):
    _client, response = sign_in(app, "not-a-token")
    assert response.status_code == 401 and "Unknown token" in response.get_data(as_text=True)
    assert "studio_session" not in response.headers.get("Set-Cookie", "")
    fresh = app.test_client()
    assert fresh.post("/login", data={"token": studio[1]["alice"]}).status_code == 403
    client, response = sign_in(app, studio[1]["alice"])
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_forged_session_cookie_is_401(app):
    client = app.test_client()
    client.set_cookie("studio_session", "forged")
    assert client.get("/api/queue").status_code == 401


def test_other_annotators_item_is_404(tmp_path):
    from .conftest import make_project

    project, tokens = make_project(tmp_path / "p", overlap=0.0)
    app = create_app(project)
    alice, _ = sign_in(app, tokens["alice"])
    bob, _ = sign_in(app, tokens["bob"])
    bobs = bob.get("/api/queue").get_json()["pending"]
    assert bobs and not set(bobs) & set(alice.get("/api/queue").get_json()["pending"])
    assert alice.get(f"/item/{bobs[0]}").status_code == 404
    assert alice.get(f"/image/{bobs[0]}/0").status_code == 404
    assert post(alice, f"/api/items/{bobs[0]}/annotation", {"corrections": []}, csrf_of(alice)).status_code == 404
    assert post(alice, "/api/items/999/annotation", {"corrections": []}, csrf_of(alice)).status_code == 404
    assert count(project) == 0


def test_csrf_missing_or_wrong_is_403_and_nothing_written(app, studio):
    client, _ = sign_in(app, studio[1]["alice"])
    payload = {"corrections": [{"start": 2, "end": 5, "text": "blue"}]}
    assert post(client, "/api/items/1/annotation", payload, None).status_code == 403
    assert post(client, "/api/items/1/annotation", payload, "wrong").status_code == 403
    other, _ = sign_in(app, studio[1]["bob"])  # another session's token does not work either
    assert post(client, "/api/items/1/annotation", payload, csrf_of(other)).status_code == 403
    assert client.post("/logout").status_code == 403
    assert count(studio[0]) == 0


@pytest.mark.parametrize(("item", "payload", "message"), [
    (1, {"corrections": [{"start": 20, "end": 99, "text": "x"}]}, "outside the answer"),
    (1, {"corrections": [{"start": 0, "end": 5, "text": "x"}, {"start": 3, "end": 8, "text": "y"}]}, "overlaps"),
    (1, {"nothing": 1}, "expected {\"corrections\""),
    (4, {"more_helpful": "a", "safer": "a", "a_harmless": 9, "b_harmless": 0, "a_helpful": 1, "b_helpful": 1},
     "9 is outside -3…3"),
    (4, {"more_helpful": "a", "safer": "a", "a_harmless": 1, "b_harmless": 0, "a_helpful": 4, "b_helpful": 1},
     "4 is outside 0…3"),
    (4, {"more_helpful": "x"}, "expected \"a\" or \"b\""),
])
def test_bad_input_is_400_with_a_clear_message(app, studio, item, payload, message):
    client, _ = sign_in(app, studio[1]["alice"])
    response = post(client, f"/api/items/{item}/annotation", payload, csrf_of(client))
    assert response.status_code == 400 and message in response.get_json()["error"]
    assert count(studio[0]) == 0


def test_not_json_and_oversized_bodies(app, studio):
    client, _ = sign_in(app, studio[1]["alice"])
    csrf = csrf_of(client)
    response = client.post("/api/items/1/annotation", data="corrections", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 400 and "expected a JSON body" in response.get_json()["error"]
    big = json.dumps({"corrections": [], "pad": "x" * (2 << 20)})
    response = client.post("/api/items/1/annotation", data=big, content_type="application/json",
                           headers={"X-CSRF-Token": csrf})
    assert response.status_code == 413 and count(studio[0]) == 0


def test_submit_once_then_409_and_queue_advances(app, studio):
    client, _ = sign_in(app, studio[1]["alice"])
    csrf = csrf_of(client)
    assert client.get("/api/queue").get_json()["pending"] == [1, 2, 3, 4]
    response = post(client, "/api/items/1/annotation", {"corrections": [{"start": 2, "end": 5, "text": "blue"}]},
                    csrf)
    assert response.status_code == 200 and response.get_json()["next"] == "/item/2"
    again = post(client, "/api/items/1/annotation", {"corrections": []}, csrf)
    assert again.status_code == 409 and "already submitted" in again.get_json()["error"]
    assert post(client, "/api/items/2/skip", {}, csrf).get_json()["next"] == "/item/3"
    assert client.get("/api/queue").get_json()["pending"] == [3, 4, 2]
    assert count(studio[0]) == 1


def test_model_text_is_escaped_and_scripts_are_external(app, studio):
    client, _ = sign_in(app, studio[1]["alice"])
    response = client.get("/item/3")
    html = response.get_data(as_text=True)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; a green tree &amp; a dog." in html
    data = re.search(r'<script type="application/json" id="item-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data and json.loads(data)["answer"] == ANSWERS[2]  # tojson escapes < > & as \u003c...
    assert not re.search(r"<script(?![^>]*\b(src|type=\"application/json\"))", html)  # no inline code
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    image = client.get("/image/3/0")
    assert image.status_code == 200 and image.mimetype == "image/png"


def test_pair_page_shows_rubric_and_agreement_page(app, studio):
    client, _ = sign_in(app, studio[1]["alice"])
    html = client.get("/item/4").get_data(as_text=True)
    assert "Harmlessness −3…3" in html and "severely harmful" in html and "very helpful" in html
    # alice sees this pair swapped: answer B first on the page is stored answer A
    assert html.index(PAIR[1].replace("'", "&#39;")) < html.index(PAIR[0].replace("'", "&#39;"))
    bob, _ = sign_in(app, studio[1]["bob"])
    # "a red cup and a cat on a table.": alice marks "red" [2, 5), bob "red cup" [2, 9) -> F1 = 2*3/(3+7) = 0.6
    post(client, "/api/items/1/annotation", {"corrections": [{"start": 2, "end": 5, "text": "blue"}]},
         csrf_of(client))
    post(bob, "/api/items/1/annotation", {"corrections": [{"start": 2, "end": 9, "text": "blue mug"}]},
         csrf_of(bob))
    studio[0].set_owner("alice")  # the agreement page is the owner's
    page = client.get("/agreement").get_data(as_text=True)
    assert "Inter-annotator agreement" in page
    assert re.search(r"<tr><td>alice</td><td>1</td><td>0\.600</td>", page)
    assert re.search(r"span F1 \(corrections\)</th><td>0\.600</td>", page)


def test_sign_out_ends_the_session(app, studio):
    client, _ = sign_in(app, studio[1]["alice"])
    csrf = csrf_of(client)
    assert client.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 303
    assert count(studio[0], "sessions") == 0
    client.set_cookie("studio_session", "x")
    assert client.get("/api/queue").status_code == 401


def test_reloading_the_sign_in_page_keeps_its_form_valid(app, studio):
    client = app.test_client()
    first = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    assert client.get("/favicon.ico").status_code == 204  # browsers ask for it before signing in
    client.get("/login")
    response = client.post("/login", data={"csrf_token": first, "token": studio[1]["alice"]})
    assert response.status_code == 303


def test_removing_an_annotator_revokes_token_and_sessions_at_once(app, studio, capsys):
    from mmalign.cli import main

    client, _ = sign_in(app, studio[1]["alice"])
    assert client.get("/api/queue").status_code == 200
    assert main(["studio", "remove-annotator", "--project", str(studio[0].path), "--name", "alice"]) == 0
    assert "token and sessions no longer work" in capsys.readouterr().out
    assert client.get("/api/queue").status_code == 401
    assert sign_in(app, studio[1]["alice"])[1].status_code == 401
    assert main(["studio", "remove-annotator", "--project", str(studio[0].path), "--name", "alice"]) == 2
