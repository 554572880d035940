"""The canonical preference record: its columns, their features, and record validation.

This module is the single definition of what trainers consume. It follows TRL's preference
columns (``images`` / ``prompt`` / ``chosen`` / ``rejected``, responses as text; TRL's
``DPOTrainer`` takes the ``trl`` export of :mod:`~mmalign.data_builders.export`), and adds optional columns used only by the methods that
need them: corrected spans (Dense DPO), facts (Fact-RLHF reward model), dual-preference
safety labels (Safe RLHF-V) and provenance.

A second, smaller schema describes *prompt sets* (images + prompt, no responses), the
input of the AI-feedback builder.

Every record is checked by :func:`validate_record` before it is written or after it is
loaded; errors are :class:`RecordError` and name the row and the field.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmalign.chat import IMAGE_PLACEHOLDER, image_slots, user_turn
from mmalign.data_builders.images import ImageError, ImageOptions, load_image_bytes

log = logging.getLogger("mmalign.data")

SCHEMA_VERSION = 1
SIDES = ("chosen", "rejected")
ROLES = ("system", "user", "assistant")
HARMLESS_RANGE = (-3, 3)
HELPFUL_RANGE = (0, 3)

PREFERENCE = "preference"
PROMPTS = "prompts"


@dataclass(frozen=True)
class Column:
    """One column of a canonical dataset, as documented in docs/data.md."""

    name: str
    type: str
    required: bool
    doc: str
    kinds: tuple[str, ...] = (PREFERENCE,)


COLUMNS: tuple[Column, ...] = (
    Column("images", "list of images (`datasets.Image`)", True,
           "Images of the prompt, in order; an empty list for text-only rows.", (PREFERENCE, PROMPTS)),
    Column("prompt", "string, or list of chat messages", True,
           "User text (images are placed before it, or at its `<image>` placeholders, one per image in order), or a conversation in the TRL format "
           "with one `{\"type\": \"image\"}` part per image.", (PREFERENCE, PROMPTS)),
    Column("chosen", "string", True, "Preferred response (non-empty)."),
    Column("rejected", "string", True, "Dispreferred response (non-empty, differs from `chosen`)."),
    Column("rejected_images", "list of images (`datasets.Image`)", False,
           "Images the rejected response is shown with, one per image of `images` (the TRL / ms-swift field): "
           "an image-contrast pair holds the same answer with a corrupted or counterfactual image. Empty or "
           "absent: the rejected response sees `images`."),
    Column("chosen_spans", "list of [start, end)", False,
           "Corrected segments of `chosen` as character spans: sorted, non-overlapping, "
           "0 ≤ start < end ≤ len(chosen) (Dense DPO weights them by γ)."),
    Column("rejected_spans", "list of [start, end)", False, "Corrected segments of `rejected`, same rules."),
    Column("facts", "list of strings", False,
           "Statements known to hold for the image (captions, rationales) for the Fact-RLHF reward model.",
           (PREFERENCE, PROMPTS)),
    Column("more_helpful", "`\"chosen\"` / `\"rejected\"`", False,
           "Which response the helpfulness preference favours (Safe RLHF-V reward model)."),
    Column("safer", "`\"chosen\"` / `\"rejected\"`", False,
           "Which response the safety preference favours (Safe RLHF-V cost model)."),
    Column("chosen_is_safe", "bool", False, "Whether `chosen` is labelled safe."),
    Column("rejected_is_safe", "bool", False, "Whether `rejected` is labelled safe."),
    Column("chosen_harmless_rate", "int −3…3", False, "Graded harmlessness of `chosen` (≥ 0 usually means safe)."),
    Column("rejected_harmless_rate", "int −3…3", False, "Graded harmlessness of `rejected`."),
    Column("chosen_helpful_rate", "int 0…3", False, "Graded helpfulness of `chosen`."),
    Column("rejected_helpful_rate", "int 0…3", False, "Graded helpfulness of `rejected`."),
    Column("reference", "string", False, "A reference answer, when the source has one.", (PROMPTS,)),
    Column("objects", "list of strings", False,
           "Object categories annotated as present in the image (for the object-grounding rewards of RL).",
           (PROMPTS,)),
    Column("source", "string", False,
           "Where the record came from (`rlhf-v`, `beavertails-v`, `ai-feedback`, ...).", (PREFERENCE, PROMPTS)),
    Column("meta", "JSON object (string)", False,
           "Provenance kept from the source (ids, origin dataset, categories, judge scores).",
           (PREFERENCE, PROMPTS)),
)


def columns(kind: str = PREFERENCE) -> list[Column]:
    return [c for c in COLUMNS if kind in c.kinds]


def column_names(kind: str = PREFERENCE) -> list[str]:
    return [c.name for c in columns(kind)]


def schema_markdown(kind: str = PREFERENCE) -> str:
    """The column table of docs/data.md, generated from :data:`COLUMNS`."""
    lines = ["| column | type | required | meaning |", "|---|---|---|---|"]
    for c in columns(kind):
        lines.append(f"| `{c.name}` | {c.type} | {'yes' if c.required else 'no'} | {c.doc} |")
    return "\n".join(lines)


def features(kind: str = PREFERENCE, conversational: bool = False):
    """``datasets.Features`` of a canonical dataset; every column is always present."""
    from datasets import Features, Image, List, Value

    text = Value("string")
    messages = List({"role": text, "content": List({"type": text, "text": text})})
    span_list = List(List(Value("int64")))
    by_name = {
        "images": List(Image()),
        "prompt": messages if conversational else text,
        "chosen": text,
        "rejected": text,
        "rejected_images": List(Image()),
        "chosen_spans": span_list,
        "rejected_spans": span_list,
        "facts": List(text),
        "more_helpful": text,
        "safer": text,
        "chosen_is_safe": Value("bool"),
        "rejected_is_safe": Value("bool"),
        "chosen_harmless_rate": Value("int8"),
        "rejected_harmless_rate": Value("int8"),
        "chosen_helpful_rate": Value("int8"),
        "rejected_helpful_rate": Value("int8"),
        "reference": text,
        "objects": List(text),
        "source": text,
        "meta": text,
    }
    return Features({name: by_name[name] for name in column_names(kind)})


# ---------------------------------------------------------------------------- errors
class RowRef(int):
    """A 0-based row number that also knows the file it was read from (a shard of a folder):
    errors located with it name that file and the row within it."""

    file: str | None

    def __new__(cls, row: int, file: str | None = None) -> RowRef:
        ref = super().__new__(cls, row)
        ref.file = file
        return ref


def shorten(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about arbitrary data."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecordError(ValueError):
    """A bad record. ``str()`` names the file (if known), the row, the record id (if known)
    and the field: ``data/part-1.jsonl row 3 (id 17), field 'chosen': is empty``."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None,
                 record_id: str | None = None, file: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.row = None if row is None else int(row)
        self.record_id = record_id
        self.file = file if file is not None else getattr(row, "file", None)

    def located(self, row: int | None, record_id: str | None = None, file: str | None = None) -> RecordError:
        """The same error with the row (and id, and file) filled in where missing; a
        :class:`RowRef` brings its file."""
        return RecordError(
            self.message,
            field=self.field,
            row=self.row if self.row is not None else row,
            record_id=self.record_id if self.record_id is not None else record_id,
            file=self.file or file or getattr(row, "file", None),
        )

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            shown = repr(str(self.record_id))[1:-1] if self.record_id else ""
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            where.append(f"row {self.row}" + (f" (id {shown})" if shown else ""))
        if self.field is not None:
            where.append(f"field {self.field!r}")
        located = ", ".join(where)
        if self.file:
            located = f"{self.file}{' ' if self.row is not None else ', '}{located}" if located else self.file
        return (located + ": " if located else "") + self.message


