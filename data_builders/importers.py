"""Importers: public preference datasets in their exact published formats → canonical records.

Each ``read_<format>`` reads local files (nothing is downloaded), maps every row to the
canonical record of :mod:`mmalign.data_builders.schema`, validates it (images included)
and yields it. A bad row raises a :class:`RecordError` naming the row and the field, or
is counted and skipped when the caller passes ``RowErrors(lenient=True)``.
:func:`import_dataset` runs a reader and writes the result atomically.

Formats (see docs/data.md and the design notes in DATASETS.md): ``rlhf-v``, ``rlaif-v``,
``llava-rlhf``, ``beavertails-v``, ``pku-saferlhf``, ``trl`` (preference records) and
``llava-conversations`` (a prompt set for the AI-feedback builder).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.data_builders.corrections import correction_record
from mmalign.data_builders.images import PIL_LIMIT, ImageOptions
from mmalign.data_builders.schema import (
    IMAGE_PLACEHOLDER,
    PREFERENCE,
    PROMPTS,
    SIDES,
    RecordError,
    RowErrors,
    RowRef,
    column_names,
    validate_prompt_record,
    validate_record,
)
from mmalign.data_builders.sources import default_image_root, iter_rows, record_id, require
from mmalign.data_builders.storage import DATASET, WriteReport, open_dataset, write_dataset
from mmalign.io import check_output, parse_json, read_json

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
               "llava": "assistant"}
_MULTIPLE_CHOICE = re.compile(r"(^|\n)\s*\(?[A-D][.)]\s")


# ---------------------------------------------------------------------------- helpers
def strip_image_token(text: str) -> str:
    """LLaVA user text without its ``<image>`` placeholder (adapters place images themselves)."""
    return re.sub(r"\s*<image>\s*", " ", text).strip()


def _json_safe(value: Any) -> Any:
    """Provenance values as JSON: bytes and other odd types become strings, NaN and
    infinities (which JSON cannot hold) ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    return value.hex() if isinstance(value, bytes) else str(value)


def _json_field(raw: Mapping[str, Any], key: str) -> Any:
    """A column that holds a JSON string, parsed; a clear error when it does not parse."""
    value = require(raw, key, (str, dict))
    if isinstance(value, dict):
        return value
    try:
        return parse_json(value)
    except ValueError as exc:
        raise RecordError(f"is not valid JSON ({str(exc).removeprefix('invalid JSON: ')})", field=key) from None


def _choice(raw: Mapping[str, Any], key: str, allowed: Sequence[int]) -> int:
    """A response id such as ``"1"`` / ``2`` / ``0`` as an int among ``allowed``."""
    value = require(raw, key, (str, int))
    try:
        number = int(value)
    except ValueError:
        number = None
    if number not in allowed:
        raise RecordError(f"expected one of {', '.join(map(str, allowed))}, got {value!r}", field=key)
    return number


_TRUE = {"yes", "true", "1", "safe"}
_FALSE = {"no", "false", "0", "unsafe"}


def _yes_no(raw: Mapping[str, Any], key: str) -> bool:
    """Safety flags are published as bools, 0/1 or strings such as "yes"/"no"."""
    value = require(raw, key, (bool, int, str))
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RecordError(f"expected yes/no (or true/false, 1/0), got {value!r}", field=key)


