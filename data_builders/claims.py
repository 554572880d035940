"""Claim splitting and claim judging for AI feedback (RLAIF-V's divide and conquer).

A response is split into short claims, each claim becomes a yes/no verification question,
and a judge VLM answers it while looking at the image. A claim passes when the judge
finds "yes" more likely than "no": P(yes) > P(no).

Both steps are pluggable (any object with the ``split`` / ``judge`` method):

* splitters: :class:`SentenceSplitter` (rule-based, deterministic, no model),
  :class:`AdapterSplitter` (asks a local model), :class:`EndpointSplitter` (asks an
  OpenAI-compatible chat endpoint);
* judges: :class:`AdapterJudge` (a local model through the adapter contract, by comparing
  the log-probabilities of the answers "yes" and "no") and :class:`EndpointJudge` (an
  OpenAI-compatible endpoint, from the first token's top log-probs, or its text).

The endpoint classes send their requests through :class:`mmalign.judge_client.JudgeClient`
(the benchmarks' judges use it too): concurrency, retries honouring ``Retry-After`` and a
resumable reply cache. Its base URL comes from configuration; its API key only from an
environment variable (never a flag or a file).
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from mmalign.judge_client import JudgeClient, reply_text

VERIFY_TEMPLATE = "Is the following statement about the image true? {claim} Please answer yes or no."

CLAIM_INSTRUCTION = (
    "Split the answer below into short, self-contained statements of fact about the image, "
    "one per line, without numbering or any other text.\n\nQuestion: {prompt}\nAnswer: {response}"
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+|;\s*")
_BULLET = re.compile(r"^\s*(?:[-*•]|\(?\d+[.)]|\(?[a-z][.)])\s+", re.I)


@dataclass(frozen=True)
class Claim:
    """One checkable statement from a response and the question that verifies it."""

    text: str
    question: str


def claims_from_lines(lines: Sequence[str], template: str = VERIFY_TEMPLATE, min_words: int = 2) -> list[Claim]:
    """Claims from candidate statements: bullets stripped, short fragments and repeats dropped."""
    seen: set[str] = set()
    claims = []
    for line in lines:
        text = _BULLET.sub("", line).strip()
        if len(text.split()) < min_words or text.lower() in seen:
            continue
        seen.add(text.lower())
        claims.append(Claim(text, template.format(claim=text)))
    return claims


class ClaimSplitter(Protocol):
    def split(self, prompt: str, response: str) -> list[Claim]: ...


class ClaimJudge(Protocol):
    def judge(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[Verdict]: ...


@dataclass(frozen=True)
class SentenceSplitter:
    """Rule-based claims: sentences and ';'-separated clauses of at least ``min_words`` words.

    Coarser than an LLM's atomic claims, but deterministic and model-free; a sentence that
    bundles two facts fails if either is wrong, which is the conservative direction.
    """

    template: str = VERIFY_TEMPLATE
    min_words: int = 2

    def split(self, prompt: str, response: str) -> list[Claim]:
        return claims_from_lines(_SENTENCE_END.split(response), self.template, self.min_words)


@dataclass
class AdapterSplitter:
    """Ask a local model (text only) to list the claims, one per line."""

    adapter: Any
    template: str = VERIFY_TEMPLATE
    instruction: str = CLAIM_INSTRUCTION
    max_new_tokens: int = 256
    min_words: int = 2

    def split(self, prompt: str, response: str) -> list[Claim]:
        text = self.adapter.generate(
            None, [self.instruction.format(prompt=prompt, response=response)], max_new_tokens=self.max_new_tokens
        )[0]
        return claims_from_lines(text.splitlines(), self.template, self.min_words)


@dataclass(frozen=True)
class Verdict:
    """A judge's answer to one verification question, as log-probabilities (nats)."""

    logp_yes: float
    logp_no: float

    @property
    def passed(self) -> bool:
        return self.logp_yes > self.logp_no


