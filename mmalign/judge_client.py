"""One client for every LLM judge behind an OpenAI-compatible ``/chat/completions`` endpoint.

The AI-feedback builder (claim verdicts and claim splitting) and the benchmark judges
(MMHal-Bench) both send their requests through :class:`JudgeClient`, so they share one set
of rules:

* **bounded concurrency**: up to ``concurrency`` requests in flight (a thread pool over one
  pooled connection set); :meth:`JudgeClient.chat_many` returns replies in input order;
* **retries**: HTTP 408/409/425/429/5xx, timeouts and connection errors are retried up to
  ``max_attempts`` attempts in all, waiting what the server's ``Retry-After`` asks (seconds
  or an HTTP date) or else an exponential backoff with jitter; then a :class:`JudgeError`
  names the item that failed. Other statuses fail at once (retrying a 400 cannot help);
* **resumable cache**: with ``cache`` set, every reply is appended to a JSON Lines file as
  soon as it arrives, keyed by a hash of (model, messages, parameters), so a rerun of an
  interrupted job sends only the requests that are missing;
* **keys from the environment only**: the endpoint names an environment variable
  (``api_key_env``); the key is read when the client is made and is never logged.

Why ``httpx`` rather than the ``openai`` SDK: judges are often not OpenAI (vLLM, llama.cpp,
TGI), the builder needs the raw reply (``logprobs`` / ``top_logprobs``), and the retry
policy must cooperate with the per-item cache and name the failing item. The SDK would add
its own typed models and retry loop to work around; httpx gives timeouts, connection
pooling and a thread-safe client, and nothing more.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import json
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm.auto import tqdm

from mmalign.io import from_mapping

#: HTTP statuses worth retrying: timeouts, conflicts, rate limits and transient server errors.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Smallest batch that gets a progress bar; shorter ones finish before a bar would help.
PROGRESS_MIN = 16

Messages = list[dict[str, Any]]


class JudgeError(RuntimeError):
    """A judge request failed for good (the CLI reports it as a failure, exit code 1)."""


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where and how to ask: ``base_url`` ends before ``/chat/completions`` (e.g.
    ``http://127.0.0.1:8000/v1``); the API key comes only from the environment variable
    ``api_key_env`` (no ``Authorization`` header when it is unset or ``None``)."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0  # seconds per request
    concurrency: int = 4  # requests in flight at once
    max_attempts: int = 5  # attempts per request, the first included
    backoff: float = 1.0  # seconds before the first retry, doubled after each (with jitter)
    max_wait: float = 120.0  # longest wait between attempts, Retry-After included
    cache: str | Path | None = None  # JSON Lines file of replies (resumable runs)

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"judge base URL must be http(s)://host[:port][/path], got {self.base_url!r}")
        if not self.model:
            raise ValueError("a judge endpoint needs a model name")
        for name in ("concurrency", "max_attempts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"judge {name} must be at least 1, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise ValueError(f"judge timeout must be positive, got {self.timeout}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> JudgeEndpoint:
        """From a config file's mapping; an unknown setting is an error, not ignored."""
        return from_mapping(cls, values, "judge endpoint")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def name(self) -> str:
        """How reports name the judge."""
        return f"{self.model} @ {self.base_url}"


def request_key(model: str, messages: Messages, params: Mapping[str, Any]) -> str:
    """The cache key of a request: a hash of everything that decides the reply."""
    text = json.dumps({"model": model, "messages": messages, "params": dict(params)}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or
    ``None`` when it is missing or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def reply_text(reply: Mapping[str, Any]) -> str:
    """The first choice's message text (``""`` for an empty message)."""
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"unexpected chat reply shape: {str(reply)[:200]}") from None
    if content is not None and not isinstance(content, str):
        raise JudgeError(f"chat reply content is not text: {str(content)[:200]}")
    return content or ""


