"""Reading rows from local files in the formats public datasets ship in.

Parquet (one file or a folder of shards, read in batches), JSON (a list of objects) and
JSON Lines. Rows come with their 0-based index so errors can name them. No pickle, no
code execution: only parquet and JSON are parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmalign.data_builders.schema import RecordError, RowErrors

ROW_FORMATS = (".parquet", ".json", ".jsonl")
#: Metadata files of saved ``datasets`` folders and of mmalign, never data rows.
METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json", "mmalign_dataset.json"}


def data_files(path: str | Path, split: str | None = None) -> list[Path]:
    """The data files behind ``path``: the file itself, or every parquet / JSON(L) file in a folder.

    For a folder, ``split`` keeps files whose name starts with it (hub layout
    ``<config>/<split>-00000-of-00001.parquet``).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    files = sorted(p for p in path.rglob("*")
                   if p.suffix in ROW_FORMATS and p.name not in METADATA_FILES and p.is_file())
    if split is not None:
        files = [p for p in files if p.name.startswith(split)]
    if not files:
        raise FileNotFoundError(f"no .parquet / .json / .jsonl files under {path}"
                                + (f" for split {split!r}" if split else ""))
    return files


def _parquet_rows(file: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
        for batch in reader.iter_batches(batch_size=256):
            yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{file}: not a readable parquet file ({exc})") from None


def _json_rows(file: Path) -> Iterator[Any]:
    """Parsed rows; an unparsable JSON Lines line comes back as a :class:`RecordError`."""
    if file.suffix == ".jsonl":
        with file.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    yield RecordError(f"{file.name} line {i + 1} is not valid JSON: {exc.msg}")
        return
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: invalid JSON ({exc})") from None
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a JSON list of records, got {type(data).__name__}")
    yield from data


def iter_rows(
    path: str | Path, *, split: str | None = None, errors: RowErrors | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row index, row dict)`` for every row of the data files behind ``path``.

    Rows are numbered across files in sorted file order. A JSON Lines line that does not
    parse, or a row that is not an object, goes to ``errors`` (strict: raises).
    """
    errors = errors if errors is not None else RowErrors()
    row = 0
    for file in data_files(path, split):
        if file.suffix == ".parquet":
            rows: Iterator[Any] = _parquet_rows(file)
        else:
            rows = _json_rows(file)
        for raw in rows:
            if isinstance(raw, RecordError):
                errors(raw.located(row))
            elif isinstance(raw, dict):
                yield row, raw
            else:
                errors(RecordError(f"expected an object, got {type(raw).__name__}", row=row))
            row += 1


def default_image_root(path: str | Path) -> Path:
    """Where relative image paths point by default: the data folder (or the file's folder)."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def require(raw: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """``raw[key]``, or a :class:`RecordError` naming the field when missing or mistyped."""
    if key not in raw or raw[key] is None:
        raise RecordError("is missing", field=key)
    value = raw[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(t.__name__ for t in kinds)
        raise RecordError(f"expected {names}, got {type(value).__name__}", field=key)
    return value
