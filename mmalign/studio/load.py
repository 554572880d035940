"""Filling a project with items: model answers to a prompt set, or a preference dataset.

Answers are generated through the adapter API (any supported model, optionally with a
LoRA adapter), in batches, so a team annotates exactly what its model says.

Loading is safe to repeat: a prompt (same text and images) that the same model already
answered in the project is not generated again, and an item identical to one in the
project is not added again (:meth:`StudioProject.add_items`); the report counts both.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.benchmarks.runner import GenerationConfig
from mmalign.studio.project import StudioProject, image_bytes

PREFERENCE_MODES = ("corrections", "pairs", "both")
RECORD_FILES = (".json", ".jsonl")


@dataclass(frozen=True)
class LoadReport:
    """Items added, and rows skipped because the project already holds their item."""

    added: int
    skipped: int = 0


def open_items_source(path: str | Path, split: str | None = None, *, kind: str = "prompts") -> Any:
    """Rows to load: a saved dataset folder (``open_dataset``), or a ``.json`` / ``.jsonl`` file
    of records (``mmalign.io.read_records``) checked one by one against the canonical schema
    (``kind`` = ``prompts`` or ``preference``), image paths relative to the file's folder.

    A file is read and checked whole before anything is added: a bad record raises
    ``RecordError`` naming the file and its row, and nothing is loaded.
    """
    from mmalign.data_builders.images import ImageOptions
    from mmalign.data_builders.schema import VALIDATORS, RowRef
    from mmalign.data_builders.storage import open_dataset
    from mmalign.io import read_records

    path = Path(path)
    if path.is_file() and path.suffix in RECORD_FILES:
        if split is not None:
            raise ValueError(f"{path}: --split / split= chooses a split of a dataset folder, not of a "
                             f"{path.suffix} file")
        options = ImageOptions(root=path.parent)
        return [VALIDATORS[kind](record, row=RowRef(i, str(path)), images=options)
                for i, record in enumerate(read_records(path))]
    if path.is_file():
        raise ValueError(f"{path}: expected a dataset folder or a {' / '.join(RECORD_FILES)} file of records")
    return open_dataset(path, split)


def _rows(dataset: Any, limit: int | None) -> Iterator[dict[str, Any]]:
    from mmalign.data_builders.storage import iter_records

    for i, row in enumerate(iter_records(dataset)):
        if limit is not None and i >= limit:
            return
        yield row


def _meta(row: dict[str, Any], index: int) -> dict[str, Any]:
    import json

    meta = row.get("meta")  # a JSON string in stored datasets, a dict in records built in memory
    if isinstance(meta, str):
        meta = json.loads(meta)
    return {"row": index, **({"source_meta": meta} if meta else {})}


def _prompt_key(prompt: Any, image_hashes: list[str], model_name: str | None) -> str:
    """What makes two generation requests the same: prompt, image contents, model."""
    return hashlib.sha256(json.dumps([prompt, image_hashes, model_name], sort_keys=True).encode()).hexdigest()


def _answered(project: StudioProject) -> set[str]:
    """Keys of the prompts each model has answered in the project (images are stored under their SHA-256)."""
    return {_prompt_key(item.prompt, [Path(rel).stem for rel in item.images], item.meta.get("model"))
            for item in project.items() if item.kind == "correction"}


def load_prompt_set(project: StudioProject, dataset: Any, adapter: Any,
                    generation: GenerationConfig | None = None, *, limit: int | None = None,
                    model_name: str | None = None, progress: bool = True) -> LoadReport:
    """Generate the adapter's answer to every prompt of a prompt set; each becomes a correction item.

    ``dataset`` is a prompt set (``images``, ``prompt``; see ``data_builders.schema``), e.g.
    from :func:`open_items_source`. ``model_name`` is kept in each item's provenance; a
    prompt (same text and images) this model already answered in the project is skipped
    before generation, so a rerun (after a crash, or of the same command) adds only what is
    missing. Items are added batch by batch.
    """
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    generation = generation or GenerationConfig()  # checks batch_size and max_new_tokens
    _check_limit(limit)
    rows = list(_rows(dataset, limit))
    if rows and "prompt" not in rows[0]:
        raise ValueError("the dataset has no 'prompt' column (expected a prompt set)")
    answered = _answered(project)
    added = skipped = 0
    bar = tqdm(total=len(rows), desc="generating answers", unit="prompt", disable=not progress)
    for index, lo in enumerate(range(0, len(rows), generation.batch_size)):
        batch, encoded = [], []
        for offset, row in enumerate(rows[lo:lo + generation.batch_size]):
            row_images = image_bytes(row.get("images"))
            key = _prompt_key(row["prompt"], [hashlib.sha256(data).hexdigest() for data in row_images], model_name)
            if key in answered:
                skipped += 1
                continue
            answered.add(key)
            batch.append((lo + offset, row))
            encoded.append(row_images)
        if batch:
            images = [[Image.open(io.BytesIO(b)).convert("RGB") for b in row_images] for row_images in encoded]
            if generation.do_sample:
                torch.manual_seed(generation.seed + index)
            answers = adapter.generate(images, [r["prompt"] for _, r in batch],
                                       max_new_tokens=generation.max_new_tokens, do_sample=generation.do_sample,
                                       temperature=generation.temperature, top_p=generation.top_p)
            items = []
            for (number, row), row_images, answer in zip(batch, encoded, answers):
                if not answer.strip():
                    continue  # nothing to correct
                items.append({"kind": "correction", "images": row_images, "prompt": row["prompt"],
                              "answer": answer.strip(), "source": row.get("source"),
                              "meta": {**_meta(row, number), "model": model_name}})
            new = project.add_items(items)
            added += new
            skipped += len(items) - new
        bar.update(min(generation.batch_size, len(rows) - lo))
    bar.close()
    return LoadReport(added, skipped)


def load_preference_items(project: StudioProject, dataset: Any, *, mode: str = "corrections",
                          limit: int | None = None, by_disagreement: Sequence[str | Path] = (),
                          top: int | None = None, base: str | Path | None = None,
                          batch_size: int = 8) -> LoadReport:
    """Items from a canonical preference dataset, added in one transaction.

    ``corrections``: the ``rejected`` answer becomes a correction item; ``pairs``: chosen
    (answer A) vs rejected (answer B) becomes a pair item for dual labels; ``both``: both.
    Items already in the project are skipped (and counted in the report). With
    ``by_disagreement`` (reward models or ensembles) only the ``top`` rows whose margin they
    disagree on most are added, each with that disagreement as its priority (active
    labelling: annotators label where the reward model is unsure).
    """
    from mmalign.studio.active import most_disputed

    if mode not in PREFERENCE_MODES:
        raise ValueError(f"mode must be one of {PREFERENCE_MODES}, got {mode!r}")
    _check_limit(limit)
    if bool(by_disagreement) != (top is not None):
        raise ValueError("by_disagreement (reward models) and top (how many rows) go together")
    candidates = list(_rows(dataset, limit))
    priorities = None
    if by_disagreement:
        priorities = most_disputed(candidates, by_disagreement, top, base=base, batch_size=batch_size)
    items = []
    for index, row in enumerate(candidates):
        if priorities is not None and index not in priorities:
            continue
        for fld in ("prompt", "rejected") + (("chosen",) if mode != "corrections" else ()):
            if not row.get(fld):
                raise ValueError(f"row {index}: field {fld!r} is missing or empty")
        common = {"images": image_bytes(row.get("images")), "prompt": row["prompt"],
                  "source": row.get("source"), "meta": _meta(row, index),
                  "priority": priorities[index] if priorities is not None else 0.0}
        if mode in ("corrections", "both"):
            items.append({**common, "kind": "correction", "answer": row["rejected"]})
        if mode in ("pairs", "both"):
            items.append({**common, "kind": "pair", "answer": row["chosen"], "answer_b": row["rejected"]})
    added = project.add_items(items)
    return LoadReport(added, len(items) - added)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a whole number ≥ 0, got {limit!r}")