@dataclass
class RowErrors:
    """What to do with a bad row: raise (strict, the default) or count, log and skip.

    Pass the same instance to a reader and to the writer so one report covers both.
    """

    lenient: bool = False
    skipped: list[RecordError] = field(default_factory=list)

    def __call__(self, error: RecordError) -> None:
        if not self.lenient:
            raise error
        self.skipped.append(error)
        log.warning("skipped %s", error)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        """e.g. ``skipped 3 rows (2 × 'images[0]', 1 × 'chosen')``."""
        if not self.skipped:
            return "skipped 0 rows"
        by_field = Counter(e.field or "record" for e in self.skipped)
        parts = ", ".join(f"{n} × {name!r}" for name, n in by_field.most_common())
        return f"skipped {self.count} row{'s' if self.count != 1 else ''} ({parts})"


def _fail(fld: str, message: str) -> RecordError:
    return RecordError(message, field=fld)


# ---------------------------------------------------------------------------- text
#: Characters that are letters, symbols or marks to Unicode but render as nothing (Hangul
#: fillers, the blank Braille pattern, the combining grapheme joiner): text made of them is as
#: empty as whitespace.
INVISIBLE = frozenset("\u034f\u115f\u1160\u2800\u3164\uffa0")
#: Categories that show nothing on their own: controls, format characters (zero-width space,
#: joiners, soft hyphen, byte-order mark...), surrogates, unassigned code points, separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zs", "Zl", "Zp"})