def _int(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RecordError(f"expected an integer, got {type(value).__name__}", field=key)
    try:
        return int(value)
    except ValueError:
        raise RecordError(f"expected an integer, got {value!r}", field=key) from None


def _image_list(raw: Mapping[str, Any], *, required: bool) -> list[Any]:
    if raw.get("images") is not None:
        images = raw["images"]
        return list(images) if isinstance(images, list | tuple) else [images]
    if raw.get("image") is not None:
        return [raw["image"]]
    if required:
        raise RecordError("is missing", field="image")
    return []


def _options(path: str | Path, image_root: str | Path | None, max_pixels: int | None) -> ImageOptions:
    """Relative image paths resolve inside ``image_root`` (default: the data's folder)."""
    root = Path(image_root) if image_root else default_image_root(path)
    return ImageOptions(root=root, max_pixels=max_pixels)


class _PromptForm:
    """One prompt form per dataset (text or conversational, fixed by the first record): a row
    of the other form is refused here, where its file and row are known."""

    def __init__(self) -> None:
        self.conversational: bool | None = None

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        conversational = isinstance(record["prompt"], list)
        if self.conversational is None:
            self.conversational = conversational
        elif conversational != self.conversational:
            raise RecordError("mixes text and conversational prompts; earlier rows use "
                              f"{'conversational' if self.conversational else 'text'} prompts", field="prompt")
        return record


def _validate_rows(
    rows: Iterable[tuple[int, dict[str, Any]]],
    errors: RowErrors,
    convert: Callable[[dict[str, Any]], dict[str, Any]],
    options: ImageOptions,
    id_key: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Convert and validate each (row number, raw row), routing bad rows to ``errors``."""
    same_form = _PromptForm()
    for row, raw in rows:
        rid = None
        try:
            rid = record_id(raw, id_key) if id_key else None
            yield same_form(validate_record(convert(raw), row=row, record_id=rid, images=options))
        except RecordError as err:
            errors(err.located(row, rid))


def _rows(
    path: str | Path,
    errors: RowErrors | None,
    convert: Callable[[dict[str, Any]], dict[str, Any]],
    options: ImageOptions,
    id_key: str | None = None,
    split: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Convert and validate every row of a file, routing bad rows to ``errors``."""
    errors = errors if errors is not None else RowErrors()
    yield from _validate_rows(iter_rows(path, split=split, errors=errors), errors, convert, options, id_key)


# ---------------------------------------------------------------------------- RLHF-V
def read_rlhf_v(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    errors: RowErrors | None = None,
    max_pixels: int | None = PIL_LIMIT,
) -> Iterator[dict[str, Any]]:
    """openbmb/RLHF-V-Dataset parquet: ``text`` holds {question, chosen, rejected} as JSON.

    ``rejected`` is the model's answer and ``chosen`` its human correction, so corrected
    spans come from the RLHF-V diff (:func:`~mmalign.data_builders.corrections.correction_spans`).
    """

    def convert(raw: dict[str, Any]) -> dict[str, Any]:
        text = _json_field(raw, "text")
        if not isinstance(text, dict):
            raise RecordError("must be a JSON object with question, chosen, rejected", field="text")
        for key in ("question", "chosen", "rejected"):
            if not isinstance(text.get(key), str):
                raise RecordError(f"JSON has no string {key!r}", field="text")
        origin_split = raw.get("origin_split")
        if isinstance(origin_split, str):
            try:
                origin_split = parse_json(origin_split)
            except ValueError:
                pass  # kept as the plain string it is
        meta = {k: raw.get(k) for k in ("ds_name", "origin_dataset", "idx", "image_path") if raw.get(k) is not None}
        if origin_split is not None:
            meta["origin_split"] = origin_split
        return correction_record(
            text["rejected"], text["chosen"],
            prompt=strip_image_token(text["question"]),
            images=_image_list(raw, required=True),
            source="rlhf-v", meta=_json_safe(meta),
        )

    return _rows(path, errors, convert, _options(path, image_root, max_pixels), id_key="idx")


# ---------------------------------------------------------------------------- RLAIF-V
RLAIF_V_CORE = ("question", "chosen", "rejected", "image", "images")


def read_rlaif_v(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    errors: RowErrors | None = None,
    max_pixels: int | None = PIL_LIMIT,
) -> Iterator[dict[str, Any]]:
    """openbmb/RLAIF-V-Dataset parquet: flat question / chosen / rejected / image; plain pairs.

    Provenance columns (source dataset, generating models, ids) are kept in ``meta``.
    """

    def convert(raw: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in raw.items() if k not in RLAIF_V_CORE and v is not None}
        return {
            "images": _image_list(raw, required=True),
            "prompt": strip_image_token(require(raw, "question")),
            "chosen": require(raw, "chosen"),
            "rejected": require(raw, "rejected"),
            "source": "rlaif-v",
            "meta": _json_safe(meta) or None,
        }

    return _rows(path, errors, convert, _options(path, image_root, max_pixels), id_key="idx")


# ---------------------------------------------------------------------------- LLaVA
def llava_messages(turns: Any, n_images: int, fld: str = "conversations") -> list[dict[str, Any]]:
    """LLaVA ``{"from", "value"}`` turns → chat messages, ``<image>`` → an image part.

    Images without a placeholder go at the start of the first user turn.
    """
    if not isinstance(turns, list) or not turns:
        raise RecordError("expected a non-empty list of {from, value} turns", field=fld)
    messages: list[dict[str, Any]] = []
    placed = 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise RecordError(f"turn {i} is not a {{from, value}} object with text", field=fld)
        role = LLAVA_ROLES.get(str(turn.get("from")).lower())
        if role is None:
            raise RecordError(f"turn {i} has unknown speaker {turn.get('from')!r}", field=fld)
        parts: list[dict[str, Any]] = []
        for j, piece in enumerate(turn["value"].split(IMAGE_PLACEHOLDER)):
            if j > 0:
                parts.append({"type": "image", "text": None})
                placed += 1
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        messages.append({"role": role, "content": parts})
    if placed > n_images:
        raise RecordError(f"has {placed} {IMAGE_PLACEHOLDER} placeholders but the row has {n_images} image(s)",
                          field=fld)
    first_user = next((m for m in messages if m["role"] == "user"), None)
    if first_user is None:
        raise RecordError("has no human turn", field=fld)
    first_user["content"][:0] = [{"type": "image", "text": None}] * (n_images - placed)
    return messages


def _simple_prompt(messages: list[dict[str, Any]]) -> str | None:
    """The text of a single user turn, else ``None``.

    With one image, where ``<image>`` stood (LLaVA data places it before or after the
    question at random) is not kept: text prompts put a lone image first. With several,
    the placeholders stay in order between the texts that refer to them.
    """
    if len(messages) != 1:
        return None
    parts = messages[0]["content"]
    if sum(p["type"] == "image" for p in parts) > 1:
        return " ".join(IMAGE_PLACEHOLDER if p["type"] == "image" else p["text"] for p in parts)
    return " ".join(p["text"] for p in parts if p["type"] == "text")


def _llava_images(raw: Mapping[str, Any]) -> list[str]:
    """LLaVA's ``image``: one file name, or a list of them (multi-image data) in placeholder order."""
    image = raw.get("image")
    names = image if isinstance(image, list) else [image] if image else []
    if not all(isinstance(n, str) and n for n in names):
        raise RecordError("expected a file name or a list of file names", field="image")
    return names


def _response_text(raw: Mapping[str, Any], key: str) -> str:
    value = require(raw, key, (dict, str))
    if isinstance(value, dict):
        if not isinstance(value.get("value"), str):
            raise RecordError("expected a {from, value} object with text", field=key)
        return value["value"]
    return value


def load_caption_map(path: str | Path) -> dict[str, list[str]]:
    """LLaVA-RLHF's image → captions JSON map (facts for the Fact-RLHF reward model)."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
    ):
        raise ValueError(f"{path}: expected a JSON object mapping image file names to lists of strings")
    return data


def facts_for(captions: Mapping[str, list[str]], image: str, question: str) -> list[str] | None:
    """Facts of an image: multiple-choice questions (options A-D) use the ``aok_`` entry."""
    mc_key = "aok_" + image
    if mc_key in captions and (_MULTIPLE_CHOICE.search(question) or image not in captions):
        return list(captions[mc_key])
    return list(captions[image]) if image in captions else None


def read_llava_rlhf(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    facts: str | Path | Mapping[str, list[str]] | None = None,
    errors: RowErrors | None = None,
    max_pixels: int | None = PIL_LIMIT,
) -> Iterator[dict[str, Any]]:
    """LLaVA-RLHF human preferences (``llava_7b_v1_preference.json``).

    ``image`` is a COCO file name under ``image_root``; ``output_{preference}`` becomes
    ``chosen``. ``facts`` is the caption map (a path or a dict). Prompts are text when
    every conversation is a single human turn, else conversational for all rows.
    """
    captions = load_caption_map(facts) if isinstance(facts, str | Path) else (facts or {})
    errors = errors if errors is not None else RowErrors()
    rows = list(iter_rows(path, errors=errors))
    multi_turn = any(isinstance(r.get("conversations"), list) and len(r["conversations"]) > 1 for _, r in rows)

    def convert(raw: dict[str, Any]) -> dict[str, Any]:
        images = _llava_images(raw)
        image = images[0] if len(images) == 1 else None  # captions describe one image
        messages = llava_messages(require(raw, "conversations", list), len(images))
        if messages[-1]["role"] != "user":
            raise RecordError("must end with the human turn that output_1 / output_2 answer",
                              field="conversations")
        preference = _choice(raw, "preference", (1, 2))
        outputs = {n: _response_text(raw, f"output_{n}") for n in (1, 2)}
        simple = None if multi_turn else _simple_prompt(messages)
        question = raw["conversations"][-1]["value"]
        return {
            "images": images,
            "prompt": simple if simple is not None else messages,
            "chosen": outputs[preference],
            "rejected": outputs[3 - preference],
            "facts": facts_for(captions, image, question) if image and captions else None,
            "source": "llava-rlhf",
            "meta": {"id": raw["id"]} if raw.get("id") is not None else None,
        }

    yield from _validate_rows(rows, errors, convert, _options(path, image_root, max_pixels), id_key="id")


def read_llava_conversations(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    turns: str = "first",
    errors: RowErrors | None = None,
    max_pixels: int | None = PIL_LIMIT,
) -> Iterator[dict[str, Any]]:
    """LLaVA conversation JSON (``id``, ``image``, ``conversations``) → a prompt set.

    ``turns="first"``: one text prompt per conversation (its first human turn), the gpt
    answer as ``reference``. ``turns="all"``: one conversational prompt per gpt turn,
    holding the conversation up to that turn.
    """
    if turns not in ("first", "all"):
        raise ValueError("turns must be 'first' or 'all'")
    errors = errors if errors is not None else RowErrors()
    options = _options(path, image_root, max_pixels)
    same_form = _PromptForm()
    for row, raw in iter_rows(path, errors=errors):
        rid = None
        try:
            rid = record_id(raw, "id")
            images = _llava_images(raw)
            messages = llava_messages(require(raw, "conversations", list), len(images))
            answers = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0
                       and messages[i - 1]["role"] == "user"]
            if not answers:
                raise RecordError("has no human turn followed by a gpt answer", field="conversations")
            meta = {"id": raw["id"]} if rid else None
            chosen_turns = answers[:1] if turns == "first" else answers
            for k, i in enumerate(chosen_turns):
                reference = " ".join(p["text"] for p in messages[i]["content"] if p["type"] == "text")
                prompt: Any = messages[:i]
                if turns == "first":
                    prompt = _simple_prompt(messages[:i]) or messages[:i]
                record = {"images": images, "prompt": prompt, "reference": reference,
                          "source": "llava-conversations", "meta": {**(meta or {}), "turn": k}}
                yield same_form(validate_prompt_record(record, row=row, record_id=rid, images=options))
        except RecordError as err:
            errors(err.located(row, rid))


# ---------------------------------------------------------------------------- safety
def read_beavertails_v(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    prefer: str = "helpful",
    split: str | None = None,
    errors: RowErrors | None = None,
    max_pixels: int | None = PIL_LIMIT,
) -> Iterator[dict[str, Any]]:
    """BeaverTails-V dual-preference rows (Safe RLHF-V): responses 1 and 2 with both labels.

    ``prefer`` picks which preference orders ``chosen`` / ``rejected`` (``"helpful"`` or
    ``"safer"``); the other stays available through ``more_helpful`` / ``safer``. A folder
    of per-category parquet shards is read whole, or only ``split`` (``train`` /
    ``evaluation``).
    """
    if prefer not in ("helpful", "safer"):
        raise ValueError("prefer must be 'helpful' or 'safer'")

    def convert(raw: dict[str, Any]) -> dict[str, Any]:
        helpful = _choice(raw, "more_helpful_response_id", (1, 2))
        safer = _choice(raw, "safer_response_id", (1, 2))
        first = helpful if prefer == "helpful" else safer
        side = {first: "chosen", 3 - first: "rejected"}
        record: dict[str, Any] = {
            "images": _image_list(raw, required=True),
            "prompt": strip_image_token(require(raw, "question")),
            "more_helpful": side[helpful],
            "safer": side[safer],
            "source": "beavertails-v",
        }
        meta: dict[str, Any] = {k: raw[k] for k in ("category", "image_severity") if raw.get(k) is not None}
        for n in (1, 2):
            s = side[n]
            record[s] = require(raw, f"response_{n}")
            record[f"{s}_is_safe"] = _yes_no(raw, f"is_response_{n}_safe")
            record[f"{s}_harmless_rate"] = _int(raw, f"response_{n}_harmless_rate")
            record[f"{s}_helpful_rate"] = _int(raw, f"response_{n}_helpful_rate")
            if raw.get(f"response_{n}_from") is not None:
                meta[f"{s}_from"] = raw[f"response_{n}_from"]
        record["meta"] = _json_safe(meta) or None
        return record

    return _rows(path, errors, convert, _options(path, image_root, max_pixels), split=split)


PKU_CORE = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
            "is_response_0_safe", "is_response_1_safe", "image", "images")


def read_pku_saferlhf(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    prefer: str = "helpful",
    split: str | None = None,
    errors: RowErrors | None = None,
    max_pixels: int | None = PIL_LIMIT,
) -> Iterator[dict[str, Any]]:
    """PKU-SafeRLHF-style pairs (responses 0 and 1, 0/1 ids); ``image`` / ``images`` optional.

    There are no graded ratings in this format; harm categories and severities are kept
    in ``meta``.
    """
    if prefer not in ("helpful", "safer"):
        raise ValueError("prefer must be 'helpful' or 'safer'")

    def convert(raw: dict[str, Any]) -> dict[str, Any]:
        helpful = _choice(raw, "better_response_id", (0, 1))
        safer = _choice(raw, "safer_response_id", (0, 1))
        first = helpful if prefer == "helpful" else safer
        side = {first: "chosen", 1 - first: "rejected"}
        record: dict[str, Any] = {
            "images": _image_list(raw, required=False),
            "prompt": require(raw, "prompt"),
            "more_helpful": side[helpful],
            "safer": side[safer],
            "source": "pku-saferlhf",
        }
        for n in (0, 1):
            record[side[n]] = require(raw, f"response_{n}")
            record[f"{side[n]}_is_safe"] = _yes_no(raw, f"is_response_{n}_safe")
        meta = {}
        for k, v in raw.items():
            if k in PKU_CORE or v is None:
                continue
            match = re.match(r"response_([01])_(.+)$", k)
            meta[f"{side[int(match.group(1))]}_{match.group(2)}" if match else k] = v
        record["meta"] = _json_safe(meta) or None
        return record

    return _rows(path, errors, convert, _options(path, image_root, max_pixels), split=split)


# ---------------------------------------------------------------------------- TRL
def _trl_rows(path: Path, split: str | None, errors: RowErrors) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        loaded = open_dataset(path, split)
        row = 0
        for table in loaded.with_format("arrow").iter(batch_size=256):
            for raw in table.to_pylist():
                yield RowRef(row, str(path)), raw
                row += 1
    else:
        yield from iter_rows(path, split=split, errors=errors)


def _meta_object(value: Any) -> dict[str, Any]:
    """A row's ``meta`` (a JSON object or its text) as a dict, to merge other columns into."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except ValueError as exc:
            raise RecordError(str(exc), field="meta") from None
    if not isinstance(value, dict):
        raise RecordError(f"expected a JSON object, got {type(value).__name__}", field="meta")
    return value


def read_trl(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    split: str | None = None,
    errors: RowErrors | None = None,
    max_pixels: int | None = PIL_LIMIT,
) -> Iterator[dict[str, Any]]:
    """A TRL preference dataset: a ``save_to_disk`` folder or JSON(L) / parquet files.

    Columns ``prompt`` / ``chosen`` / ``rejected`` (text or conversational) and ``images``
    (or a single ``image``; optional). Canonical optional columns are kept; other columns
    go to ``meta``.
    """
    path = Path(path)
    errors = errors if errors is not None else RowErrors()
    options = _options(path, image_root, max_pixels)
    canonical = set(column_names(PREFERENCE))
    same_form = _PromptForm()
    for row, raw in _trl_rows(path, split, errors):
        try:
            record = {k: v for k, v in raw.items() if k in canonical and k != "images"}
            record["images"] = _image_list(raw, required=False)
            extra = {k: v for k, v in raw.items() if k not in canonical and k != "image" and v is not None}
            meta = record.get("meta")
            if extra:
                meta = {**_meta_object(meta), **_json_safe(extra)}
            record["meta"] = meta
            record["source"] = raw.get("source") or "trl"
            for key in ("prompt", *SIDES):
                require(raw, key, (str, list))
            yield same_form(validate_record(record, row=row, images=options))
        except RecordError as err:
            errors(err.located(row))


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Importer:
    """One public format: its reader, what it produces and a one-line description."""

    name: str
    reader: Callable[..., Iterator[dict[str, Any]]]
    kind: str
    description: str


IMPORTERS: dict[str, Importer] = {
    imp.name: imp
    for imp in (
        Importer("rlhf-v", read_rlhf_v, PREFERENCE, "openbmb/RLHF-V-Dataset parquet (corrections → spans)"),
        Importer("rlaif-v", read_rlaif_v, PREFERENCE, "openbmb/RLAIF-V-Dataset parquet (plain pairs)"),
        Importer("llava-rlhf", read_llava_rlhf, PREFERENCE,
                 "LLaVA-RLHF human preference JSON (+ caption map as facts)"),
        Importer("beavertails-v", read_beavertails_v, PREFERENCE,
                 "BeaverTails-V dual preferences (Safe RLHF-V)"),
        Importer("pku-saferlhf", read_pku_saferlhf, PREFERENCE,
                 "PKU-SafeRLHF-style safety pairs, images optional"),
        Importer("trl", read_trl, PREFERENCE, "TRL preference dataset (folder, JSON(L) or parquet)"),
        Importer("llava-conversations", read_llava_conversations, PROMPTS,
                 "LLaVA conversation JSON → prompt set for AI feedback"),
    )
}


def _some(records: Iterable[dict[str, Any]], path: str | Path, errors: RowErrors) -> Iterator[dict[str, Any]]:
    """``records``, or a ``ValueError`` naming the input when it holds none."""
    empty = True
    for record in records:
        empty = False
        yield record
    if empty:
        raise ValueError(f"{path}: no records to import" + (f" ({errors.summary()})" if errors.count else ""))


def import_dataset(
    fmt: str,
    path: str | Path,
    out: str | Path,
    *,
    lenient: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> WriteReport:
    """Read ``path`` in public format ``fmt`` and write a canonical dataset to ``out``.

    ``options`` go to the reader (``image_root``, ``facts``, ``prefer``, ``split``,
    ``turns``, ``max_pixels``). Strict unless ``lenient``; nothing is written on error.
    ``out`` is never one of the inputs; a folder that is not a dataset is replaced only
    with ``overwrite`` (see :func:`~mmalign.data_builders.storage.write_dataset`).
    """
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(IMPORTERS)}")
    importer = IMPORTERS[fmt]
    inputs = (path, options.get("image_root"), options.get("facts"))
    check_output(out, replaces=DATASET, overwrite=overwrite, inputs=inputs)  # before reading anything
    errors = RowErrors(lenient=lenient)
    records = _some(importer.reader(path, errors=errors, **options), path, errors)
    return write_dataset(records, out, kind=importer.kind, errors=errors, overwrite=overwrite, inputs=inputs)
