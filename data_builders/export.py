"""Exporting a preference dataset to the formats other trainers read: TRL, LLaVA, ms-swift.

The canonical form keeps responses as text (corrected spans are character offsets into
them) and allows text prompts whose images go first or at ``<image>`` placeholders. That
is what mmalign's trainers want, but not what other tools take as they are: TRL's
``DPOTrainer`` needs a conversational prompt *and* conversational responses (a text
prompt reaches the processor without image tokens), LLaVA and ms-swift read JSON with
image files beside it. :func:`export_dataset` writes each of those from any dataset
``load_preference_dataset`` accepts (canonical or TRL), every row validated first.

Every export is a folder, written through :func:`mmalign.io.atomic_dir` (built beside the
target, then renamed into place) and marked by ``mmalign_export.json``, so a re-export
replaces it and nothing else is ever replaced without ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.chat import IMAGE_PLACEHOLDER, user_turn
from mmalign.data_builders.images import ImageError, ImageOptions, check_image_bytes
from mmalign.data_builders.schema import SIDES, RecordError, features, validate_record
from mmalign.data_builders.storage import iter_records, open_dataset
from mmalign.io import OutputKind, atomic_dir, scratch_dir

FORMATS = ("trl", "llava", "ms-swift")
EXPORT_MANIFEST = "mmalign_export.json"
#: What an export replaces: an earlier export (of any format), recognised by its manifest.
EXPORT = OutputKind("mmalign export", (EXPORT_MANIFEST,))
#: The data file of the JSON formats, inside the export folder (images go to ``images/``).
DATA_FILES = {"llava": "llava.json", "ms-swift": "train.jsonl"}
CHUNK_ROWS = 1000


@dataclass(frozen=True)
class ExportReport:
    """Where an export went, in which format, and how many rows and image files it holds."""

    path: Path
    format: str
    rows: int
    images: int = 0


def as_messages(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A stored prompt as TRL messages: a text prompt becomes one user turn with an image
    part where each ``<image>`` stood (or all images first, as mmalign's adapters place them)."""
    return user_turn(record["prompt"], len(record["images"]))