class ReplyCache:
    """Replies by request key in a JSON Lines file, one ``{"key", "reply"}`` object a line.

    Each reply is appended by one ``write`` to a file opened in append mode, under a lock,
    so a line is whole or (if the process is killed mid-write) cut at the end, where loading
    drops it. Later lines win, so a file shared by reruns stays valid.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._replies: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            for line in data.splitlines():
                try:
                    entry = json.loads(line)
                    self._replies[entry["key"]] = entry["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # the line an interruption cut short
            if data and not data.endswith(b"\n"):
                self._append(b"\n")  # the next line must not join the cut one

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._replies.get(key)

    def put(self, key: str, reply: dict[str, Any]) -> None:
        line = json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n"
        with self._lock:
            self._append(line.encode("utf-8"))
            self._replies[key] = reply

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"{self.path}: short write while caching a judge reply")
        finally:
            os.close(fd)


class JudgeClient:
    """Sends chat requests to one :class:`JudgeEndpoint` (see the module docstring).

    ``sleep``, ``now`` and ``rng`` are the waiting, the wall clock (for ``Retry-After``
    dates) and the jitter source; tests pass their own so retries cost no real time.
    ``requests_sent`` counts HTTP requests, retries included.
    """

    def __init__(
        self,
        endpoint: JudgeEndpoint,
        *,
        progress: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        self.endpoint = endpoint
        self.progress = progress
        self.cache = ReplyCache(endpoint.cache) if endpoint.cache else None
        self._sleep, self._now, self._rng = sleep, now, rng or random.Random()
        self._count_lock = threading.Lock()
        self.requests_sent = 0
        self._headers = {"Content-Type": "application/json"}
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=endpoint.concurrency, max_keepalive_connections=endpoint.concurrency)
        # A judge on this machine is reached directly, whatever proxy the environment sets.
        self._http = httpx.Client(timeout=endpoint.timeout, limits=limits,
                                  trust_env=not _is_loopback(urllib.parse.urlparse(endpoint.base_url).hostname))

    @property
    def name(self) -> str:
        return self.endpoint.name

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat(self, messages: Messages, *, label: str = "request", **params: Any) -> dict[str, Any]:
        """One chat completion's parsed JSON reply; ``params`` join the request body."""
        return self.chat_many([messages], labels=[label], **params)[0]

    def chat_many(
        self,
        conversations: Sequence[Messages],
        *,
        labels: Sequence[str] | None = None,
        desc: str = "judge",
        **params: Any,
    ) -> list[dict[str, Any]]:
        """The replies to ``conversations`` (same ``params`` for all), in input order.

        Cached replies are reused; identical requests are sent once; the rest go out
        ``concurrency`` at a time. ``labels`` name the items in errors (default
        ``item i``). On a failure the requests not yet started are dropped and the error
        raised; replies that arrived are already cached.
        """
        if labels is not None and len(labels) != len(conversations):
            raise ValueError(f"{len(labels)} labels for {len(conversations)} conversations")
        keys = [request_key(self.endpoint.model, messages, params) for messages in conversations]
        replies: dict[str, dict[str, Any]] = {}
        todo: dict[str, int] = {}  # key -> first input index with it
        for i, key in enumerate(keys):
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                replies[key] = cached
            elif key not in replies and key not in todo:
                todo[key] = i
        if todo:
            replies.update(self._send_all(conversations, todo, labels, desc, params))
        return [replies[key] for key in keys]

    def _send_all(
        self,
        conversations: Sequence[Messages],
        todo: Mapping[str, int],
        labels: Sequence[str] | None,
        desc: str,
        params: Mapping[str, Any],
    ) -> dict[str, dict[str, Any]]:
        failed = threading.Event()  # after a failure, workers start no new request

        def send(key: str, i: int) -> tuple[str, dict[str, Any]] | None:
            if failed.is_set():
                return None
            body = {"model": self.endpoint.model, "messages": conversations[i], **params}
            try:
                reply = self._post(body, labels[i] if labels is not None else f"item {i}")
            except BaseException:
                failed.set()
                raise
            if self.cache is not None:
                self.cache.put(key, reply)
            return key, reply

        out: dict[str, dict[str, Any]] = {}
        bar = tqdm(total=len(todo), desc=desc, leave=False, disable=not self.progress or len(todo) < PROGRESS_MIN)
        pool = ThreadPoolExecutor(max_workers=min(self.endpoint.concurrency, len(todo)),
                                  thread_name_prefix="judge")
        try:
            pending: set[Future[tuple[str, dict[str, Any]] | None]] = {
                pool.submit(send, k, i) for k, i in todo.items()}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    result = future.result()  # the first failure propagates from here
                    if result is not None:
                        out[result[0]] = result[1]
                        bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return out

    def _post(self, body: dict[str, Any], label: str) -> dict[str, Any]:
        endpoint = self.endpoint
        where = f"judge {endpoint.url}, {label}"
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            with self._count_lock:
                self.requests_sent += 1
            try:
                response = self._http.post(endpoint.url, json=body, headers=self._headers)
            except httpx.TimeoutException:
                problem = f"no reply within {endpoint.timeout:g} s"
            except httpx.TransportError as exc:
                problem = f"cannot reach the endpoint ({type(exc).__name__}: {exc})"
            else:
                if response.is_success:
                    try:
                        reply = response.json()
                    except ValueError as exc:
                        raise JudgeError(f"{where}: reply is not JSON ({exc})") from None
                    if not isinstance(reply, dict):
                        raise JudgeError(f"{where}: reply is not a JSON object: {str(reply)[:200]}")
                    return reply
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUSES:
                    raise JudgeError(f"{where}: {problem}")
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._now())
            if attempt >= endpoint.max_attempts:
                raise JudgeError(f"{where}: gave up after {attempt} attempt(s); last: {problem}")
            self._sleep(self._delay(attempt, retry_after))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's ``Retry-After`` if it gave one, else ``backoff * 2**(attempt-1)``
        with "equal jitter" (a uniform draw from its upper half), so parallel workers that
        failed together do not retry together; capped at ``max_wait``."""
        if retry_after is not None:
            return min(retry_after, self.endpoint.max_wait)
        cap = min(self.endpoint.backoff * 2 ** (attempt - 1), self.endpoint.max_wait)
        return self._rng.uniform(cap / 2, cap)
