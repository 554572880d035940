"""Files: crash-safe writing (build in a temporary sibling, then rename into place) and
reading JSON / JSON Lines records with errors that name the file and line.

Writing a folder never destroys anything it was not asked to replace (see
:func:`check_output`): an output of the same kind is replaced atomically, an empty folder
is filled, anything else is refused unless ``overwrite=True``, a file and the command's
own inputs are always refused. Temporary siblings carry the writer's process id, so the
next writer of the same output removes those left by a process that was killed.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("mmalign.io")

#: Prefixes of the temporary siblings of an output ``NAME``: ``.tmp-NAME-PID-xxxxxxxx`` (the
#: output being built), ``.chunks-NAME-PID-xxxxxxxx`` (a writer's scratch space) and
#: ``.old-NAME-PID-xxxxxxxx`` (the previous output, between the two renames of a replace).
TEMP_PREFIXES = ("tmp", "chunks", "old")


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder, recognised by its signature files: every pattern (a glob
    relative to the folder) must match at least one file."""

    what: str
    files: tuple[str, ...]

    def matches(self, folder: Path) -> bool:
        return all(any(p.is_file() for p in folder.glob(pattern)) for pattern in self.files)

    def __str__(self) -> str:
        return f"{self.what} ({' + '.join(self.files)})"


#: A ``datasets`` ``save_to_disk`` folder (canonical datasets are one too).
DATASETS_FOLDER = OutputKind("datasets folder", ("dataset_info.json", "state.json"))
#: A transformers checkpoint: config and safetensors weights.
MODEL = OutputKind("model", ("config.json", "*.safetensors"))
#: A PEFT adapter folder.
ADAPTER = OutputKind("PEFT adapter", ("adapter_config.json",))


class OutputError(ValueError):
    """An output path that a writer refuses (nothing was written or changed)."""


class OutputExistsError(OutputError):
    """The output path is a file, or a folder holding something other than an output of the
    kind being written."""


class OutputIsInputError(OutputError):
    """The output path is one of the writer's inputs, inside one, or contains one."""


def _kinds(replaces: OutputKind | Iterable[OutputKind]) -> tuple[OutputKind, ...]:
    return (replaces,) if isinstance(replaces, OutputKind) else tuple(replaces)


