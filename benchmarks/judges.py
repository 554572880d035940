"""Pluggable judges: an OpenAI-compatible HTTP endpoint, a local model via an adapter, or
rules over ground truth.

A text judge is any callable ``judge(prompts: list[str]) -> list[str]`` with a ``name``
attribute (recorded in reports). A record judge has ``judge_records(records, answers)``
instead and reads the benchmark records themselves, for worlds whose image contents are
fully known (:class:`mmalign.benchmarks.scene_judge.SceneJudge`); its output is judged text
all the same, so ratings go through the same extraction. The HTTP judge speaks the ``/chat/completions`` protocol
that OpenAI, vLLM, llama.cpp and most servers share; its base URL comes from configuration
and its API key only from an environment variable, never from code or config files.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: HTTP statuses worth retrying: rate limits and transient server errors.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class Judge(Protocol):
    name: str

    def __call__(self, prompts: Sequence[str]) -> list[str]: ...


class RecordJudge(Protocol):
    name: str

    def judge_records(self, records: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[str]: ...


def is_record_judge(judge: Any) -> bool:
    """Whether ``judge`` reads records (``judge_records``) rather than prompts."""
    return callable(getattr(judge, "judge_records", None))


def judge_name(judge: Any) -> str:
    """The name a report records for ``judge``."""
    return getattr(judge, "name", None) or getattr(judge, "__name__", None) or type(judge).__name__


@dataclass
class HTTPJudgeConfig:
    """An OpenAI-compatible chat endpoint. ``base_url`` ends before ``/chat/completions``
    (e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``); the key is read
    from the environment variable ``api_key_env`` (no header is sent when it is unset)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout: float = 120.0
    max_retries: int = 3
    retry_wait: float = 2.0  # seconds, doubled after each retry


class HTTPJudge:
    """Sends each prompt as one user message; returns the first choice's text."""

    def __init__(self, config: HTTPJudgeConfig):
        self.config = config
        self.name = f"{config.model} @ {config.base_url}"

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        return [self.complete(p) for p in prompts]

    def complete(self, prompt: str) -> str:
        config = self.config
        url = config.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({
            "model": config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        wait = config.retry_wait
        for attempt in range(config.max_retries + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=config.timeout) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace")
                if err.code not in RETRY_STATUSES or attempt == config.max_retries:
                    raise RuntimeError(f"judge {url}: HTTP {err.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == config.max_retries:
                    raise RuntimeError(f"judge {url}: {err}") from None
            time.sleep(wait)
            wait *= 2
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise RuntimeError(f"judge {url}: unexpected response {payload[:300]!r}") from None
        if not isinstance(content, str):
            raise RuntimeError(f"judge {url}: message content is not text: {content!r}")
        return content


class GenerativeJudge:
    """A local model as a text-only judge, through the adapter's batched greedy generation."""

    def __init__(self, adapter: Any, name: str | None = None, *, max_new_tokens: int = 512, batch_size: int = 4):
        self.adapter = adapter
        self.name = name or f"local:{getattr(getattr(adapter, 'card', None), 'name', 'model')}"
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            out += self.adapter.generate(None, batch, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [text.strip() for text in out]
