"""Reading rows from local files in the formats public datasets ship in.

Parquet (one file or a folder of shards, read in batches), JSON (a list of objects) and
JSON Lines. Rows come with their 0-based index within their file (a
:class:`~mmalign.data_builders.schema.RowRef` that also knows the file), so errors name
the file, or the shard of a folder, and the row in it. Text must be UTF-8 and JSON nest
at most :data:`mmalign.io.MAX_JSON_DEPTH` levels; errors say where it is not. No pickle,
no code execution: only parquet and JSON are parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmalign.data_builders.schema import RecordError, RowErrors, RowRef, shorten
from mmalign.io import MAX_JSON_DEPTH, NotUTF8Error, decode_text, json_depth, parse_json

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
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{file}: not a readable parquet file ({' '.join(str(exc).split())})") from None


def _json_rows(file: Path) -> Iterator[Any]:
    """Parsed rows; a JSON Lines line that is not UTF-8 or does not parse comes back as a
    :class:`RecordError` (a JSON file that does not parse is a ``ValueError`` naming it)."""
    if file.suffix == ".jsonl":
        with file.open("rb") as fh:
            offset = 0
            for i, raw in enumerate(fh):
                start, offset = offset, offset + len(raw)
                try:
                    line = decode_text(raw, file)
                except NotUTF8Error as err:
                    yield RecordError(f"line {i + 1} is not UTF-8 text: byte 0x{err.byte:02x} at offset "
                                      f"{start + err.offset}")
                    continue
                if not line.strip():
                    continue
                try:
                    yield parse_json(line)
                except ValueError as exc:
                    yield RecordError(f"line {i + 1} is not valid JSON: {str(exc).removeprefix('invalid JSON: ')}")
        return
    data = parse_json(decode_text(file.read_bytes(), file), file, max_depth=None)  # rows are checked one by one
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a JSON list of records, got {type(data).__name__}")
    yield from data



def iter_rows(
    path: str | Path, *, split: str | None = None, errors: RowErrors | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row, row dict)`` for every row of the data files behind ``path``, in sorted file order.

    ``row`` is a :class:`RowRef`: the 0-based row within its file, which it names, so an
    error about a row of a shard points into that shard. A JSON Lines line that is not
    UTF-8 or does not parse, a row that is not an object, or one whose fields nest deeper
    than :data:`~mmalign.io.MAX_JSON_DEPTH` goes to ``errors`` (strict: raises).
    """
    errors = errors if errors is not None else RowErrors()
    for file in data_files(path, split):
        if file.suffix == ".parquet":
            rows: Iterator[Any] = _parquet_rows(file)
        else:
            rows = _json_rows(file)
        for n, raw in enumerate(rows):
            row = RowRef(n, str(file))
            if isinstance(raw, RecordError):
                errors(raw.located(row))
            elif not isinstance(raw, dict):
                errors(RecordError(f"expected an object, got {type(raw).__name__}", row=row))
            elif deep := next((k for k, v in raw.items() if json_depth(v) >= MAX_JSON_DEPTH), None):
                errors(RecordError(f"nests more than {MAX_JSON_DEPTH} levels deep", field=deep, row=row))
            else:
                yield row, raw


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


def record_id(raw: dict[str, Any], key: str) -> str | None:
    """The row's id under ``key`` as text, for error messages: a string or a number (a whole
    float, as parquet stores integer ids with gaps, reads as an integer); anything else is a
    :class:`RecordError` naming the field."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"expected a string or integer id, got {shorten(value)}", field=key)
    return str(value)