def _contents(folder: Path, limit: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"


def _existing(paths: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    """The inputs that exist on disk (a hub id or a card name is no path), resolved."""
    found = []
    for p in paths:
        if p is None or str(p) == "":
            continue
        path = Path(p).expanduser()
        if path.exists():
            found.append(path.resolve())
    return found


def check_output(
    path: str | Path,
    *,
    replaces: OutputKind | Iterable[OutputKind] = (),
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Refuse an output folder that writing would destroy something at; return it as a Path.

    Fine: a path that does not exist, an empty folder, a folder that is an output of one of
    the kinds in ``replaces`` (it is replaced), and with ``overwrite=True`` any folder.
    Refused with :class:`OutputExistsError`: a file (even with ``overwrite``), a folder
    holding anything else. Refused with :class:`OutputIsInputError` (even with
    ``overwrite``): the path is one of ``inputs``, inside one, or contains one (inputs that
    do not exist, such as hub ids, are ignored). Writers call it on entry; call it yourself
    before long work (loading a model) so a bad path fails first.
    """
    path = Path(path)
    target = path.expanduser().resolve()
    for source in _existing(inputs):
        if target == source:
            relation = "is"
        elif target.is_relative_to(source):
            relation = "is inside"
        elif source.is_relative_to(target):
            relation = "contains"
        else:
            continue
        raise OutputIsInputError(f"output {path} {relation} the input {source}: writing it would destroy the "
                                 "input (--overwrite does not change that); choose another output folder")
    if path.is_symlink() and not path.exists():
        raise OutputExistsError(f"output {path} is a broken symbolic link; remove it or choose another output folder")
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputExistsError(f"output {path} is a file, not a folder; it is never replaced (not even with "
                                "--overwrite): remove it or choose another output folder")
    kinds = _kinds(replaces)
    if overwrite or not any(path.iterdir()) or any(kind.matches(path) for kind in kinds):
        return path
    expected = f"not a {' or '.join(str(kind) for kind in kinds)}" if kinds else "and is not empty"
    raise OutputExistsError(f"output folder {path} already holds {_contents(path)}, {expected}; "
                            "--overwrite (overwrite=True) replaces it")


_SUFFIX = r"(?:-[a-z0-9_]{8})?"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # another user's process, or no way to tell: keep its folder
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(path: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.tmp-`` / ``.chunks-`` / ``.old-NAME-PID-*``)
    left by writers that no longer run; return them. A stale ``.old-`` folder is put back at
    ``path`` when ``path`` is missing (a writer died between the two renames of a replace).
    Siblings whose process is alive, or that carry no process id, are left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.({'|'.join(TEMP_PREFIXES)})-{re.escape(path.name)}-(\d+){_SUFFIX}")
    stale = []
    for sibling in path.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and not _alive(int(match.group(2))):
            stale.append((match.group(1), int(match.group(2)), sibling))
    # the newest previous output first, in case it has to be put back
    stale.sort(key=lambda s: (s[0] != "old", -s[2].lstat().st_mtime))
    for prefix, pid, sibling in stale:
        if prefix == "old" and sibling.is_dir() and not path.exists() and not path.is_symlink():
            os.replace(sibling, path)
            log.warning("%s: put back the previous output left as %s by process %d, which no longer runs",
                        path, sibling.name, pid)
            continue
        _remove(sibling)
        log.warning("%s: removed %s, left by process %d, which no longer runs", path, sibling.name, pid)
    return [s for _, _, s in stale]


def _sibling_name(path: Path, prefix: str) -> Path:
    return path.with_name(f".{prefix}-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")


def _make_sibling(path: Path, prefix: str) -> Path:
    while True:
        folder = _sibling_name(path, prefix)
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        umask = os.umask(0)
        os.umask(umask)
        folder.chmod(0o777 & ~umask)
        return folder


@contextmanager
def scratch_dir(path: str | Path, prefix: str = "chunks") -> Iterator[Path]:
    """A temporary folder beside ``path`` (``.chunks-NAME-PID-xxxxxxxx``), removed on exit;
    one left by a killed process is removed by the next :func:`atomic_dir` of ``path``."""
    path = Path(path)
    if prefix not in TEMP_PREFIXES:
        raise ValueError(f"scratch_dir: prefix must be one of {TEMP_PREFIXES}, got {prefix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = _make_sibling(path, prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_dir(
    path: str | Path,
    *,
    replaces: OutputKind | Sequence[OutputKind] = (),
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it takes the place of ``path``.

    ``path`` is checked first (:func:`check_output` with ``replaces``, ``overwrite`` and
    ``inputs``): nothing is done for a refused path. Temporary siblings that killed
    writers left behind are removed (:func:`remove_stale`). A crash leaves the previous
    ``path`` (if any) untouched and at most a ``.tmp-NAME-PID-*`` folder, which the next
    writer removes, so readers never see a half-written dataset or checkpoint.
    """
    path = Path(path)
    inputs = list(inputs)
    check_output(path, replaces=replaces, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = _make_sibling(path, "tmp")
    try:
        yield tmp
        # whatever appeared at ``path`` meanwhile is held to the same rules
        check_output(path, replaces=replaces, overwrite=overwrite, inputs=inputs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = _sibling_name(path, "old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON list or a JSON Lines file (whatever the extension: POPE's official
    ``.json`` files are JSON Lines). Every record must be an object. Errors name the file
    (and the line): bytes that are not UTF-8, invalid or too deeply nested JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = parse_json(text, path)
    else:
        records = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            records.append(parse_json(line, f"{path} line {line_no}"))
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path} record {i}: expected a JSON object, got {type(record).__name__}")
    return records


def read_json(path: str | Path) -> Any:
    """One JSON value from a file; errors name the file (see :func:`parse_json`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return parse_json(read_text(path), path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonl_text(records: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# ---------------------------------------------------------------------------- reading text and JSON
#: JSON nested deeper than this is refused where it is read: no record needs it (a canonical
#: record nests 5 levels), and code that walks values recursively would hit Python's limit.
MAX_JSON_DEPTH = 100


class NotUTF8Error(ValueError):
    """Bytes that are not UTF-8 text; ``offset`` is the first bad byte's, ``line`` its line."""

    def __init__(self, message: str, *, offset: int, byte: int, line: int):
        super().__init__(message)
        self.offset, self.byte, self.line = offset, byte, line


def decode_text(data: bytes, where: str | os.PathLike[str]) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped). Anything else is a
    :class:`NotUTF8Error` naming ``where``, the first bad byte, its offset and its line."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data.count(b"\n", 0, offset) + 1
        raise NotUTF8Error(f"{where}: not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} (line {line})",
                           offset=offset, byte=data[offset], line=line) from None


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file; errors name the file (and for bad bytes the offset and line)."""
    return decode_text(Path(path).read_bytes(), path)


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar: 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list | tuple))
    return depth


def parse_json(text: str, where: str | os.PathLike[str] | None = None, *,
               max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` whose every failure is a one-line ``ValueError`` (prefixed with ``where``):
    invalid JSON, nesting deeper than ``max_depth`` (``None``: as deep as Python parses, for
    callers that check each record), numbers Python refuses."""
    prefix = f"{where}: " if where is not None else ""
    too_deep = f"{prefix}JSON nested more than {max_depth or MAX_JSON_DEPTH} levels deep"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{prefix}invalid JSON: {err}") from None
    except RecursionError:
        raise ValueError(too_deep) from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"{prefix}unreadable JSON value: {err}") from None
    if max_depth is not None and json_depth(value) > max_depth:
        raise ValueError(too_deep)
    return value


def from_mapping(cls: type[T], values: Mapping[str, Any], what: str) -> T:
    """A settings dataclass from a config file's mapping; an unknown key is an error naming the
    known ones, never silently ignored (a typo would otherwise keep the default)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)