def is_visible(ch: str) -> bool:
    """A character that shows: a letter, digit, punctuation or symbol (not a filler)."""
    return unicodedata.category(ch)[0] in "LNPS" and ch not in INVISIBLE


def has_visible_text(text: str) -> bool:
    return any(is_visible(ch) for ch in text)


def meaningful(text: str) -> str:
    """``text`` as a reader sees it: NFC, characters that show nothing (format characters,
    controls, fillers...) dropped, runs of whitespace made one space. Two texts with the same
    ``meaningful`` form read the same."""
    kept = "".join(ch for ch in unicodedata.normalize("NFC", text)
                   if ch.isspace() or (ch not in INVISIBLE and unicodedata.category(ch) not in INVISIBLE_CATEGORIES))
    return " ".join(kept.split())


def _code_points(text: str, limit: int = 5) -> str:
    seen = list(dict.fromkeys(f"U+{ord(ch):04X}" for ch in text if not ch.isspace()))
    return ", ".join(seen[:limit]) + (", ..." if len(seen) > limit else "")


def _unicode(value: str, fld: str) -> str:
    """``value`` unless it holds a lone surrogate, which no file can store (not valid Unicode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise _fail(fld, f"holds an unpaired surrogate at character {err.start} (not valid Unicode)") from None
    return value


#: C0 and C1 control characters other than newline and tab, and the Unicode bidirectional
#: overrides and isolates, which can rewrite what a terminal shows.
_TERMINAL_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7f, 0xa0)) if chr(c) not in "\n\t"}
_TERMINAL_UNSAFE.update({c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a))})


def terminal_safe(text: str) -> str:
    r"""``text`` with control characters (C0 / C1 except newline and tab, so every escape
    sequence, and bidirectional overrides) replaced by visible escapes such as ``\x1b``."""
    return text.translate(_TERMINAL_UNSAFE)


# ---------------------------------------------------------------------------- fields
def _text(value: Any, fld: str, *, allow_empty: bool = False) -> str:
    """A string that holds visible text (unless ``allow_empty``): whitespace, zero-width
    spaces, byte-order marks and other format characters alone are empty."""
    if not isinstance(value, str):
        raise _fail(fld, f"expected a string, got {type(value).__name__}")
    _unicode(value, fld)
    if not allow_empty and not has_visible_text(value):
        if not value.strip():
            raise _fail(fld, "is empty")
        raise _fail(fld, f"has no visible text (only invisible characters: {_code_points(value)})")
    return value


def _no_placeholder(text: str, fld: str, what: str) -> str:
    if IMAGE_PLACEHOLDER in text:
        raise _fail(fld, f"contains the image placeholder {IMAGE_PLACEHOLDER}; {what}")
    return text


def normalise_messages(value: Any, fld: str = "prompt", *, last_role: str = "user") -> list[dict[str, Any]]:
    """Chat messages in the stored form: ``content`` is always a list of typed parts.

    Accepts TRL / transformers messages whose ``content`` is a string or a list of
    ``{"type": "text", "text": ...}`` / ``{"type": "image"}`` parts. A prompt ends with the
    user's turn (the responses answer it); an SFT conversation with the assistant's
    (``last_role="assistant"``).
    """
    if not isinstance(value, list) or not value:
        raise _fail(fld, "expected a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        where = f"{fld}[{i}]"
        if not isinstance(msg, Mapping):
            raise _fail(where, f"expected a message dict, got {type(msg).__name__}")
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _fail(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {shorten(role)}")
        content = msg.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                ptype = part.get("type") if isinstance(part, Mapping) else None
                if ptype == "image":
                    parts.append({"type": "image", "text": None})
                elif ptype == "text":
                    parts.append({"type": "text", "text": _text(part.get("text"), f"{where}.content[{j}].text",
                                                                allow_empty=True)})
                else:
                    raise _fail(f"{where}.content[{j}]", "expected a {'type': 'text'|'image'} part")
        else:
            raise _fail(f"{where}.content", "expected a string or a list of parts")
        out.append({"role": role, "content": parts})
    if out[-1]["role"] != last_role:
        raise _fail(fld, f"the last message must be the {last_role}'s turn")
    if not any(p["type"] == "image" or has_visible_text(p["text"] or "") for m in out for p in m["content"]):
        raise _fail(fld, "has no visible text and no image")
    return out


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """The text of the last user turn, for judges and display."""
    if isinstance(prompt, str):
        return prompt
    user = [m for m in prompt if m["role"] == "user"][-1]
    content = user["content"]
    if isinstance(content, str):
        return content
    return " ".join(p.get("text") or "" for p in content if p.get("type") == "text").strip()


def one_prompt_form(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with one prompt form, as a dataset holds: unchanged when all prompts are
    text or all conversational; where both occur, each text prompt becomes one user turn
    with its images where its ``<image>`` placeholders stand (else first), which loses
    nothing (a conversation cannot always become text). A prompt whose placeholders do not
    match its images is a :class:`RecordError` naming the field."""
    if len({isinstance(r["prompt"], list) for r in records}) < 2:
        return [dict(r) for r in records]
    out = []
    for record in records:
        prompt = record["prompt"]
        if isinstance(prompt, str):
            try:
                turn = user_turn(prompt, len(record.get("images") or []))
            except ValueError as exc:
                raise _fail("prompt", str(exc)) from None
            prompt = normalise_messages(turn)
        out.append({**record, "prompt": prompt})
    return out


