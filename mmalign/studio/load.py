"""Filling a project with items: model answers to a prompt set, or a preference dataset.

Answers are generated through the adapter API (any supported model, optionally with a
LoRA adapter), in batches, so a team annotates exactly what its model says.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from mmalign.benchmarks.runner import GenerationConfig
from mmalign.studio.project import StudioProject, image_bytes

PREFERENCE_MODES = ("corrections", "pairs", "both")


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


def load_prompt_set(project: StudioProject, dataset: Any, adapter: Any,
                    generation: GenerationConfig | None = None, *, limit: int | None = None,
                    model_name: str | None = None, progress: bool = True) -> int:
    """Generate the adapter's answer to every prompt of a prompt set; each becomes a correction item.

    ``dataset`` is a prompt set (``images``, ``prompt``; see ``data_builders.schema``), e.g.
    from ``open_dataset``. ``model_name`` is kept in each item's provenance. Returns the
    number of items added.
    """
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    generation = generation or GenerationConfig()  # checks batch_size and max_new_tokens
    rows = list(_rows(dataset, limit))
    if rows and "prompt" not in rows[0]:
        raise ValueError("the dataset has no 'prompt' column (expected a prompt set)")
    added = 0
    bar = tqdm(total=len(rows), desc="generating answers", unit="prompt", disable=not progress)
    for index, lo in enumerate(range(0, len(rows), generation.batch_size)):
        batch = rows[lo:lo + generation.batch_size]
        encoded = [image_bytes(r.get("images")) for r in batch]
        images = [[Image.open(io.BytesIO(b)).convert("RGB") for b in row_images] for row_images in encoded]
        if generation.do_sample:
            torch.manual_seed(generation.seed + index)
        answers = adapter.generate(images, [r["prompt"] for r in batch], max_new_tokens=generation.max_new_tokens,
                                   do_sample=generation.do_sample, temperature=generation.temperature,
                                   top_p=generation.top_p)
        items = []
        for offset, (row, row_images, answer) in enumerate(zip(batch, encoded, answers)):
            if not answer.strip():
                continue  # nothing to correct
            items.append({"kind": "correction", "images": row_images, "prompt": row["prompt"],
                          "answer": answer.strip(), "source": row.get("source"),
                          "meta": {**_meta(row, lo + offset), "model": model_name}})
        added += project.add_items(items)
        bar.update(len(batch))
    bar.close()
    return added


def load_preference_items(project: StudioProject, dataset: Any, *, mode: str = "corrections",
                          limit: int | None = None) -> int:
    """Items from a canonical preference dataset.

    ``corrections``: the ``rejected`` answer becomes a correction item; ``pairs``: chosen
    (answer A) vs rejected (answer B) becomes a pair item for dual labels; ``both``: both.
    """
    if mode not in PREFERENCE_MODES:
        raise ValueError(f"mode must be one of {PREFERENCE_MODES}, got {mode!r}")
    items = []
    for index, row in enumerate(_rows(dataset, limit)):
        for fld in ("prompt", "rejected") + (("chosen",) if mode != "corrections" else ()):
            if not row.get(fld):
                raise ValueError(f"row {index}: field {fld!r} is missing or empty")
        common = {"images": image_bytes(row.get("images")), "prompt": row["prompt"],
                  "source": row.get("source"), "meta": _meta(row, index)}
        if mode in ("corrections", "both"):
            items.append({**common, "kind": "correction", "answer": row["rejected"]})
        if mode in ("pairs", "both"):
            items.append({**common, "kind": "pair", "answer": row["chosen"], "answer_b": row["rejected"]})
    return project.add_items(items)

