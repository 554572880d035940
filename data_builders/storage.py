"""Saving and loading canonical datasets: validated, atomic, Hugging Face ``datasets`` folders.

A canonical dataset is a ``save_to_disk`` folder (so ``datasets.load_from_disk`` and TRL
read it directly) plus a small ``mmalign_dataset.json`` manifest (kind, schema version,
row and skip counts, sources). Writing goes through :func:`mmalign.io.atomic_dir`: a crash
or a bad row in strict mode leaves no folder, or the previous one, never half a dataset.
An existing output folder is replaced only if it is a canonical dataset (or empty), unless
``overwrite=True``; a file, or one of the writer's ``inputs``, is never replaced.
Records are written in chunks so memory stays bounded by one chunk of images.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.data_builders.images import PIL_LIMIT, ImageOptions
from mmalign.data_builders.schema import (
    PREFERENCE,
    PROMPTS,
    SCHEMA_VERSION,
    VALIDATORS,
    RecordError,
    RowErrors,
    column_names,
    features,
    kind_of,
    log,
)
from mmalign.io import OutputKind, atomic_dir, scratch_dir

MANIFEST = "mmalign_dataset.json"
#: What dataset writers replace: a canonical dataset folder (recognised by its manifest).
DATASET = OutputKind("canonical dataset", (MANIFEST,))
CHUNK_ROWS = 1000


@dataclass
class WriteReport:
    """What a save wrote: rows kept, rows skipped (lenient mode), records per source."""

    path: Path
    kind: str
    rows: int
    skipped: list[RecordError] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)


@dataclass
class ValidationReport:
    """Result of checking every row of a dataset: indices kept and the errors found."""

    rows: int
    kept: list[int]
    errors: list[RecordError]
    kind: str = PREFERENCE

    @property
    def ok(self) -> bool:
        return not self.errors


def iter_records(data: Any) -> Iterator[dict[str, Any]]:
    """Rows of a ``datasets.Dataset`` (images left encoded) or of any iterable of dicts."""
    from datasets import Dataset

    if isinstance(data, Dataset):
        # Arrow batches keep images as {bytes, path} and never write cache files, unlike
        # cast_column / map on a dataset loaded from disk.
        for table in data.with_format("arrow").iter(batch_size=256):
            yield from table.to_pylist()
    else:
        yield from data


def write_dataset(
    records: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    kind: str = PREFERENCE,
    errors: RowErrors | None = None,
    chunk_rows: int = CHUNK_ROWS,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> WriteReport:
    """Write records that are already in the stored form (see :func:`validate_record`).

    Builders and importers validate as they go and call this; user code should call
    :func:`save_preference_dataset`, which validates first. The prompt form (text or
    conversational) is fixed by the first record. ``path`` may be missing, empty or a
    canonical dataset (replaced); any other folder only with ``overwrite``; never a file
    or one of ``inputs`` (:class:`mmalign.io.OutputError`, raised before any record is read).
    """
    from datasets import Dataset, concatenate_datasets, load_from_disk

    errors = errors if errors is not None else RowErrors()
    path = Path(path)
    names = column_names(kind)
    sources: Counter[str] = Counter()
    conversational: bool | None = None
    with (atomic_dir(path, replaces=DATASET, overwrite=overwrite, inputs=inputs) as tmp,
          scratch_dir(path, "chunks") as chunk_root):
        shards: list[Path] = []
        buffer: list[dict[str, Any]] = []

        def chunk() -> Dataset:
            return Dataset.from_list(buffer, features=features(kind, bool(conversational)))

        def flush() -> None:
            shard = Path(chunk_root) / f"{len(shards):05d}"
            chunk().save_to_disk(str(shard))
            shards.append(shard)
            buffer.clear()

        for row, record in enumerate(records):
            is_conv = isinstance(record["prompt"], list)
            if conversational is None:
                conversational = is_conv
            elif is_conv != conversational:
                errors(RecordError("mixes text and conversational prompts; earlier rows use "
                                   f"{'conversational' if conversational else 'text'} prompts",
                                   field="prompt", row=row))
                continue
            if len(buffer) >= chunk_rows:
                flush()
            buffer.append({name: record.get(name) for name in names})
            sources[record.get("source") or "unknown"] += 1
        if not shards and not buffer:
            detail = f" ({errors.summary()})" if errors.count else ""
            raise ValueError(f"no valid records to write to {path}{detail}")
        if shards:
            # Bounded memory: earlier chunks are memory-mapped from the chunk folder.
            flush()
            dataset = concatenate_datasets([load_from_disk(str(s)) for s in shards])
        else:
            dataset = chunk()
        dataset.save_to_disk(str(tmp))
        rows = len(dataset)
        del dataset
        manifest = {
            "kind": kind,
            "schema_version": SCHEMA_VERSION,
            "rows": rows,
            "skipped": errors.count,
            "conversational": bool(conversational),
            "sources": dict(sources),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if errors.count:
        log.warning("%s: wrote %d rows, %s", path, rows, errors.summary())
    return WriteReport(path=path, kind=kind, rows=rows, skipped=list(errors.skipped), sources=dict(sources))


def _validated(data: Any, kind: str, images: ImageOptions, errors: RowErrors) -> Iterator[dict[str, Any]]:
    validate = VALIDATORS[kind]
    for row, record in enumerate(iter_records(data)):
        try:
            yield validate(record, row=row, images=images)
        except RecordError as err:
            errors(err)


def save_preference_dataset(
    data: Any,
    path: str | Path,
    *,
    lenient: bool = False,
    image_root: str | Path | None = None,
    max_pixels: int | None = PIL_LIMIT,
    kind: str = PREFERENCE,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> WriteReport:
    """Validate and atomically save records (a ``Dataset`` or an iterable of dicts).

    Strict by default: the first bad row raises :class:`RecordError` and nothing is
    written. ``lenient=True`` skips bad rows, counts and logs them (``report.skipped``).
    Image paths are resolved inside ``image_root``. ``kind="prompts"`` saves a prompt set.
    ``overwrite`` / ``inputs``: as in :func:`write_dataset`.
    """
    errors = RowErrors(lenient=lenient)
    options = ImageOptions(root=Path(image_root) if image_root else None, max_pixels=max_pixels)
    return write_dataset(_validated(data, kind, options, errors), path, kind=kind, errors=errors,
                         overwrite=overwrite, inputs=inputs)


def save_prompt_set(data: Any, path: str | Path, **kwargs: Any) -> WriteReport:
    """:func:`save_preference_dataset` for prompt sets (images + prompt, no responses)."""
    return save_preference_dataset(data, path, kind=PROMPTS, **kwargs)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The folder's manifest, or ``{}`` for a plain ``save_to_disk`` folder (e.g. from TRL)."""
    file = Path(path) / MANIFEST
    return json.loads(file.read_text()) if file.exists() else {}