# ---------------------------------------------------------------------------- local judge
@dataclass
class AdapterJudge:
    """Judge claims with a local VLM: compare log P("yes") and log P("no") as the answer.

    Each question is encoded twice, with the response ``yes`` and ``no``; the answer's
    log-probability is the sum over its own tokens (the end-of-turn token is excluded, so
    both answers are scored as the same kind of prefix).
    """

    adapter: Any
    yes: str = "yes"
    no: str = "no"
    batch_size: int = 8
    _lengths: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.adapter.model.eval()  # the judge only runs inference
        for answer in (self.yes, self.no):
            self._lengths[answer] = len(self.adapter.tokenizer(answer, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def answer_logprobs(self, images: Sequence[Image.Image], questions: Sequence[str]) -> torch.Tensor:
        """``(len(questions), 2)`` log-probs of the answers (yes, no) to each question."""
        rows = [(q, a) for q in questions for a in (self.yes, self.no)]
        out = []
        for lo in range(0, len(rows), self.batch_size * 2):
            chunk = rows[lo : lo + self.batch_size * 2]
            batch = self.adapter.encode(
                [list(images)] * len(chunk), [q for q, _ in chunk], [a for _, a in chunk]
            ).to(self.adapter.device)
            logps, _ = self.adapter.response_logprobs(batch)
            for i, (_, answer) in enumerate(chunk):
                out.append(logps[i, : self._lengths[answer]].sum())
        return torch.stack(out).view(-1, 2).float().cpu() if out else torch.zeros(0, 2)

    def judge(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[Verdict]:
        return [Verdict(float(y), float(n)) for y, n in self.answer_logprobs(images, questions)]


# ---------------------------------------------------------------------------- endpoints
def image_data_url(img: Image.Image) -> str:
    """An image as a PNG ``data:`` URL, the form chat endpoints accept inline."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


@dataclass
class EndpointJudge:
    """Judge claims with a VLM behind an OpenAI-compatible endpoint.

    Asks for one token with ``logprobs`` / ``top_logprobs``; P(yes) sums every top token
    that reads "yes" once stripped and lower-cased ("Yes", " yes", ...), likewise "no".
    If the endpoint returns no log-probs, the reply text decides (log-prob 0 for the
    answer given, −inf for the other; anything else fails the claim). All questions of a
    call go out together, ``client.endpoint.concurrency`` at a time.
    """

    client: JudgeClient
    yes: str = "yes"
    no: str = "no"
    top_logprobs: int = 5

    def _verdict(self, reply: dict[str, Any]) -> Verdict:
        choice = (reply.get("choices") or [{}])[0]
        content = (choice.get("logprobs") or {}).get("content") or []
        if content:
            first = content[0]
            candidates = [*(first.get("top_logprobs") or []), first]
            seen: dict[str, dict[str, float]] = {self.yes: {}, self.no: {}}
            for cand in candidates:
                word = str(cand.get("token", "")).strip().strip(".,!").lower()
                if word in seen:
                    seen[word][cand["token"]] = float(cand["logprob"])
            return Verdict(_logsumexp(list(seen[self.yes].values())), _logsumexp(list(seen[self.no].values())))
        text = reply_text(reply).strip().lower()
        return Verdict(0.0 if text.startswith(self.yes) else -math.inf,
                       0.0 if text.startswith(self.no) else -math.inf)

    def judge(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[Verdict]:
        image_parts = [{"type": "image_url", "image_url": {"url": image_data_url(img)}} for img in images]
        replies = self.client.chat_many(
            [[{"role": "user", "content": [*image_parts, {"type": "text", "text": q}]}] for q in questions],
            labels=[f"claim question {q!r}" for q in questions], desc="ai-feedback: judging claims",
            max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top_logprobs,
        )
        return [self._verdict(reply) for reply in replies]


@dataclass
class EndpointSplitter:
    """Ask an OpenAI-compatible chat endpoint to list a response's claims, one per line."""

    client: JudgeClient
    template: str = VERIFY_TEMPLATE
    instruction: str = CLAIM_INSTRUCTION
    min_words: int = 2

    def split(self, prompt: str, response: str) -> list[Claim]:
        messages = [{"role": "user", "content": self.instruction.format(prompt=prompt, response=response)}]
        reply = self.client.chat(messages, label=f"claim split of {response[:60]!r}", temperature=0.0,
                                 max_tokens=512)
        return claims_from_lines(reply_text(reply).splitlines(), self.template, self.min_words)
