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
from mmalign.io import OutputKind, atomic_dir, parse_json, read_text, scratch_dir

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


def _json_object(file: Path, what: str) -> dict[str, Any]:
    """A small JSON object file of a dataset folder; errors name the file and say what it is."""
    try:
        value = parse_json(read_text(file))
    except OSError as exc:
        raise ValueError(f"{file}: {what} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"{file}: not a readable {what} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: not a readable {what} (expected a JSON object, got {type(value).__name__})")
    return value


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The folder's manifest, or ``{}`` for a plain ``save_to_disk`` folder (e.g. from TRL).
    A manifest that does not parse is a ``ValueError`` naming it."""
    file = Path(path) / MANIFEST
    return _json_object(file, "mmalign dataset manifest") if file.exists() else {}


def _unreadable(folder: Path, files: list[Path], exc: Exception) -> ValueError:
    """The error for a folder ``load_from_disk`` could not read: the Arrow file at fault if one is."""
    import pyarrow as pa

    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                pa.ipc.open_stream(source).read_all()
        except (pa.ArrowException, OSError) as bad:
            return ValueError(f"{file}: not a readable Arrow file, truncated or corrupt ({' '.join(str(bad).split())})")
    return ValueError(f"{folder}: not a readable dataset folder ({type(exc).__name__}: {' '.join(str(exc).split())})")


def _open_single(folder: Path, where: str):
    """One ``Dataset.save_to_disk`` folder, memory-mapped (nothing is written), checked to
    hold rows (as many as its manifest says, when it has one)."""
    from datasets import Dataset

    state_file = folder / "state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{where} is not a dataset folder (no state.json or dataset_dict.json: "
                                "expected a datasets save_to_disk folder)")
    listed = _json_object(state_file, "datasets state file").get("_data_files")
    if not isinstance(listed, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str)
                                               for f in listed):
        raise ValueError(f"{state_file}: not a readable datasets state file (no list of data files)")
    files = [folder / f["filename"] for f in listed]
    for file in files:
        if not file.resolve().is_relative_to(folder.resolve()) or not file.is_file():
            raise FileNotFoundError(f"{file}: data file listed in {state_file.name} is missing")
    if not files:
        raise ValueError(f"{where}: the dataset has no rows")
    if (folder / "dataset_info.json").exists():
        _json_object(folder / "dataset_info.json", "datasets info file")
    manifest = read_manifest(folder)
    try:
        ds = Dataset.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - any failure here is the folder's; say which file
        raise _unreadable(folder, files, exc) from None
    if len(ds) == 0:
        raise ValueError(f"{where}: the dataset has no rows")
    expected = manifest.get("rows")
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != len(ds):
        raise ValueError(f"{where}: holds {len(ds)} rows but its manifest {MANIFEST} says {expected} "
                         "(a data file is truncated or was replaced)")
    return ds


def is_hub_dataset_id(name: str | Path) -> bool:
    """``org/name`` that is no local path: a Hugging Face Hub dataset (TRL's ``dataset_name``)."""
    text = str(name)
    parts = text.split("/")
    return (len(parts) == 2 and not text.startswith((".", "~")) and not Path(text).exists()
            and all(part and all(ch.isalnum() or ch in "-_." for ch in part) for part in parts))


def load_hub_dataset(name: str, split: str | None = None):
    """A Hub dataset's split (``train`` unless named), downloaded by ``datasets`` when a run asks for it."""
    from datasets import load_dataset

    return load_dataset(name, split=split or "train")


def open_dataset(path: str | Path, split: str | None = None):
    """A dataset folder (``save_to_disk``), memory-mapped and without validation; a folder
    of splits (``DatasetDict``) needs ``split``.

    Nothing is ever written into ``path``. Every problem is one ``ValueError`` /
    ``FileNotFoundError`` naming the folder or the file at fault: not a dataset folder, a
    split that is not there (the message lists those that are), no rows, a metadata file
    that does not parse, a missing or truncated Arrow file, fewer rows than the manifest says.
    An ``org/name`` that is no local path is a Hub dataset (:func:`load_hub_dataset`).
    """
    if is_hub_dataset_id(path):
        return load_hub_dataset(str(path), split)
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a dataset folder (expected a datasets save_to_disk folder)")
    splits_file = path / "dataset_dict.json"
    if not splits_file.is_file():
        if split is not None:
            raise ValueError(f"{path} holds one dataset, not splits; there is no split {split!r} to choose")
        return _open_single(path, str(path))
    names = _json_object(splits_file, "datasets split list").get("splits")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{splits_file}: not a readable datasets split list (no list of split names)")
    if split is None:
        raise ValueError(f"{path} holds splits {', '.join(names)}; choose one with --split (split= in Python)")
    if split not in names:
        raise ValueError(f"{path} has no split {split!r}; its splits are {', '.join(names)}")
    folder = path / split
    if not folder.resolve().is_relative_to(path.resolve()):
        raise ValueError(f"{splits_file}: split name {split!r} leaves the folder")
    return _open_single(folder, f"{path} (split {split})")


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

    if not isinstance(data, Dataset):
        try:
            return validate_dataset(open_dataset(data, split), lenient=lenient, check_images=check_images,
                                    max_pixels=max_pixels)
        except RecordError as err:
            raise err.located(None, file=str(data)) from None
    ds = data
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
    try:
        report = validate_dataset(ds, lenient=lenient, check_images=check_images)
    except RecordError as err:
        raise err.located(None, file=str(path)) from None
    if report.errors:
        log.warning("%s: dropped %d of %d rows that failed validation, first: %s",
                    path, len(report.errors), report.rows, report.errors[0])
        ds = ds.select(report.kept, keep_in_memory=True)
    return ds
