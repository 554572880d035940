"""AI-feedback preference pairs, RLAIF-V style (divide and conquer), ALGORITHMS.md §8.

For every prompt: sample ``num_samples`` responses from the policy (T = 0.7), split each
into claims, ask a judge VLM a yes/no question per claim, score each response by
−(number of failed claims), and pair responses whose scores differ by at least
``min_gap``, at most ``max_pairs_per_prompt`` pairs per prompt, balancing lengths.

Pairing rules (:func:`select_pairs`, a pure function):

* candidates are ordered pairs (better, worse) with ``score gap ≥ min_gap``;
* a response appears in at most one pair per prompt, so two pairs use four responses;
* pairs are picked greedily. With length balancing on, a running balance counts pairs
  whose chosen response is longer (+1) minus shorter (−1) over the whole build; while it
  is non-zero, pairs that move it back towards zero (or keep lengths equal) come first,
  so "longer" or "shorter" does not become what the pairs teach. Then larger gaps come
  first, then smaller length differences.

Responses that are empty or yield no claims are left out: with nothing to check, their
score of 0 would make them look perfect.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmalign.data_builders.claims import ClaimJudge, ClaimSplitter, SentenceSplitter
from mmalign.data_builders.images import ImageOptions, decode_image
from mmalign.data_builders.importers import read_llava_conversations, strip_image_token
from mmalign.data_builders.schema import (
    RecordError,
    RowErrors,
    kind_of,
    log,
    prompt_text,
    validate_prompt_record,
    validate_record,
)
from mmalign.data_builders.sources import default_image_root, iter_rows, require
from mmalign.data_builders.storage import WriteReport, iter_records, open_dataset, write_dataset
from mmalign.io import from_mapping


@dataclass
class AIFeedbackConfig:
    """Sampling and pairing settings (RLAIF-V defaults: 10 samples at T = 0.7, gap ≥ 1, 2 pairs)."""

    num_samples: int = 10
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    min_gap: float = 1.0
    max_pairs_per_prompt: int = 2
    balance_lengths: bool = True
    prompts_per_batch: int = 4
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AIFeedbackConfig:
        """Build from a mapping (e.g. YAML); unknown keys are an error, not silently ignored."""
        return from_mapping(cls, values, "AI-feedback")


@dataclass
class ScoredResponse:
    """One sampled response with its claims and the claims the judge rejected."""

    text: str
    claims: list[str]
    failed: list[str]

    @property
    def score(self) -> int:
        return -len(self.failed)

    @property
    def words(self) -> int:
        return len(self.text.split())


def _direction(chosen_len: int, rejected_len: int) -> int:
    return (chosen_len > rejected_len) - (chosen_len < rejected_len)


def select_pairs(
    scores: Sequence[float],
    lengths: Sequence[int],
    *,
    min_gap: float = 1.0,
    max_pairs: int = 2,
    balance: int = 0,
    balance_lengths: bool = True,
) -> tuple[list[tuple[int, int]], int]:
    """Pick ``(chosen, rejected)`` index pairs for one prompt; returns them and the new balance.

    ``balance`` is the running (chosen longer) − (chosen shorter) count carried across
    prompts; see the module docstring for the rules.
    """
    if len(scores) != len(lengths):
        raise ValueError("scores and lengths must have the same length")
    candidates = [
        (i, j) for i in range(len(scores)) for j in range(len(scores)) if scores[i] - scores[j] >= min_gap
    ]

    def priority(pair: tuple[int, int]) -> tuple:
        i, j = pair
        direction = _direction(lengths[i], lengths[j])
        worsens = balance_lengths and balance != 0 and direction * balance > 0
        return (worsens, -(scores[i] - scores[j]), abs(lengths[i] - lengths[j]), i, j)

    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    while len(pairs) < max_pairs:
        free = [p for p in candidates if p[0] not in used and p[1] not in used]
        if not free:
            break
        i, j = min(free, key=priority)
        pairs.append((i, j))
        used.update((i, j))
        balance += _direction(lengths[i], lengths[j])
    return pairs, balance


def score_responses(
    images: Sequence[Any],
    prompt: str,
    responses: Sequence[str],
    splitter: ClaimSplitter,
    judge: ClaimJudge,
) -> list[ScoredResponse]:
    """Split every response into claims and judge them all in one call (batched judging)."""
    claims = [splitter.split(prompt, r) for r in responses]
    flat = [c for cs in claims for c in cs]
    verdicts = judge.judge(images, [c.question for c in flat]) if flat else []
    scored, k = [], 0
    for response, cs in zip(responses, claims):
        passed = [v.passed for v in verdicts[k : k + len(cs)]]
        k += len(cs)
        scored.append(ScoredResponse(response, [c.text for c in cs],
                                     [c.text for c, ok in zip(cs, passed) if not ok]))
    return scored


@dataclass
class FeedbackStats:
    """Counts over a build, for the report and to watch the length balance."""

    prompts: int = 0
    samples: int = 0
    dropped_empty: int = 0
    dropped_no_claims: int = 0
    duplicates: int = 0
    pairs: int = 0
    prompts_without_pair: int = 0
    balance: int = 0
    chosen_words: int = 0
    rejected_words: int = 0

    def summary(self) -> str:
        pairs = max(self.pairs, 1)
        return (
            f"{self.prompts} prompts, {self.samples} samples ({self.dropped_empty} empty, "
            f"{self.dropped_no_claims} without claims, {self.duplicates} duplicates dropped), "
            f"{self.pairs} pairs, {self.prompts_without_pair} prompts without a pair; mean words "
            f"chosen {self.chosen_words / pairs:.1f} vs rejected {self.rejected_words / pairs:.1f}, "
            f"length balance {self.balance:+d}"
        )


@dataclass
class AIFeedbackBuilder:
    """Orchestrates sampling → claims → judging → pairing; yields canonical records.

    ``policy`` is a :class:`~mmalign.models.adapter.VLMAdapter` (anything with ``generate``);
    ``judge`` and ``splitter`` follow :mod:`mmalign.data_builders.claims`.
    """

    policy: Any
    judge: ClaimJudge
    splitter: ClaimSplitter = field(default_factory=SentenceSplitter)
    config: AIFeedbackConfig = field(default_factory=AIFeedbackConfig)
    stats: FeedbackStats = field(default_factory=FeedbackStats)

    def sample(self, images: list[list[Any]], prompts: list[Any]) -> list[list[str]]:
        """``num_samples`` sampled responses per prompt."""
        cfg = self.config
        flat = self.policy.generate(
            images, prompts, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
            num_return_sequences=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
        )
        n = cfg.num_samples
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _usable(self, responses: list[str]) -> list[str]:
        kept: list[str] = []
        for text in responses:
            text = text.strip()
            if not text:
                self.stats.dropped_empty += 1
            elif text in kept:
                self.stats.duplicates += 1
            else:
                kept.append(text)
        return kept

    def pairs_for(self, record: Mapping[str, Any], images: list[Any], responses: list[str]) -> list[dict[str, Any]]:
        """Score one prompt's responses and turn the selected pairs into (unvalidated) records."""
        cfg, stats = self.config, self.stats
        text = prompt_text(record["prompt"])
        scored = []
        for response in score_responses(images, text, self._usable(responses), self.splitter, self.judge):
            if response.claims:
                scored.append(response)
            else:
                stats.dropped_no_claims += 1
        pairs, stats.balance = select_pairs(
            [s.score for s in scored], [s.words for s in scored], min_gap=cfg.min_gap,
            max_pairs=cfg.max_pairs_per_prompt, balance=stats.balance, balance_lengths=cfg.balance_lengths,
        )
        if not pairs:
            stats.prompts_without_pair += 1
        meta_in = record.get("meta")
        base_meta = json.loads(meta_in) if isinstance(meta_in, str) else dict(meta_in or {})
        out = []
        for i, j in pairs:
            good, bad = scored[i], scored[j]
            stats.pairs += 1
            stats.chosen_words += good.words
            stats.rejected_words += bad.words
            meta = {**base_meta, "chosen_score": good.score, "rejected_score": bad.score,
                    "chosen_claims": len(good.claims), "rejected_claims": len(bad.claims),
                    "chosen_failed": good.failed, "rejected_failed": bad.failed,
                    "samples": len(responses)}
            out.append({"images": record["images"], "prompt": record["prompt"], "chosen": good.text,
                        "rejected": bad.text, "source": "ai-feedback", "meta": meta})
        return out

    def records(self, prompts: Iterable[Mapping[str, Any]], errors: RowErrors | None = None) -> Iterator[dict[str, Any]]:
        """Validated preference records for a stream of prompt-set records.

        Seeds torch's global generator with ``config.seed`` first, so a build is repeatable.
        """
        errors = errors if errors is not None else RowErrors()
        torch.manual_seed(self.config.seed)
        batch: list[Mapping[str, Any]] = []
        for record in prompts:
            batch.append(record)
            if len(batch) >= self.config.prompts_per_batch:
                yield from self._run(batch, errors)
                batch = []
        if batch:
            yield from self._run(batch, errors)
        log.info("ai-feedback: %s", self.stats.summary())

    def _run(self, batch: list[Mapping[str, Any]], errors: RowErrors) -> Iterator[dict[str, Any]]:
        images = [[decode_image(img) for img in r["images"]] for r in batch]
        samples = self.sample(images, [r["prompt"] for r in batch])
        for record, imgs, responses in zip(batch, images, samples):
            self.stats.prompts += 1
            self.stats.samples += len(responses)
            for pair in self.pairs_for(record, imgs, responses):
                try:
                    yield validate_record(pair, images=ImageOptions(decode=False))
                except RecordError as err:
                    errors(err)


