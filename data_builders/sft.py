"""Supervised fine-tuning data: conversations with images, in the TRL ``messages`` format.

Accepted inputs:
- a ``datasets`` folder (``save_to_disk``) or JSON Lines / JSON file whose rows have
  ``messages`` (``[{"role", "content"}]``) and optional ``images`` (a list of paths);
- LLaVA conversation JSON: a list of ``{"id", "image", "conversations": [{"from":
  "human"|"gpt", "value"}]}`` records where ``<image>`` in a human turn marks the image.

Everything is validated on load; errors name the row and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, List, Value

from mmalign.data_builders.schema import IMAGE_PLACEHOLDER, RecordError, normalise_messages
from mmalign.data_builders.storage import is_hub_dataset_id, open_dataset

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

MESSAGE_FEATURE = List(
    {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
)
SFT_FEATURES = Features({"messages": MESSAGE_FEATURE, "images": List(Image())})


class SFTDataError(ValueError):
    """A record that cannot be trained on; the message names the row and the field."""


def llava_to_messages(record: dict[str, Any], row: int) -> dict[str, Any]:
    """One LLaVA conversation record -> ``{"messages", "images"}``."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SFTDataError(f"row {row}: field 'conversations' must be a non-empty list")
    image = record.get("image")
    messages = []
    for t, turn in enumerate(turns):
        role = ROLES.get(turn.get("from", "") if isinstance(turn, dict) else "")
        value = turn.get("value") if isinstance(turn, dict) else None
        if role is None or not isinstance(value, str):
            raise SFTDataError(f"row {row}: conversations[{t}] needs 'from' (human/gpt) and a string 'value'")
        parts = []
        if role == "user" and IMAGE_PLACEHOLDER in value:
            if not image:
                raise SFTDataError(f"row {row}: conversations[{t}] has <image> but the record has no 'image'")
            parts.append({"type": "image", "text": None})
            value = value.replace(IMAGE_PLACEHOLDER, "").strip()
        parts.append({"type": "text", "text": value})
        messages.append({"role": role, "content": parts})
    n_placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
    if image and n_placeholders == 0:
        # LLaVA data sometimes omits the placeholder; the image then opens the first turn.
        messages[0]["content"].insert(0, {"type": "image", "text": None})
    return {"messages": messages, "images": [image] if image else []}


def conversation(messages: Any, row: int) -> list[dict[str, Any]]:
    """A TRL-style conversation checked by the canonical message rules, ending with the
    assistant's turn; string contents become one text part."""
    try:
        return normalise_messages(messages, "messages", last_role="assistant")
    except RecordError as err:
        raise SFTDataError(str(err.located(row))) from None


def _resolve_image(path: str, folder: Path, row: int) -> str:
    root = folder.resolve()
    full = (folder / path).resolve()
    if not full.is_relative_to(root):
        raise SFTDataError(f"row {row}: image path {path!r} escapes the image folder {root}")
    if not full.is_file():
        raise SFTDataError(f"row {row}: image file {full} does not exist")
    return str(full)


def records_to_dataset(records: Iterable[dict[str, Any]], image_folder: str | Path) -> Dataset:
    """Validate records (TRL or LLaVA shaped) and build a dataset with decoded images."""
    folder = Path(image_folder)
    rows = []
    for i, record in enumerate(records):
        if "conversations" in record:
            record = llava_to_messages(record, i)
        messages = conversation(record.get("messages"), i)
        images = record.get("images") or []
        if isinstance(images, str):
            images = [images]
        n_parts = sum(p["type"] == "image" for m in messages for p in m["content"])
        if n_parts != len(images):
            raise SFTDataError(f"row {i}: {n_parts} image parts in 'messages' but {len(images)} 'images'")
        rows.append({"messages": messages, "images": [_resolve_image(p, folder, i) for p in images]})
    if not rows:
        raise SFTDataError("no records found")
    return Dataset.from_list(rows, features=SFT_FEATURES)


def load_sft_dataset(path: str | Path, image_folder: str | Path | None = None) -> Dataset:
    """Load SFT data from a datasets folder, a Hub dataset (``org/name``), a .jsonl file or a
    .json file (TRL or LLaVA)."""
    if is_hub_dataset_id(path) or Path(path).is_dir():
        ds = open_dataset(path)
        if "messages" not in ds.column_names:
            raise SFTDataError(f"{path}: dataset has no 'messages' column (columns: {ds.column_names})")
        for i, messages in enumerate(ds["messages"]):
            conversation(messages, i)
        return ds
    path = Path(path)
    folder = Path(image_folder) if image_folder else path.parent
    text = path.read_text()
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SFTDataError(f"{path}: line {n + 1} is not valid JSON: {err}") from None
    else:
        records = json.loads(text)
        if not isinstance(records, list):
            raise SFTDataError(f"{path}: expected a JSON list of records")
    return records_to_dataset(records, folder)