def open_dataset(path: str | Path, split: str | None = None):
    """``load_from_disk`` without validation; a ``DatasetDict`` needs ``split``."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a dataset folder (expected a datasets save_to_disk folder)")
    loaded = load_from_disk(str(path))
    if isinstance(loaded, DatasetDict):
        if split is None:
            raise ValueError(f"{path} holds splits {sorted(loaded)}; choose one with split=")
        return loaded[split]
    return loaded


def validate_dataset(
    data: Any,
    *,
    lenient: bool = False,
    check_images: bool = True,
    max_pixels: int | None = PIL_LIMIT,
    split: str | None = None,
) -> ValidationReport:
    """Check every row of a dataset (a folder or a ``Dataset``) against the canonical schema.

    Strict by default (raises on the first bad row); ``lenient=True`` collects all errors.
    Unknown extra columns are tolerated, so TRL datasets can be checked too.
    """
    from datasets import Dataset

    ds = data if isinstance(data, Dataset) else open_dataset(data, split)
    kind = kind_of(ds.column_names)
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in ds.column_names]
    if kind == PREFERENCE and missing:
        raise RecordError(f"dataset has no column {missing[0]!r}", field=missing[0])
    if "prompt" not in ds.column_names:
        raise RecordError("dataset has no column 'prompt'", field="prompt")
    validate = VALIDATORS[kind]
    options = ImageOptions(max_pixels=max_pixels, decode=check_images)
    kept: list[int] = []
    errors: list[RecordError] = []
    for row, record in enumerate(iter_records(ds)):
        try:
            validate(record, row=row, images=options, allow_extra=True)
            kept.append(row)
        except RecordError as err:
            if not lenient:
                raise
            errors.append(err)
    return ValidationReport(rows=len(ds), kept=kept, errors=errors, kind=kind)


def load_preference_dataset(
    path: str | Path,
    *,
    lenient: bool = False,
    check_images: bool = True,
    split: str | None = None,
):
    """Load a canonical (or TRL-format) dataset folder, validating every row.

    Strict by default: a bad row raises :class:`RecordError` naming the row and field.
    ``lenient=True`` drops bad rows (logged) and returns the rest. ``check_images=False``
    skips full image decoding for trusted data (types and spans are still checked).
    Works for prompt sets too (the kind is read from the columns).
    """
    ds = open_dataset(path, split)
    report = validate_dataset(ds, lenient=lenient, check_images=check_images)
    if report.errors:
        log.warning("%s: dropped %d of %d rows that failed validation, first: %s",
                    path, len(report.errors), report.rows, report.errors[0])
        ds = ds.select(report.kept, keep_in_memory=True)
    return ds
