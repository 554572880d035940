"""Correction pairs: a model's answer and its human correction → a dense preference pair.

RLHF-V's rule (ALGORITHMS.md §2): the corrected answer is ``chosen``, the original is
``rejected``. Diff the two token sequences, keep only matching blocks of at least
``min_match`` (3) tokens, and treat the gaps between kept blocks as edits. Only
*replacements* (gaps non-empty on both sides) are corrected segments, marked on both
responses; pure insertions and deletions are not. Spans are stored as character spans,
so the data does not depend on any model's tokenizer: the diff runs over word and
punctuation tokens (``\\w+`` runs and single other non-space characters), and a span runs
from the first changed token's start to the last changed token's end.

:func:`word_diff` is the finer, unfiltered diff (every insert, delete and replace) used to
show a correction to a person.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmalign.data_builders.images import ImageOptions
from mmalign.data_builders.schema import RecordError, RowErrors, validate_record
from mmalign.data_builders.sources import default_image_root, iter_rows, require
from mmalign.data_builders.sources import record_id as row_id

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
MIN_MATCH = 3

Span = tuple[int, int]


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Edit:
    """One difference between original and corrected text, as character spans.

    ``original`` / ``corrected`` are ``None`` on the side where the edit is empty
    (an insertion has no original span, a deletion no corrected span).
    """

    kind: Literal["replace", "insert", "delete"]
    original: Span | None
    corrected: Span | None


def tokenize(text: str) -> list[Token]:
    """Word and punctuation tokens with character offsets."""
    return [Token(m.group(), m.start(), m.end()) for m in TOKEN_PATTERN.finditer(text)]


def _span(tokens: Sequence[Token], lo: int, hi: int) -> Span | None:
    return (tokens[lo].start, tokens[hi - 1].end) if hi > lo else None


def _edit(a: Sequence[Token], b: Sequence[Token], a_lo: int, a_hi: int, b_lo: int, b_hi: int) -> Edit | None:
    original, corrected = _span(a, a_lo, a_hi), _span(b, b_lo, b_hi)
    if original and corrected:
        return Edit("replace", original, corrected)
    if original:
        return Edit("delete", original, None)
    if corrected:
        return Edit("insert", None, corrected)
    return None


def diff_edits(original: str, corrected: str, *, min_match: int = MIN_MATCH) -> list[Edit]:
    """Edits between the gaps of matching token blocks at least ``min_match`` long."""
    a, b = tokenize(original), tokenize(corrected)
    matcher = difflib.SequenceMatcher(None, [t.text for t in a], [t.text for t in b], autojunk=False)
    edits = []
    a_pos = b_pos = 0
    # The last matching block is the (len(a), len(b), 0) sentinel, which closes the tail gap.
    for block in matcher.get_matching_blocks():
        if block.size < min_match and block.size != 0:
            continue
        edit = _edit(a, b, a_pos, block.a, b_pos, block.b)
        if edit:
            edits.append(edit)
        a_pos, b_pos = block.a + block.size, block.b + block.size
    return edits


@dataclass(frozen=True)
class CorrectionSpans:
    """Corrected segments on each side: ``rejected`` spans index the original text."""

    chosen: list[list[int]]
    rejected: list[list[int]]


def correction_spans(original: str, corrected: str, *, min_match: int = MIN_MATCH) -> CorrectionSpans:
    """RLHF-V corrected segments: the replacement edits, as [start, end) spans per side."""
    replaced = [e for e in diff_edits(original, corrected, min_match=min_match) if e.kind == "replace"]
    return CorrectionSpans(
        chosen=[list(e.corrected) for e in replaced],
        rejected=[list(e.original) for e in replaced],
    )


def word_diff(original: str, corrected: str) -> list[Edit]:
    """Every token-level insert, delete and replace (no block filtering), for display."""
    a, b = tokenize(original), tokenize(corrected)
    matcher = difflib.SequenceMatcher(None, [t.text for t in a], [t.text for t in b], autojunk=False)
    edits = []
    for tag, a_lo, a_hi, b_lo, b_hi in matcher.get_opcodes():
        if tag != "equal":
            edit = _edit(a, b, a_lo, a_hi, b_lo, b_hi)
            if edit:
                edits.append(edit)
    return edits


def correction_record(
    original: str,
    corrected: str,
    *,
    prompt: Any,
    images: Sequence[Any] = (),
    facts: Sequence[str] | None = None,
    source: str = "corrections",
    meta: dict[str, Any] | None = None,
    min_match: int = MIN_MATCH,
) -> dict[str, Any]:
    """A canonical record (not yet validated) from an answer and its correction."""
    spans = correction_spans(original, corrected, min_match=min_match)
    return {
        "images": list(images),
        "prompt": prompt,
        "chosen": corrected,
        "rejected": original,
        "chosen_spans": spans.chosen,
        "rejected_spans": spans.rejected,
        "facts": list(facts) if facts is not None else None,
        "source": source,
        "meta": meta,
    }


CORRECTION_FIELDS = ("image", "images", "question", "prompt", "original", "corrected", "facts")


@dataclass
class CorrectionStats:
    """What a file of corrections gives Dense DPO: RLHF-V's rule up-weights replacements only,
    so deletions and insertions, and pairs with no replacement at all, train as plain DPO."""

    pairs: int = 0
    with_segments: int = 0
    replace: int = 0
    delete: int = 0
    insert: int = 0

    def add(self, edits: Sequence[Edit]) -> None:
        kinds = [e.kind for e in edits]
        self.pairs += 1
        self.with_segments += "replace" in kinds
        for kind in ("replace", "delete", "insert"):
            setattr(self, kind, getattr(self, kind) + kinds.count(kind))

    def summary(self) -> str:
        return (f"edits: {self.replace} replacements (corrected segments, up-weighted by gamma), {self.delete} "
                f"deletions and {self.insert} insertions (not up-weighted: RLHF-V's rule); "
                f"{self.pairs - self.with_segments} of {self.pairs} pairs have no corrected segment "
                "(they train as plain DPO)")


def read_corrections(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    errors: RowErrors | None = None,
    min_match: int = MIN_MATCH,
    stats: CorrectionStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Validated correction records from a JSON / JSON Lines / parquet file of corrections.

    Each row has ``original`` (the model's answer), ``corrected`` (the human fix), the
    question as ``question`` or ``prompt``, the image as ``image`` (one) or ``images``
    (a list) given as a path under ``image_root`` (default: the file's folder) or as a
    ``{"bytes", "path"}`` dict, and optionally ``facts``; other keys are kept in ``meta``.
    ``stats`` tallies the edits of the valid rows (:class:`CorrectionStats`).
    """
    errors = errors if errors is not None else RowErrors()
    options = ImageOptions(root=Path(image_root) if image_root else default_image_root(path))
    for row, raw in iter_rows(path, errors=errors):
        record_id = None
        try:
            record_id = row_id(raw, "id")
            prompt_key = "question" if "question" in raw else "prompt"
            images = raw.get("images") if "images" in raw else ([raw["image"]] if raw.get("image") else [])
            meta = {k: v for k, v in raw.items() if k not in CORRECTION_FIELDS}
            record = correction_record(
                require(raw, "original"),
                require(raw, "corrected"),
                prompt=require(raw, prompt_key, (str, list)),
                images=images,
                facts=raw.get("facts"),
                meta=json.loads(json.dumps(meta, default=str)) or None,
                min_match=min_match,
            )
            valid = validate_record(record, row=row, record_id=record_id, images=options)
            if stats is not None:
                stats.add(diff_edits(record["rejected"], record["chosen"], min_match=min_match))
            yield valid
        except RecordError as err:
            errors(err.located(row, record_id))
