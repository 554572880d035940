"""Fixtures for the benchmark tests: small files in the official formats, built by hand,
a tiny LLaVA, fake adapters, and a fake OpenAI-compatible judge server on 127.0.0.1."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from PIL import Image

from ..conftest import local_http_server


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_images(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (40 * i % 255, 90, 160)).save(folder / name)
    return folder


@pytest.fixture
def files():
    """Helpers to write fixture files: ``files.json``, ``files.jsonl``, ``files.images``."""

    class Files:
        json = staticmethod(write_json)
        jsonl = staticmethod(write_jsonl)
        images = staticmethod(write_images)

    return Files


# --------------------------------------------------------------------------- POPE

POPE_RANDOM = [  # question_id, image, object, label
    (1, "COCO_val2014_000000000001.jpg", "dog", "yes"),
    (2, "COCO_val2014_000000000001.jpg", "cat", "no"),
    (3, "COCO_val2014_000000000002.jpg", "car", "yes"),
    (4, "COCO_val2014_000000000002.jpg", "kite", "no"),
]
POPE_POPULAR = [
    (1, "COCO_val2014_000000000001.jpg", "dog", "yes"),
    (2, "COCO_val2014_000000000001.jpg", "person", "no"),
    (3, "COCO_val2014_000000000002.jpg", "car", "yes"),
    (4, "COCO_val2014_000000000002.jpg", "chair", "no"),
]


def pope_rows(rows):
    return [{"question_id": q, "image": img, "text": f"Is there a {obj} in the image?", "label": lab}
            for q, img, obj, lab in rows]


@pytest.fixture
def pope_dir(tmp_path):
    """Two POPE splits whose question ids overlap, as the official per-split files do."""
    folder = tmp_path / "pope"
    write_jsonl(folder / "coco_pope_random.json", pope_rows(POPE_RANDOM))
    write_jsonl(folder / "coco_pope_popular.json", pope_rows(POPE_POPULAR))
    write_images(tmp_path / "val2014", sorted({r[1] for r in POPE_RANDOM}))
    return folder


# --------------------------------------------------------------------------- COCO (CHAIR / Object HalBench)


@pytest.fixture
def coco_files(tmp_path):
    """Three images: {dog, person}, {hot dog} (+ cup from captions), {toilet}."""
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 58, "name": "hot dog"},
                  {"id": 70, "name": "toilet"}, {"id": 47, "name": "cup"}]
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (1, 2, 3)]
    instances = {
        "images": images,
        "categories": categories,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18},
            {"id": 2, "image_id": 1, "category_id": 1},
            {"id": 3, "image_id": 1, "category_id": 1},
            {"id": 4, "image_id": 2, "category_id": 58},
            {"id": 5, "image_id": 3, "category_id": 70},
        ],
    }
    captions = {
        "images": images,
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "A man walks a dog."},
            {"id": 2, "image_id": 1, "caption": "A person with a puppy on a leash."},
            {"id": 3, "image_id": 2, "caption": "A hot dog on a plate next to a cup."},
            {"id": 4, "image_id": 3, "caption": "A white toilet in a bathroom."},
        ],
    }
    write_images(tmp_path / "val2014", [im["file_name"] for im in images])
    return write_json(tmp_path / "instances.json", instances), write_json(tmp_path / "captions.json", captions)


# --------------------------------------------------------------------------- AMBER


@pytest.fixture
def amber_dir(tmp_path):
    """Two generative queries and four discriminative ones in AMBER's flat layout."""
    folder = tmp_path / "amber"
    queries = [
        {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
        {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
        {"id": 3, "image": "AMBER_1.jpg", "query": "Is there a cat in this image?"},
        {"id": 4, "image": "AMBER_1.jpg", "query": "Is the dog brown in this image?"},
        {"id": 5, "image": "AMBER_2.jpg", "query": "Is the car running in this image?"},
        {"id": 6, "image": "AMBER_2.jpg", "query": "Is the dog on the bench in this image?"},
    ]
    annotations = [
        {"id": 1, "type": "generative", "truth": ["dog", "tree"], "hallu": ["cat", "bench"]},
        {"id": 2, "type": "generative", "truth": ["car", "road"], "hallu": ["dog", "tree"]},
        {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
        {"id": 4, "type": "discriminative-attribute-state", "truth": "yes"},
        {"id": 5, "type": "discriminative-attribute-action", "truth": "no"},
        {"id": 6, "type": "discriminative-relation", "truth": "yes"},
    ]
    relation = {"dog": ["puppy"], "cat": ["kitten"], "tree": [], "bench": [], "car": ["vehicle"],
                "road": ["street"], "grass": []}
    write_json(folder / "query_all.json", queries)
    write_json(folder / "annotations.json", annotations)
    write_json(folder / "relation.json", relation)
    (folder / "safe_words.txt").write_text("grass\n")
    write_images(tmp_path / "amber_images", ["AMBER_1.jpg", "AMBER_2.jpg"])
    return folder


# --------------------------------------------------------------------------- MMHal

MMHAL_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")


@pytest.fixture
def mmhal_template(tmp_path):
    """Eight records in the official type order; the last two omit question_type."""
    records = []
    for i, kind in enumerate(MMHAL_TYPES):
        record = {"question_type": kind, "question_topic": "animal", "image_id": f"img{i}",
                  "image_src": f"https://example.invalid/photos/img{i}.jpg?size=large",
                  "image_content": ["dog", "ball"], "question": f"Question {i} about the dog?",
                  "gt_answer": f"Reference {i}.", "model_answer": ""}
        if i >= 6:
            del record["question_type"]
        records.append(record)
    write_images(tmp_path / "mmhal_images", [f"img{i}.jpg" for i in range(8)])
    return write_json(tmp_path / "response_template.json", records)


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from mmalign.models.tiny import save_tiny

    return save_tiny("llava", tmp_path_factory.mktemp("bench_tiny") / "llava", seed=0)


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir):
    from mmalign.models import load_adapter

    adapter = load_adapter(tiny_llava_dir)
    adapter.model.eval()
    return adapter


class FakeAdapter:
    """Deterministic stand-in for ``adapter.generate``: answers "Yes" or "No" from the prompt
    text, records every call, and can fail on a chosen call to simulate an interruption."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def generate(self, images, prompts, **kwargs):
        self.calls.append(list(prompts))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise InterruptedError("simulated interruption")
        assert len(images) == len(prompts)
        return [" Yes " if sum(map(ord, p)) % 2 else "No." for p in prompts]


@pytest.fixture
def fake_adapter():
    return FakeAdapter


# --------------------------------------------------------------------------- judge server


class _JudgeHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if server.fail_first and len(server.requests) <= server.fail_first:
            self.send_response(server.fail_status)
            self.end_headers()
            self.wfile.write(b'{"error": "busy"}')
            return
        prompt = body["messages"][0]["content"]
        reply = {"choices": [{"message": {"role": "assistant", "content": server.reply(prompt)}}]}
        if server.model is not None:
            reply["model"] = server.model
        payload = json.dumps(reply)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server(monkeypatch):
    """A fake OpenAI-compatible server on 127.0.0.1; ``server.reply(prompt) -> text``;
    ``server.model``: the model its replies name (``None``: replies name none)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with local_http_server(_JudgeHandler) as server:
        server.requests = []
        server.fail_first = 0
        server.fail_status = 503
        server.reply = lambda prompt: "Rating: 3"
        server.model = None
        server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        yield server