def assistant(text: str) -> list[dict[str, Any]]:
    """A response as TRL's conversational completion: one assistant message."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _trl_row(record: dict[str, Any]) -> dict[str, Any]:
    prompt = [{"role": m["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in m["content"]]}
              for m in as_messages(record)]
    return {**record, "prompt": prompt, **{side: assistant(record[side]) for side in SIDES}}


def trl_features():
    """Canonical columns, with the prompt and both responses as TRL messages."""
    from datasets import Features

    conversational = features(conversational=True)
    return Features({**conversational, "chosen": conversational["prompt"], "rejected": conversational["prompt"]})


class _ImageFiles:
    """Images written once each under ``images/``, named by content (pairs often share one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names: dict[str, str] = {}

    def __call__(self, image: Mapping[str, Any], where: str) -> str:
        data = image["bytes"]
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.names:
            try:
                kind = (check_image_bytes(data, ImageOptions(decode=False)).format or "png").lower()
            except ImageError as exc:
                raise RecordError(str(exc), field=where) from None
            name = f"{digest[:32]}.{'jpg' if kind == 'jpeg' else kind}"
            self.folder.mkdir(exist_ok=True)
            (self.folder / name).write_bytes(data)
            self.names[digest] = name
        return self.names[digest]


def _turn_text(message: Mapping[str, Any]) -> str:
    """A message as one text: ``<image>`` where each image part is, each piece on its own line."""
    pieces = [IMAGE_PLACEHOLDER if part["type"] == "image" else (part["text"] or "").strip()
              for part in message["content"]]
    return "\n".join(piece for piece in pieces if piece)


def _llava_row(record: dict[str, Any], row: int, images: list[str]) -> dict[str, Any]:
    """LLaVA-RLHF's preference layout (what ``import llava-rlhf`` reads): the prompt turns as
    ``conversations``, the answers as ``output_1`` (chosen) / ``output_2``, ``preference`` 1."""
    turns = []
    for i, message in enumerate(as_messages(record)):
        if message["role"] == "system":
            raise RecordError("LLaVA conversations have no system turn", field=f"prompt[{i}]")
        turns.append({"from": "human" if message["role"] == "user" else "gpt", "value": _turn_text(message)})
    out: dict[str, Any] = {"id": row}
    if images:
        out["image"] = images[0] if len(images) == 1 else images
    out.update(conversations=turns, output_1={"from": "llava", "value": record["chosen"]},
               output_2={"from": "llava", "value": record["rejected"]}, preference=1)
    return out


def _swift_row(record: dict[str, Any], images: list[str], rejected_images: list[str]) -> dict[str, Any]:
    """ms-swift's DPO layout: ``messages`` ending with the chosen answer, ``rejected_response``,
    ``images`` in the order of the ``<image>`` tags and, for image-contrast pairs, ``rejected_images``."""
    messages = [{"role": m["role"], "content": _turn_text(m)} for m in as_messages(record)]
    out: dict[str, Any] = {"messages": [*messages, {"role": "assistant", "content": record["chosen"]}],
                           "rejected_response": record["rejected"]}
    if images:
        out["images"] = images
    if rejected_images:
        out["rejected_images"] = rejected_images
    return out


def _validated(data: Any) -> Iterator[dict[str, Any]]:
    """Rows in the stored form; a bad row is a :class:`RecordError` naming its row and field."""
    for row, record in enumerate(iter_records(data)):
        yield validate_record(record, row=row, images=ImageOptions(decode=False), allow_extra=True)


def _write_trl(records: Iterable[dict[str, Any]], tmp: Path, scratch: Path) -> int:
    """A ``save_to_disk`` folder, built in chunks so memory holds one chunk of images."""
    from datasets import Dataset, concatenate_datasets, load_from_disk

    shards: list[Path] = []
    buffer: list[dict[str, Any]] = []

    def flush() -> None:
        shard = scratch / f"{len(shards):05d}"
        Dataset.from_list(buffer, features=trl_features()).save_to_disk(str(shard))
        shards.append(shard)
        buffer.clear()

    for record in records:
        buffer.append(_trl_row(record))
        if len(buffer) >= CHUNK_ROWS:
            flush()
    if buffer:
        flush()
    dataset = concatenate_datasets([load_from_disk(str(s)) for s in shards])
    dataset.save_to_disk(str(tmp))
    return len(dataset)


def _write_json(fmt: str, records: Iterable[dict[str, Any]], tmp: Path) -> tuple[int, int]:
    """``llava.json`` (a JSON list) or ``train.jsonl`` (one row a line) and the image files."""
    files = _ImageFiles(tmp / "images")
    rows = 0
    opening, separator, closing = ("[\n", ",\n", "\n]\n") if fmt == "llava" else ("", "\n", "\n")
    with open(tmp / DATA_FILES[fmt], "w", encoding="utf-8") as fh:
        fh.write(opening)
        for row, record in enumerate(records):
            try:
                names = [f"images/{files(img, f'images[{k}]')}" for k, img in enumerate(record["images"])]
                if fmt == "llava":
                    if record.get("rejected_images"):
                        raise RecordError("LLaVA-RLHF's layout has one image set per pair; export image-contrast "
                                          "pairs as trl or ms-swift", field="rejected_images")
                    line = _llava_row(record, row, [n.removeprefix("images/") for n in names])
                else:
                    rejected = [f"images/{files(img, f'rejected_images[{k}]')}"
                                for k, img in enumerate(record.get("rejected_images") or [])]
                    line = _swift_row(record, names, rejected)
            except RecordError as err:
                raise err.located(row) from None
            fh.write((separator if row else "") + json.dumps(line, ensure_ascii=False))
            rows += 1
        fh.write(closing)
    return rows, len(files.names)


def export_dataset(
    path: str | Path,
    out: str | Path,
    fmt: str,
    *,
    split: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write the dataset folder ``path`` to the folder ``out`` in format ``fmt``.

    ``trl``: a ``save_to_disk`` folder with conversational ``prompt`` / ``chosen`` /
    ``rejected`` and ``images`` (the other canonical columns kept), which TRL's
    ``DPOTrainer`` trains on as it is. ``llava``: ``llava.json`` in LLaVA-RLHF's preference
    layout and ``images/`` (``image`` names are relative to it). ``ms-swift``:
    ``train.jsonl`` with ``messages`` / ``rejected_response`` / ``images`` (paths relative
    to ``out``). Every row is validated first; a bad row is a :class:`RecordError` naming
    it and its field, and nothing is written. ``out`` may be missing, empty or an earlier
    export; another folder only with ``overwrite``; never ``path`` itself.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    dataset = open_dataset(path, split)
    out = Path(out)
    images = 0
    with atomic_dir(out, replaces=EXPORT, overwrite=overwrite, inputs=[path]) as tmp:
        try:
            if fmt == "trl":
                with scratch_dir(out, "chunks") as scratch:
                    rows = _write_trl(_validated(dataset), tmp, scratch)
            else:
                rows, images = _write_json(fmt, _validated(dataset), tmp)
        except RecordError as err:
            raise err.located(None, file=str(path)) from None
        manifest = {"format": fmt, "rows": rows, "images": images, "source": os.fspath(path)}
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportReport(path=out, format=fmt, rows=rows, images=images)
