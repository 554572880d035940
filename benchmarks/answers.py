"""Answers produced by other tools, read as they come and turned into mmalign answer records.

Why: a model is often evaluated with LLaVA's scripts or lmms-eval already; scoring their
answer files here gives the numbers of the official protocols without generating again.

Formats (``answers_format``):

- ``mmalign``: the records ``mmalign bench`` writes to ``answers.jsonl`` (the benchmark's
  key fields and the answer text), taken as they are;
- ``llava``: LLaVA's answer files: ``model_vqa_loader`` JSON Lines (``question_id``,
  ``prompt``, ``text``, ``answer_id``, ``model_id``, ``metadata``) and caption files
  (``image_id`` or ``question_id``, with ``caption`` or ``text``); every record needs an id
  and a text;
- ``lmms-eval``: ``--log_samples`` records (``doc_id``, ``doc``, ``target``, ``arguments``,
  ``resps``, ``filtered_resps``, the hashes and one field per metric), as JSON Lines
  (``*_samples_<task>.jsonl``) or as the older JSON file holding them under ``"logs"``. The
  answer is ``filtered_resps[0]`` (else ``resps[0][0]``); the ids (``question_id``,
  ``image_id``, ``category``) come from ``doc``, and ``doc["answer"]`` (POPE's label) is kept
  as ``reference_answer`` so the benchmark can check it against its own questions;
- ``auto``: per file, lmms-eval if the first record has ``doc`` and ``resps`` or
  ``filtered_resps``, llava if it has ``answer_id`` and ``model_id``, else mmalign.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmalign.io import read_json, read_records

ANSWER_FORMATS = ("auto", "mmalign", "llava", "lmms-eval")

#: Fields of an lmms-eval ``doc`` that identify the question, copied to the answer record.
_LMMS_EVAL_IDS = ("question_id", "image_id", "category")


def detect_format(record: Mapping[str, Any]) -> str:
    """The format of one answer record (see the module docstring for the rules)."""
    if isinstance(record.get("doc"), Mapping) and ("filtered_resps" in record or "resps" in record):
        return "lmms-eval"
    if "answer_id" in record and "model_id" in record:
        return "llava"
    return "mmalign"


def read_answer_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of an answers file: a JSON list, JSON Lines, or an lmms-eval JSON log
    holding its samples under ``"logs"``."""
    try:
        data = read_json(path)
    except ValueError:  # JSON Lines with more than one line
        data = None
    if isinstance(data, Mapping) and isinstance(data.get("logs"), list):
        records = data["logs"]
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise ValueError(f"{path} logs[{i}]: expected a JSON object, got {type(record).__name__}")
        return records
    return read_records(path)


def normalize_answers(
    records: Sequence[Mapping[str, Any]], answers_format: str = "auto", source: str = "answers"
) -> tuple[str, list[dict[str, Any]]]:
    """``(format, records)``: the format used (resolved from ``"auto"``) and the records in
    mmalign's layout. Errors name the record and the field."""
    if answers_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answers format {answers_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")
    fmt = answers_format
    if fmt == "auto":
        fmt = detect_format(records[0]) if records else "mmalign"
    convert = {"mmalign": _from_mmalign, "llava": _from_llava, "lmms-eval": _from_lmms_eval}[fmt]
    return fmt, [convert(record, f"{source} record {i}") for i, record in enumerate(records)]


def load_answers(source: Any, answers_format: str = "auto") -> tuple[str, list[dict[str, Any]]]:
    """``(format, records)`` from a file, several files (their records joined; each file's
    format detected on its own with ``"auto"``) or records already in memory."""
    if isinstance(source, str | Path):
        return normalize_answers(read_answer_file(source), answers_format, str(source))
    if isinstance(source, Sequence) and source and all(isinstance(s, str | Path) for s in source):
        formats, records = [], []
        for path in source:
            fmt, part = load_answers(path, answers_format)
            formats.append(fmt)
            records += part
        return "+".join(dict.fromkeys(formats)), records
    return normalize_answers([dict(r) for r in source], answers_format)


def _from_mmalign(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    return dict(record)


def _from_llava(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not any(record.get(k) is not None for k in ("question_id", "image_id")):
        raise ValueError(f"{where}: missing field 'question_id' (or 'image_id') of a LLaVA answer")
    if not any(isinstance(record.get(k), str) for k in ("text", "caption")):
        raise ValueError(f"{where}: missing field 'text' (or 'caption') of a LLaVA answer, as a string")
    return dict(record)


def _from_lmms_eval(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    doc = record.get("doc")
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: missing field 'doc' of an lmms-eval log sample")
    out: dict[str, Any] = {"doc_id": record.get("doc_id"), "text": _lmms_eval_text(record, where)}
    for name in _LMMS_EVAL_IDS:
        if isinstance(doc.get(name), int | str):
            out[name] = doc[name]
    if isinstance(doc.get("answer"), str):
        out["reference_answer"] = doc["answer"]
    return out


def _lmms_eval_text(record: Mapping[str, Any], where: str) -> str:
    """``filtered_resps[0]``, else ``resps[0][0]``: the generated text after lmms-eval's filters."""
    for name in ("filtered_resps", "resps"):
        value = record.get(name)
        while isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str):
            return value
        if name in record:
            raise ValueError(f"{where}: field {name!r} must hold the generated text (a string, or a list "
                             f"starting with one), got {record[name]!r}")
    raise ValueError(f"{where}: missing field 'filtered_resps' (or 'resps') of an lmms-eval log sample")