# ---------------------------------------------------------------------------- prompts
def _prompt_rows(path: Path, image_root: Path, errors: RowErrors) -> Iterator[dict[str, Any]]:
    options = ImageOptions(root=image_root)
    for row, raw in iter_rows(path, errors=errors):
        try:
            images = raw.get("images") if raw.get("images") is not None else (
                [raw["image"]] if raw.get("image") else [])
            key = "question" if "question" in raw else "prompt"
            prompt = require(raw, key, (str, list))
            record = {
                "images": images,
                "prompt": strip_image_token(prompt) if isinstance(prompt, str) else prompt,
                "reference": raw.get("reference"),
                "source": raw.get("source") or "prompts",
                "meta": {"id": raw["id"]} if raw.get("id") is not None else None,
            }
            yield validate_prompt_record(record, row=row, images=options)
        except RecordError as err:
            errors(err.located(row))


def _is_llava_json(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096)
    return '"conversations"' in head


def read_prompts(
    path: str | Path, *, image_root: str | Path | None = None, errors: RowErrors | None = None
) -> Iterator[dict[str, Any]]:
    """Prompt-set records from any prompt source, in the stored form.

    Accepted: a saved prompt set or preference dataset (its distinct image + prompt
    pairs), LLaVA conversation JSON (first turns), or JSON / JSON Lines / parquet rows
    with ``image`` / ``images`` and ``question`` / ``prompt``.
    """
    path = Path(path)
    errors = errors if errors is not None else RowErrors()
    root = Path(image_root) if image_root else default_image_root(path)
    if path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        ds = open_dataset(path)
        is_preference = kind_of(ds.column_names) != "prompts"
        seen: set[str] = set()
        for row, raw in enumerate(iter_records(ds)):
            try:
                record = validate_prompt_record(
                    {k: raw.get(k) for k in ("images", "prompt", "reference", "source", "meta")},
                    row=row, images=ImageOptions(),
                )
            except RecordError as err:
                errors(err)
                continue
            if is_preference:
                key = hashlib.sha256(json.dumps(record["prompt"]).encode()
                                     + b"".join(i["bytes"] for i in record["images"])).hexdigest()
                if key in seen:
                    continue
                seen.add(key)
            yield record
    elif _is_llava_json(path):
        yield from read_llava_conversations(path, image_root=root, errors=errors)
    else:
        yield from _prompt_rows(path, root, errors)


def build_ai_feedback(
    prompts: str | Path | Iterable[Mapping[str, Any]],
    out: str | Path,
    builder: AIFeedbackBuilder,
    *,
    image_root: str | Path | None = None,
    lenient: bool = False,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> WriteReport:
    """Run ``builder`` over a prompt source (path or records) and save the pairs atomically.

    ``out`` must not be the prompt source or any of ``inputs`` (e.g. the model folders); a
    folder that is not a dataset is replaced only with ``overwrite``."""
    errors = RowErrors(lenient=lenient)
    inputs = [*inputs, image_root, *([prompts] if isinstance(prompts, str | Path) else [])]
    source = read_prompts(prompts, image_root=image_root, errors=errors) if isinstance(prompts, str | Path) else prompts
    return write_dataset(builder.records(source, errors), out, errors=errors, overwrite=overwrite, inputs=inputs)
