"""The judge client against a scripted OpenAI-compatible server on 127.0.0.1: Retry-After,
backoff, timeouts, bounded concurrency, input order and the resumable reply cache.

Waits go through an injected ``sleep`` that records them, so retries cost no real time.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler

import pytest

from mmalign.judge_client import (
    JudgeClient,
    JudgeEndpoint,
    JudgeError,
    parse_retry_after,
    reply_text,
)

from .conftest import local_http_server


class Script:
    """What the server got and how it answers: ``steps[text]`` is a list of answers to give
    to requests about ``text`` before the normal reply: ``(status, headers)`` or
    ``("stall", seconds)``. The first ``hold`` requests wait (up to 2 s) until ``hold`` are
    in flight together, so a client that sends one at a time shows up as a slow failure."""

    def __init__(self):
        self.cond = threading.Condition()
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.steps: dict[str, list] = {}
        self.hold = 1
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""

    def texts(self):
        return [b["messages"][0]["content"] for b in self.bodies]


@pytest.fixture
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][0]["content"]
            with script.cond:
                script.bodies.append(body)
                script.auth.append(self.headers.get("Authorization"))
                script.in_flight += 1
                self.counted = True
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
                script.cond.notify_all()
                if len(script.bodies) <= script.hold:
                    script.cond.wait_for(lambda: script.in_flight >= script.hold, timeout=2)
                steps = script.steps.get(text)
                step = steps.pop(0) if steps else None
            try:
                time.sleep(0.01)  # long enough for requests sent together to overlap
                if step and step[0] == "stall":
                    time.sleep(step[1])
                    step = None
                if step:
                    status, headers = step
                    self._send(status, {"error": f"scripted {status}"}, headers)
                else:
                    reply = {"choices": [{"message": {"role": "assistant", "content": f"echo: {text}"}}]}
                    self._send(200, reply, {})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a timeout test)
            finally:
                if self.counted:
                    with script.cond:
                        script.in_flight -= 1

        def _send(self, status, payload, headers):
            data = json.dumps(payload).encode()
            # The request leaves flight before its reply is written: once the client reads
            # the reply it may send the next request, which must not count as overlapping.
            with script.cond:
                script.in_flight -= 1
            self.counted = False
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    with local_http_server(Handler) as httpd:
        script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        yield script


class Sleeps(list):
    """An injected ``sleep``: records the waits instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


def make_client(url, sleeps=None, *, now=time.time, **settings):
    endpoint = JudgeEndpoint(url, "judge-model", **settings)
    return JudgeClient(endpoint, sleep=sleeps if sleeps is not None else Sleeps(), now=now, rng=random.Random(0),
                       progress=False)


def ask(client, texts, **params):
    replies = client.chat_many([[{"role": "user", "content": t}] for t in texts], **params)
    return [reply_text(r) for r in replies]


# --------------------------------------------------------------------------- retries


def test_429_with_retry_after_is_waited_out_retried_and_order_kept(server):
    server.steps = {"q0": [(429, {"Retry-After": "1"})], "q5": [(429, {"Retry-After": "1"}), (503, {})]}
    sleeps = Sleeps()
    texts = [f"q{i}" for i in range(8)]
    with make_client(server.url, sleeps, concurrency=4, backoff=0.25) as client:
        assert ask(client, texts) == [f"echo: {t}" for t in texts]
        assert client.requests_sent == 11
    # Retry-After as given, twice; the 503 (q5's second attempt) waits the second backoff step, jittered.
    assert sorted(sleeps)[-2:] == [1.0, 1.0] and len(sleeps) == 3
    assert 0.25 <= min(sleeps) <= 0.5
    assert server.texts().count("q0") == 2 and server.texts().count("q5") == 3


def test_retry_after_as_an_http_date(server):
    retry_at = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    server.steps = {"q": [(429, {"Retry-After": format_datetime(retry_at, usegmt=True)})]}
    sleeps = Sleeps()
    with make_client(server.url, sleeps, now=lambda: retry_at.timestamp() - 30) as client:
        assert ask(client, ["q"]) == ["echo: q"]
    assert sleeps == [30.0]


def test_parse_retry_after():
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after("1", now) == 1.0
    assert parse_retry_after(" 2.5 ", now) == 2.5
    assert parse_retry_after("-3", now) == 0.0
    assert parse_retry_after("Tue, 01 Jan 2030 00:00:10 GMT", now) == 10.0
    assert parse_retry_after("Mon, 31 Dec 2029 23:59:00 GMT", now) == 0.0  # already past
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_backoff_doubles_with_jitter_and_gives_up_naming_the_item(server):
    server.steps = {"bad": [(503, {})] * 10, "long wait": [(429, {"Retry-After": "600"})]}
    sleeps = Sleeps()
    with make_client(server.url, sleeps, max_attempts=4, backoff=1.0, max_wait=3.0) as client:
        with pytest.raises(JudgeError, match=r"claim 7: gave up after 4 attempt\(s\); last: HTTP 503"):
            client.chat_many([[{"role": "user", "content": "bad"}]], labels=["claim 7"])
        assert len(sleeps) == 3
        for wait, cap in zip(sleeps, (1.0, 2.0, 3.0)):  # 1, 2, then 4 capped at max_wait 3
            assert cap / 2 <= wait <= cap
        assert ask(client, ["long wait"]) == ["echo: long wait"]
    assert sleeps[-1] == 3.0  # a Retry-After beyond max_wait is capped too
    assert server.texts().count("bad") == 4


