"""Looking at a dataset: a terminal view with corrected spans highlighted, and an HTML preview.

In a terminal, corrected spans are coloured (green in ``chosen``, red in ``rejected``);
without colour they are bracketed ``[[like this]]``. ``diff=True`` also marks the
word-level differences between the two responses ({+inserted+} / [-deleted-] without
colour), which helps with pairs that carry no spans. The HTML preview embeds image
thumbnails, so one file can be opened anywhere. Text from the data never reaches the
terminal as is: control characters (escape sequences included) are shown as visible
escapes such as ``\x1b`` (:func:`~mmalign.data_builders.schema.terminal_safe`), as the
HTML preview escapes markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmalign.chat import response_text
from mmalign.data_builders.claims import image_data_url
from mmalign.data_builders.corrections import word_diff
from mmalign.data_builders.images import ImageError, ImageOptions, check_image_bytes, decode_image
from mmalign.data_builders.schema import SIDES, terminal_safe
from mmalign.data_builders.storage import open_dataset, read_manifest

RESET = "\033[0m"
STYLE = {"chosen": "\033[1;32m", "rejected": "\033[1;31m", "diff": "\033[4;33m", "head": "\033[1;36m",
         "dim": "\033[2m"}
MARKERS = {"span": ("[[", "]]"), "insert": ("{+", "+}"), "delete": ("[-", "-]")}


def mark_spans(text: str, spans: Iterable[Sequence[int]], start: str, end: str) -> str:
    """``text`` with ``start`` / ``end`` inserted around each (sorted, non-overlapping) span."""
    out, pos = [], 0
    for lo, hi in spans:
        out += [text[pos:lo], start, text[lo:hi], end]
        pos = hi
    out.append(text[pos:])
    return "".join(out)


def _merge(spans: Iterable[Sequence[int] | None]) -> list[tuple[int, int]]:
    """Union of spans, sorted, overlapping ones merged (stored spans and diff spans can overlap)."""
    merged: list[list[int]] = []
    for lo, hi in sorted(tuple(s) for s in spans if s):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def diff_spans(record: Mapping[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """Word-level differences per side: rejected = original text, chosen = corrected text."""
    edits = word_diff(record["rejected"], record["chosen"])
    return {"chosen": _merge(e.corrected for e in edits), "rejected": _merge(e.original for e in edits)}


def _response(value: Any) -> str:
    """A response as text: TRL's conversational form (a list of messages, ending with the
    answer) shows the answer, so folders written by other tools display as they are."""
    if isinstance(value, str):
        return value
    try:
        return response_text(value)
    except (TypeError, KeyError, AttributeError):
        return str(value)


def _texts(record: Mapping[str, Any]) -> dict[str, str]:
    return {side: _response(record[side]) for side in SIDES if side in record}


def _spans(record: Mapping[str, Any], side: str, text: str) -> list[tuple[int, int]]:
    """The side's stored spans when they are sorted ``[start, end)`` pairs inside ``text``;
    otherwise none (a folder from another tool may hold anything under that name)."""
    spans, pos = [], 0
    for span in record.get(f"{side}_spans") or []:
        if not (isinstance(span, Sequence) and len(span) == 2 and all(isinstance(x, int) for x in span)
                and pos <= span[0] < span[1] <= len(text)):
            return []
        spans.append((span[0], span[1]))
        pos = span[1]
    return spans


def _image_summary(images: Sequence[Any]) -> str:
    parts = []
    for img in images:
        try:
            opened = check_image_bytes(img["bytes"], ImageOptions(decode=False))
            parts.append(f"{opened.size[0]}x{opened.size[1]} {opened.format or ''}".strip())
        except (ImageError, KeyError, TypeError):
            parts.append("unreadable")
    return f"{len(images)}" + (f" ({', '.join(parts)})" if parts else "")


def _prompt_lines(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [f"prompt:   {prompt}"]
    lines = []
    for msg in prompt if isinstance(prompt, list) else [prompt]:
        content = msg.get("content") if isinstance(msg, Mapping) else None
        if not isinstance(content, list) or not all(isinstance(p, Mapping) for p in content):
            lines.append(f"prompt:   {msg!r}")
            continue
        text = " ".join("<image>" if p.get("type") == "image" else str(p.get("text") or "") for p in content)
        lines.append(f"{str(msg.get('role')) + ':':<9} {text}")
    return lines


def _safety_line(record: Mapping[str, Any]) -> str | None:
    if all(record.get(k) is None for k in ("more_helpful", "safer", "chosen_is_safe", "rejected_is_safe")):
        return None
    per_side = []
    for side in SIDES:
        safe = record.get(f"{side}_is_safe")
        bits = [f"safe={'?' if safe is None else ('yes' if safe else 'no')}"]
        for name in ("harmless", "helpful"):
            if record.get(f"{side}_{name}_rate") is not None:
                bits.append(f"{name}={record[f'{side}_{name}_rate']}")
        per_side.append(f"{side} " + " ".join(bits))
    return (f"safety:   more helpful={record.get('more_helpful')}  safer={record.get('safer')}  |  "
            + "  |  ".join(per_side))


def render_record(record: Mapping[str, Any], index: int, *, color: bool = False, diff: bool = False) -> str:
    """A readable multi-line view of one stored record (preference or prompt set)."""
    def paint(text: str, style: str) -> str:
        return f"{STYLE[style]}{text}{RESET}" if color else text

    safe = terminal_safe
    lines = [paint(f"── row {index} · source {safe(str(record.get('source') or '?'))} ──", "head"),
             f"images:   {_image_summary(record.get('images') or [])}",
             *([f"rejected images: {_image_summary(record['rejected_images'])}"] if record.get("rejected_images") else []),
             *(safe(line) for line in _prompt_lines(record.get("prompt")))]
    if record.get("reference"):
        lines.append(safe(f"reference: {record['reference']}"))
    texts = _texts(record)
    changed = diff_spans(texts) if diff and len(texts) == 2 else {}
    for side, text in texts.items():
        spans = _spans(record, side, text)
        if color:
            marks = [(lo, hi, STYLE[side]) for lo, hi in spans]
            marks += [(lo, hi, STYLE["diff"]) for lo, hi in changed.get(side, []) if not _covered(lo, hi, spans)]
            text = _paint_spans(text, marks)  # escapes the text character by character
        else:
            marked = mark_spans(text, spans, *MARKERS["span"])
            if changed.get(side) and not spans:
                kind = "insert" if side == "chosen" else "delete"
                marked = mark_spans(text, changed[side], *MARKERS[kind])
            text = safe(marked)  # the markers hold no control characters
        label = f"{side} ({len(spans)} span{'s' if len(spans) != 1 else ''})" if spans else side
        lines.append(f"{paint(label + ':', side)} {text}")
    if record.get("facts"):
        lines.append(safe("facts:    " + " | ".join(map(str, record["facts"]))))
    safety = _safety_line(record)
    if safety:
        lines.append(safe(safety))
    if record.get("meta"):
        meta = record["meta"] if isinstance(record["meta"], str) else json.dumps(record["meta"], default=str)
        lines.append(paint(safe("meta:     " + (meta if len(meta) <= 200 else meta[:197] + "...")), "dim"))
    return "\n".join(lines)


def _covered(lo: int, hi: int, spans: Sequence[Sequence[int]]) -> bool:
    return any(s <= lo and hi <= e for s, e in spans)


def _paint_spans(text: str, marks: list[tuple[int, int, str]]) -> str:
    """Colour possibly overlapping marks: earlier (stored-span) marks win where they overlap."""
    styles: list[str | None] = [None] * len(text)
    for lo, hi, style in reversed(marks):
        for k in range(lo, hi):
            styles[k] = style
    out, current = [], None
    for ch, style in zip(text, styles):
        if style != current:
            out.append(RESET if current else "")
            out.append(style or "")
            current = style
        out.append(terminal_safe(ch))
    if current:
        out.append(RESET)
    return "".join(out)


def load_rows(path: str | Path, start: int = 0, rows: int = 5, split: str | None = None) -> list[dict[str, Any]]:
    """Rows ``start … start+rows`` of a dataset folder, images left encoded."""
    if start < 0 or rows < 0:
        raise ValueError(f"rows to show start at 0 or later and number 0 or more (got start {start}, rows {rows})")
    ds = open_dataset(path, split)
    if start >= len(ds) and rows:
        raise ValueError(f"{path} has {len(ds)} rows; there is no row {start} (rows are numbered from 0)")
    stop = min(start + rows, len(ds))
    if start >= stop:
        return []
    return ds.with_format("arrow")[start:stop].to_pylist()


def inspect_dataset(
    path: str | Path, *, start: int = 0, rows: int = 5, color: bool = False, diff: bool = False
) -> str:
    """The terminal view of a few rows, headed by the manifest summary when present."""
    manifest = read_manifest(path)
    head = []
    if manifest:
        head.append(terminal_safe(f"{path}: {manifest.get('kind')} dataset, {manifest.get('rows')} rows, "
                                  f"schema v{manifest.get('schema_version')}, sources {manifest.get('sources')}"))
    body = [render_record(r, start + i, color=color, diff=diff) for i, r in enumerate(load_rows(path, start, rows))]
    return "\n\n".join(head + body)


def _html_text(text: str, spans: Sequence[Sequence[int]]) -> str:
    out, pos = [], 0
    for lo, hi in spans:
        out += [html.escape(text[pos:lo]), "<mark>", html.escape(text[lo:hi]), "</mark>"]
        pos = hi
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _thumbnail(img: Mapping[str, Any], size: int = 256) -> str:
    try:
        picture = decode_image(img)
    except ImageError as exc:
        return f"<span class=bad>unreadable image: {html.escape(str(exc))}</span>"
    picture.thumbnail((size, size))
    return f'<img src="{image_data_url(picture)}" alt="image">'


def render_html(records: Sequence[Mapping[str, Any]], *, title: str = "mmalign dataset", start: int = 0,
                diff: bool = False) -> str:
    """A self-contained HTML page: thumbnails, prompt, responses with spans as ``<mark>``."""
    cards = []
    for i, record in enumerate(records):
        parts = [f"<h2>row {start + i} <small>{html.escape(record.get('source') or '')}</small></h2>",
                 "<div class=imgs>" + "".join(_thumbnail(img) for img in record.get("images") or []) + "</div>",
                 *(["<div class=imgs><b>rejected images</b> "
                    + "".join(_thumbnail(img) for img in record["rejected_images"]) + "</div>"]
                   if record.get("rejected_images") else []),
                 "<p class=prompt>" + "<br>".join(html.escape(x) for x in _prompt_lines(record.get("prompt")))
                 + "</p>"]
        texts = _texts(record)
        changed = diff_spans(texts) if diff and len(texts) == 2 else {}
        for side, text in texts.items():
            spans = _spans(record, side, text) or changed.get(side, [])
            parts.append(f"<p class={side}><b>{side}</b> {_html_text(text, spans)}</p>")
        if record.get("facts"):
            parts.append("<ul class=facts>" + "".join(f"<li>{html.escape(f)}</li>" for f in record["facts"]) + "</ul>")
        safety = _safety_line(record)
        if safety:
            parts.append(f"<p class=safety>{html.escape(safety)}</p>")
        if record.get("meta"):
            parts.append(f"<pre>{html.escape(str(record['meta']))}</pre>")
        cards.append("<section>" + "\n".join(parts) + "</section>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}section{border-bottom:1px solid #ccc;"
             "padding:1em 0}img{margin-right:.5em;border:1px solid #999}.chosen mark{background:#b5f5b5}"
             ".rejected mark{background:#f5b5b5}.bad{color:#a00}pre{white-space:pre-wrap;color:#666}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(cards)
            + "</body></html>\n")


def write_html_preview(path: str | Path, out: str | Path, *, start: int = 0, rows: int = 20,
                       diff: bool = False) -> Path:
    """Write :func:`render_html` of rows of a dataset folder to ``out``."""
    out = Path(out)
    page = render_html(load_rows(path, start, rows), title=str(path), start=start, diff=diff)
    out.write_text(page, encoding="utf-8")
    return out
