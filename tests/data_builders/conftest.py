"""Helpers shared by the dataset-builder tests: hand-made images and records."""

import io

import pytest
from PIL import Image

from ..conftest import local_http_server


def png_bytes(color=(255, 0, 0), size=(8, 8), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def png():
    """Factory for small encoded images."""
    return png_bytes


@pytest.fixture
def record(png):
    """A valid canonical record with every optional column filled."""

    def make(**overrides):
        base = {
            "images": [png()],
            "prompt": "What is on the table?",
            "chosen": "A red cup on the table.",
            "rejected": "A blue cup on the table.",
            "chosen_spans": [[2, 5]],
            "rejected_spans": [[2, 6]],
            "facts": ["A red cup stands on a wooden table."],
            "more_helpful": "chosen",
            "safer": "rejected",
            "chosen_is_safe": True,
            "rejected_is_safe": True,
            "chosen_harmless_rate": 2,
            "rejected_harmless_rate": 3,
            "chosen_helpful_rate": 3,
            "rejected_helpful_rate": 1,
            "source": "test",
            "meta": {"id": 1},
        }
        base.update(overrides)
        return base

    return make


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """A tiny random LLaVA checkpoint folder (policy and judge stand-in)."""
    from mmalign.models.tiny import save_tiny

    return save_tiny("llava", tmp_path_factory.mktemp("tiny") / "llava", seed=0)


# ---------------------------------------------------------------------------- fake chat endpoint
TRUE_WORD = "red"  # the fake judge believes exactly the claims that mention red


class FakeChat:
    """State of a fake OpenAI-compatible server on 127.0.0.1 (what it got, how to answer)."""

    def __init__(self):
        self.requests = []
        self.mode = "logprobs"  # or "text" or "bad-request"
        self.fail_next = 0  # answer that many requests with HTTP 503 first
        self.url = ""

    def reply(self, body):
        if "logprobs" not in body:  # a claim-splitting request
            return {"choices": [{"message": {"role": "assistant",
                                             "content": "1. The cup is red.\n2. The plate is blue.\n- ok"}}]}
        text = body["messages"][-1]["content"][-1]["text"].lower()
        truthful = TRUE_WORD in text
        if self.mode == "text":
            return {"choices": [{"message": {"role": "assistant", "content": "Yes." if truthful else "No"}}]}
        if truthful:
            top = [{"token": "Yes", "logprob": -0.2}, {"token": " yes", "logprob": -2.0},
                   {"token": "No", "logprob": -1.9}]
        else:
            top = [{"token": "No", "logprob": -0.4}, {"token": "Yes", "logprob": -1.5},
                   {"token": " no", "logprob": -3.0}]
        first = {**top[0], "top_logprobs": top}
        return {"choices": [{"message": {"role": "assistant", "content": top[0]["token"]},
                             "logprobs": {"content": [first]}}]}


@pytest.fixture
def chat_server():
    import json
    from http.server import BaseHTTPRequestHandler

    state = FakeChat()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            if state.fail_next:
                state.fail_next -= 1
                return self._send(503, {"error": "busy"})
            if state.mode == "bad-request":
                return self._send(400, {"error": "unknown model"})
            return self._send(200, state.reply(body))

        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    with local_http_server(Handler) as server:
        state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        yield state
