"""Resumable batch map: one output record per item, computed in batches and cached on disk
so an interrupted run resumes where it stopped and ends with the same file. The benchmark
runner generates answers with it; judges score with it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from mmalign.io import atomic_write_text, jsonl_text, read_json

T = TypeVar("T")


def cached_map(
    items: Sequence[T],
    keys: Sequence[str],
    compute: Callable[[list[T], int], list[dict[str, Any]]],
    *,
    key_of: Callable[[Mapping[str, Any], str], str],
    path: Path | None,
    settings: Mapping[str, Any],
    batch_size: int,
    desc: str,
    progress: bool = True,
    whole_batches: bool = True,
) -> list[dict[str, Any]]:
    """One output record per item, computed in batches, cached to survive interruption.

    With ``path`` (``name.jsonl``): ``settings`` go to ``name.meta.json`` (a resumed run
    with other settings is an error), each finished batch is appended to
    ``name.partial.jsonl`` and flushed, and at the end all records are written to ``path``
    in item order, atomically.

    With ``whole_batches`` (for generation), batches are fixed slices of ``items`` and a
    batch is either cached whole or computed whole (``compute`` gets its index), so a
    resumed run computes exactly what an uninterrupted one would — padding and sampling
    seeds included — and writes the same file. Without it (for judges), only the missing
    items are computed, in batches of ``batch_size``.
    """
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys among the items")
    done: dict[str, dict[str, Any]] = {}
    partial = None
    if path is not None:
        path = Path(path)
        partial = path.with_name(path.stem + ".partial.jsonl")
        _check_settings(path.with_name(path.stem + ".meta.json"), path, dict(settings))
        if path.exists():
            done.update(_read_cache(path, key_of, allow_torn_tail=False))
        if partial.exists():
            done.update(_read_cache(partial, key_of, allow_torn_tail=True))
    wanted = set(keys)
    done = {k: v for k, v in done.items() if k in wanted}

    bar = tqdm(total=len(items), initial=len(done), desc=desc, unit="item", disable=not progress)
    sink = open(partial, "a", encoding="utf-8") if partial is not None else None
    try:
        if whole_batches:
            batches = [list(range(start, min(start + batch_size, len(items))))
                       for start in range(0, len(items), batch_size)]
        else:
            pending = [i for i in range(len(items)) if keys[i] not in done]
            batches = [pending[start : start + batch_size] for start in range(0, len(pending), batch_size)]
        for batch_index, span in enumerate(batches):
            if all(keys[i] in done for i in span):
                continue
            outputs = compute([items[i] for i in span], batch_index)
            if len(outputs) != len(span):
                raise RuntimeError(f"batch {batch_index}: got {len(outputs)} outputs for {len(span)} items")
            new = [(keys[i], out) for i, out in zip(span, outputs) if keys[i] not in done]
            if sink is not None:
                sink.write(jsonl_text([out for _, out in new]))
                sink.flush()
                os.fsync(sink.fileno())
            done.update(new)
            bar.update(len(new))
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    ordered = [done[k] for k in keys]
    if path is not None:
        atomic_write_text(path, jsonl_text(ordered))
        partial.unlink(missing_ok=True)
    return ordered


def _check_settings(meta: Path, final: Path, settings: dict[str, Any]) -> None:
    if meta.exists():
        saved = read_json(meta)
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ValueError(
                f"{meta}: the cached answers were made with other settings ({', '.join(changed)}); "
                "use another output folder or delete the cache to start over"
            )
        return
    if final.exists():
        raise ValueError(
            f"{final} exists but has no {meta.name}; it was not written by this runner — "
            "use another output folder"
        )
    atomic_write_text(meta, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _read_cache(
    path: Path, key_of: Callable[[Mapping[str, Any], str], str], *, allow_torn_tail: bool
) -> dict[str, dict[str, Any]]:
    """Records of a cache file; a torn last line (an interrupted write) is dropped and the
    file rewritten without it so appending can go on."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records: dict[str, dict[str, Any]] = {}
    for line_no, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not line.endswith("\n"):
                raise json.JSONDecodeError("no line end", line, len(line))
        except json.JSONDecodeError as err:
            if allow_torn_tail and line_no == len(lines):
                atomic_write_text(path, "".join(lines[:-1]))
                break
            raise ValueError(f"{path} line {line_no}: invalid JSON: {err}") from None
        records[key_of(record, f"{path} line {line_no}")] = record
    return records