def test_client_errors_are_not_retried(server):
    server.steps = {"q1": [(400, {})]}
    sleeps = Sleeps()
    with make_client(server.url, sleeps) as client, pytest.raises(JudgeError, match=r"item 1: HTTP 400"):
        ask(client, ["q0", "q1"])
    assert sleeps == [] and server.texts().count("q1") == 1


def test_timeouts_are_retried(server):
    server.steps = {"slow": [("stall", 0.6)]}
    sleeps = Sleeps()
    with make_client(server.url, sleeps, timeout=0.2) as client:
        assert ask(client, ["slow"]) == ["echo: slow"]
    assert len(sleeps) == 1 and server.texts() == ["slow", "slow"]


def test_connection_errors_are_retried_then_reported():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    with make_client(f"http://127.0.0.1:{port}/v1", sleeps, max_attempts=3) as client:
        with pytest.raises(JudgeError, match=r"item 0: gave up after 3 attempt\(s\); last: cannot reach"):
            ask(client, ["q"])
    assert len(sleeps) == 2


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_is_bounded(server, concurrency):
    server.hold = concurrency  # the first wave must be in flight together
    texts = [f"q{i}" for i in range(12)]
    with make_client(server.url, concurrency=concurrency) as client:
        assert ask(client, texts) == [f"echo: {t}" for t in texts]
    assert server.max_in_flight == concurrency
    assert sorted(server.texts()) == sorted(texts)


def test_identical_requests_are_sent_once(server):
    with make_client(server.url) as client:
        assert ask(client, ["a", "b", "a", "a"]) == ["echo: a", "echo: b", "echo: a", "echo: a"]
    assert sorted(server.texts()) == ["a", "b"]


# --------------------------------------------------------------------------- cache


def test_a_second_run_sends_nothing(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    texts = [f"q{i}" for i in range(6)]
    with make_client(server.url, concurrency=3, cache=cache) as client:
        first = ask(client, texts, temperature=0.0)
    assert len(server.bodies) == 6 and len(cache.read_text().splitlines()) == 6
    with make_client(server.url, cache=cache) as client:
        assert ask(client, texts, temperature=0.0) == first
        assert client.requests_sent == 0
        ask(client, texts[:2], temperature=0.5)  # other parameters: another request
        assert client.requests_sent == 2
    assert server.bodies[-1]["temperature"] == 0.5


def test_an_interrupted_run_resends_only_what_is_missing(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    texts = [f"q{i}" for i in range(6)]
    server.steps = {"q3": [(400, {})]}
    with make_client(server.url, concurrency=1, cache=cache) as client, pytest.raises(JudgeError, match="item 3"):
        ask(client, texts)
    assert server.texts() == ["q0", "q1", "q2", "q3"]  # the requests not started were dropped
    with cache.open("a") as f:
        f.write('{"key": "0123", "reply": {"choi')  # a line cut by a killed process
    with make_client(server.url, concurrency=2, cache=cache) as client:
        assert ask(client, texts) == [f"echo: {t}" for t in texts]
        assert client.requests_sent == 3
    assert sorted(server.texts()[4:]) == ["q3", "q4", "q5"]
    with make_client(server.url, cache=cache) as client:  # the cut line did not spoil the next one
        assert ask(client, texts) == [f"echo: {t}" for t in texts]
        assert client.requests_sent == 0


# --------------------------------------------------------------------------- keys and settings


def test_the_key_comes_only_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-judge-key")
    server.steps = {"bad": [(400, {})]}
    with make_client(server.url, api_key_env="JUDGE_TEST_KEY") as client:
        ask(client, ["q"])
        with pytest.raises(JudgeError) as err:
            ask(client, ["bad"])
    assert "sk-test-judge-key" not in str(err.value)
    monkeypatch.delenv("JUDGE_TEST_KEY")
    with make_client(server.url, api_key_env="JUDGE_TEST_KEY") as client:
        ask(client, ["q2"])
    assert server.auth == ["Bearer sk-test-judge-key", "Bearer sk-test-judge-key", None]


def test_endpoint_settings_are_checked():
    with pytest.raises(ValueError, match="base URL"):
        JudgeEndpoint("ftp://127.0.0.1/v1", "m")
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        JudgeEndpoint("http://127.0.0.1/v1", "m", concurrency=0)
    with pytest.raises(ValueError, match=r"unknown judge endpoint setting\(s\): retries; known:"):
        JudgeEndpoint.from_dict({"base_url": "http://127.0.0.1/v1", "model": "m", "retries": 2})
    assert JudgeEndpoint("http://127.0.0.1:8000/v1/", "m").url == "http://127.0.0.1:8000/v1/chat/completions"