def _prompt(value: Any) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return _text(value, "prompt")
    return normalise_messages(value, "prompt")


def _response(value: Any, fld: str) -> str:
    """A response as visible text; a conversational response must be one assistant message.
    A response holds no ``<image>`` placeholder (only the prompt places images)."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], Mapping) or value[0].get("role") != "assistant":
            raise _fail(fld, "a conversational response must be exactly one assistant message")
        content = value[0].get("content")
        if isinstance(content, list):
            parts = [p for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
            for j, part in enumerate(parts):
                _text(part.get("text"), f"{fld}[0].content[{j}].text", allow_empty=True)
            content = "".join(p.get("text") or "" for p in parts)
        value = content
    return _no_placeholder(_text(value, fld), fld, "a response cannot hold an image")


def _images(value: Any, options: ImageOptions, fld: str = "images") -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        value = [value]
    out = []
    for i, img in enumerate(value):
        try:
            data = load_image_bytes(img, options)
        except ImageError as exc:
            raise _fail(f"{fld}[{i}]", str(exc)) from None
        out.append({"bytes": data, "path": None})
    return out


def _rejected_images(value: Any, images: list[dict[str, Any]], options: ImageOptions | None) -> list | None:
    """The rejected side's images: one per image of the prompt, and not all equal to them (a pair
    whose two sides see the same pixels is no image contrast)."""
    out = _images(value, options or ImageOptions(), "rejected_images")
    if not out:
        return None
    if len(out) != len(images):
        raise _fail("rejected_images", f"has {len(out)} image(s) but 'images' has {len(images)}; the prompt "
                                       "places one image per slot, so both sides need the same count")
    if [x["bytes"] for x in out] == [x["bytes"] for x in images]:
        raise _fail("rejected_images", "holds the same images as 'images'; leave it empty when both sides "
                                       "see the same images")
    return out


def _spans(value: Any, text: str, fld: str) -> list[list[int]] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise _fail(fld, f"expected a list of [start, end) pairs, got {type(value).__name__}")
    out: list[list[int]] = []
    for i, span in enumerate(value):
        if (
            not isinstance(span, list | tuple)
            or len(span) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
        ):
            raise _fail(fld, f"span {i} is {span!r}, expected [start, end) integers")
        start, end = span
        if not 0 <= start < end <= len(text):
            raise _fail(fld, f"span {i} [{start}, {end}) is empty or out of range for a text of "
                             f"{len(text)} characters")
        if out and start < out[-1][1]:
            raise _fail(fld, f"span {i} [{start}, {end}) overlaps or precedes span {i - 1} "
                             f"[{out[-1][0]}, {out[-1][1]})")
        out.append([start, end])
    return out


def _facts(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise _fail("facts", f"expected a list of strings, got {type(value).__name__}")
    return [_no_placeholder(_text(f, f"facts[{i}]"), f"facts[{i}]", "facts are text")
            for i, f in enumerate(value)]


def _objects(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise _fail("objects", f"expected a list of object names, got {type(value).__name__}")
    return [_text(o, f"objects[{i}]") for i, o in enumerate(value)]


def _side(value: Any, fld: str) -> str | None:
    if value is None or (isinstance(value, str) and value in SIDES):
        return value
    raise _fail(fld, f"expected 'chosen' or 'rejected', got {shorten(value)}")


def _flag(value: Any, fld: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _fail(fld, f"expected true/false, got {shorten(value)}")


def _rating(value: Any, fld: str, bounds: tuple[int, int]) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(fld, f"expected an integer, got {type(value).__name__}")
    lo, hi = bounds
    if not lo <= value <= hi:
        raise _fail(fld, f"{value} is outside {lo}…{hi}")
    return value


def _meta(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _fail("meta", f"not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise _fail("meta", "expected a JSON object")
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail("meta", f"not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise _fail("meta", "nests too deeply") from None
    return _unicode(text, "meta")


def _optional_text(value: Any, fld: str) -> str | None:
    return None if value is None else _text(value, fld, allow_empty=True)


# ---------------------------------------------------------------------------- records
def _check_fields(record: Mapping[str, Any], kind: str, allow_extra: bool) -> None:
    if not isinstance(record, Mapping):
        raise RecordError(f"expected a record dict, got {type(record).__name__}")
    names = column_names(kind)
    for c in columns(kind):
        if c.required and c.name != "images" and c.name not in record:
            raise _fail(c.name, "is missing")
    if not allow_extra:
        extra = sorted(set(record) - set(names))
        if extra:
            raise _fail(extra[0], f"is not a column of the canonical {kind} schema "
                                  "(provenance belongs in 'meta')")


def _check_prompt_images(prompt: Any, images: list) -> None:
    if isinstance(prompt, list):
        n = image_slots(prompt)
        if n != len(images):
            raise _fail("prompt", f"has {n} image part(s) but the row has {len(images)} image(s)")
        for i, msg in enumerate(prompt):
            for j, part in enumerate(msg["content"]):
                _no_placeholder(part["text"] or "", f"prompt[{i}].content[{j}].text",
                                "give each image as a {'type': 'image'} part")
    elif IMAGE_PLACEHOLDER in prompt and prompt.count(IMAGE_PLACEHOLDER) != len(images):
        raise _fail("prompt", f"has {prompt.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholder(s) but the "
                    f"row has {len(images)} image(s); give one placeholder per image, or none (images first)")


def validate_record(
    record: Mapping[str, Any],
    *,
    row: int | None = None,
    record_id: str | None = None,
    images: ImageOptions | None = None,
    allow_extra: bool = False,
) -> dict[str, Any]:
    """Check one preference record and return it in the stored form.

    Stored form: images as ``{"bytes", "path": None}`` dicts (checked per ``images``),
    responses as text, spans as lists, ``meta`` as a JSON string, and every column present
    (``None`` where absent). Raises :class:`RecordError` naming ``row`` and the field.
    ``allow_extra`` tolerates unknown columns (e.g. when loading a TRL dataset).
    """
    try:
        _check_fields(record, PREFERENCE, allow_extra)
        out: dict[str, Any] = {"images": _images(record.get("images"), images or ImageOptions())}
        out["prompt"] = _prompt(record["prompt"])
        _check_prompt_images(out["prompt"], out["images"])
        for side in SIDES:
            out[side] = _response(record[side], side)
        out["rejected_images"] = _rejected_images(record.get("rejected_images"), out["images"], images)
        if out["rejected_images"] and out["chosen"] == out["rejected"]:
            pass  # an image-contrast pair: one answer, two images
        elif out["chosen"] == out["rejected"]:
            raise _fail("rejected", "is identical to 'chosen' (an image-contrast pair needs 'rejected_images')")
        elif meaningful(out["chosen"]) == meaningful(out["rejected"]):
            raise _fail("rejected", "reads the same as 'chosen' (they differ only in whitespace or invisible "
                                    "characters)")
        for side in SIDES:
            out[f"{side}_spans"] = _spans(record.get(f"{side}_spans"), out[side], f"{side}_spans")
        out["facts"] = _facts(record.get("facts"))
        out["more_helpful"] = _side(record.get("more_helpful"), "more_helpful")
        out["safer"] = _side(record.get("safer"), "safer")
        for side in SIDES:
            out[f"{side}_is_safe"] = _flag(record.get(f"{side}_is_safe"), f"{side}_is_safe")
            out[f"{side}_harmless_rate"] = _rating(
                record.get(f"{side}_harmless_rate"), f"{side}_harmless_rate", HARMLESS_RANGE)
            out[f"{side}_helpful_rate"] = _rating(
                record.get(f"{side}_helpful_rate"), f"{side}_helpful_rate", HELPFUL_RANGE)
        out["source"] = _optional_text(record.get("source"), "source")
        out["meta"] = _meta(record.get("meta"))
    except RecordError as err:
        raise err.located(row, record_id) from None
    return {name: out[name] for name in column_names(PREFERENCE)}


def validate_prompt_record(
    record: Mapping[str, Any],
    *,
    row: int | None = None,
    record_id: str | None = None,
    images: ImageOptions | None = None,
    allow_extra: bool = False,
) -> dict[str, Any]:
    """Check one prompt-set record (images, prompt, optional facts and reference); return its stored form."""
    try:
        _check_fields(record, PROMPTS, allow_extra)
        out: dict[str, Any] = {"images": _images(record.get("images"), images or ImageOptions())}
        out["prompt"] = _prompt(record["prompt"])
        _check_prompt_images(out["prompt"], out["images"])
        out["facts"] = _facts(record.get("facts"))
        out["reference"] = _optional_text(record.get("reference"), "reference")
        out["objects"] = _objects(record.get("objects"))
        out["source"] = _optional_text(record.get("source"), "source")
        out["meta"] = _meta(record.get("meta"))
    except RecordError as err:
        raise err.located(row, record_id) from None
    return {name: out[name] for name in column_names(PROMPTS)}


VALIDATORS = {PREFERENCE: validate_record, PROMPTS: validate_prompt_record}


def kind_of(column_names_present: Sequence[str]) -> str:
    """``preference`` when responses are present, else ``prompts``."""
    return PREFERENCE if {"chosen", "rejected"} & set(column_names_present) else PROMPTS
