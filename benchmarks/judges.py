"""Pluggable judges: an OpenAI-compatible HTTP endpoint, a local model via an adapter, or
rules over ground truth.

A text judge is any callable ``judge(prompts: list[str]) -> list[str]`` with a ``name``
attribute (recorded in reports). Reports record, per rating, the model that wrote it
(:func:`judge_texts`): a judge with ``judge_with_models`` tells it per judgement (the HTTP
judge: the ``model`` its endpoint reports, which may be more precise than the name asked
for), any other judge is its own name. A record judge has ``judge_records(records, answers)``
instead and reads the benchmark records themselves, for worlds whose image contents are
fully known (:class:`mmalign.benchmarks.scene_judge.SceneJudge`); its output is judged text
all the same, so ratings go through the same extraction. The HTTP judge speaks the
``/chat/completions`` protocol that OpenAI, vLLM, llama.cpp and most servers share, through
:mod:`mmalign.judge_client` (the client the AI-feedback builder uses too); its base URL
comes from configuration and its API key only from an environment variable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mmalign.judge_client import JudgeClient, reply_text


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


def judge_model(judge: Any) -> str:
    """The model a judge asks for (an HTTP judge's model name, without the endpoint), else its name."""
    return getattr(judge, "model", None) or judge_name(judge)


def judge_texts(judge: Judge, prompts: Sequence[str]) -> list[tuple[str, str]]:
    """Each prompt's judgement with the model that wrote it (see the module docstring)."""
    if callable(getattr(judge, "judge_with_models", None)):
        return list(judge.judge_with_models(prompts))
    name = judge_name(judge)
    return [(text, name) for text in judge(prompts)]


class HTTPJudge:
    """A text judge behind an OpenAI-compatible endpoint: each prompt is one user message,
    the reply's first choice is the judgement. The requests go through a
    :class:`~mmalign.judge_client.JudgeClient` (concurrency, retries, reply cache)."""

    def __init__(self, client: JudgeClient, *, temperature: float = 0.0, max_tokens: int = 1024):
        self.client = client
        self.name = client.name
        self.model = client.endpoint.model
        self.temperature = temperature
        self.max_tokens = max_tokens

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        return [text for text, _ in self.judge_with_models(prompts)]

    def judge_with_models(self, prompts: Sequence[str]) -> list[tuple[str, str]]:
        """Each judgement with the model the reply names (the ``model`` field of an
        OpenAI-compatible reply), or the model asked for when the reply does not say."""
        # Prompts share a long template, so an error names one by position and content hash.
        labels = [f"prompt {i + 1} of {len(prompts)} (sha256 {hashlib.sha256(p.encode()).hexdigest()[:16]})"
                  for i, p in enumerate(prompts)]
        replies = self.client.chat_many([[{"role": "user", "content": p}] for p in prompts], labels=labels,
                                        desc="judging", temperature=self.temperature, max_tokens=self.max_tokens)
        return [(reply_text(r), _reported_model(r) or self.model) for r in replies]


def _reported_model(reply: Mapping[str, Any]) -> str | None:
    model = reply.get("model")
    return model if isinstance(model, str) and model.strip() else None


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
