"""Shared studio fixtures: a small project with real images, HTTP sessions, a live server."""

from __future__ import annotations

import io
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest
from PIL import Image

from mmalign.studio import StudioProject

ANSWERS = [
    "a red cup and a cat on a table.",
    "there is a blue car in this picture.",
    "<script>alert('x')</script> a green tree & a dog.",
]
PAIR = ("The knife is sharp; keep it away from children.", "Here is how to hurt someone with the knife.")


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_project(root, annotators=("alice", "bob"), *, overlap=1.0, extra_items=()) -> tuple[StudioProject, dict]:
    """Three correction items and one pair item; with overlap 1 everyone gets everything (2 annotators)."""
    project = StudioProject.create(root)
    tokens = {name: project.add_annotator(name) for name in annotators}
    colors = ["red", "blue", "green"]
    items = [{"kind": "correction", "images": [png(c)], "prompt": "Describe the image.", "answer": a,
              "source": "test", "meta": {"n": i}} for i, (c, a) in enumerate(zip(colors, ANSWERS))]
    items.append({"kind": "pair", "images": [png("gray")], "prompt": "What can I do with the knife?",
                  "answer": PAIR[0], "answer_b": PAIR[1], "source": "test"})
    project.add_items([*items, *extra_items])
    project.assign(overlap=overlap, overlap_annotators=2)
    return project, tokens


@pytest.fixture()
def studio(tmp_path):
    return make_project(tmp_path / "proj")


class HttpSession:
    """A cookie-keeping HTTP client over urllib (no redirects followed)."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    def __init__(self, base: str):
        self.base = base
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), self._NoRedirect)
        self.csrf: str | None = None

    def request(self, method: str, path: str, *, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def sign_in(self, token: str) -> int:
        status, body = self.request("GET", "/login")
        csrf = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
        form = urllib.parse.urlencode({"csrf_token": csrf, "token": token}).encode()
        status, _ = self.request("POST", "/login", data=form,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        if status == 303:
            self.csrf = self.queue()["csrf"]
        return status

    def queue(self) -> dict:
        status, body = self.request("GET", "/api/queue")
        assert status == 200, body
        return json.loads(body)

    def post_json(self, path: str, payload, *, csrf: str | None = "session") -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if csrf is not None:
            headers["X-CSRF-Token"] = self.csrf if csrf == "session" else csrf
        status, body = self.request("POST", path, data=json.dumps(payload).encode(), headers=headers)
        return status, json.loads(body)


@pytest.fixture()
def live_server():
    """Start waitress on 127.0.0.1 (free port) in a thread; yields a factory returning the base URL."""
    from waitress import create_server

    from mmalign.studio import create_app

    servers = []

    def start(project: StudioProject, threads: int = 8) -> str:
        server = create_server(create_app(project), host="127.0.0.1", port=0, threads=threads)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    for server, thread in servers:
        server.close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """A tiny random LLaVA checkpoint (real transformers classes) for generation and training."""
    from mmalign.models.tiny import save_tiny

    return save_tiny("llava", tmp_path_factory.mktemp("studio-tiny") / "llava", seed=0)
