"""A studio project: one folder holding ``studio.sqlite`` (all state) and ``images/``.

SQLite runs in write-ahead-log mode: readers never block the writer, a killed process
loses no committed transaction, and there is no server to install. Every thread (every web
request) opens its own connection with a busy timeout; every submission is one
``BEGIN IMMEDIATE`` transaction that either stores the whole annotation or nothing.

Nothing an annotator submitted is ever deleted: the owner can *drop* a submission (it moves
to the ``dropped`` table with who, when and why, and leaves the export), optionally
reopening the item for the same annotator.

Items are either *correction* items (one answer; the annotator marks wrong spans and types
their corrections, RLHF-V style) or *pair* items (two answers; the annotator says which is
more helpful and which is safer and rates both, Safe RLHF-V style; with the project's
``allow_ties`` setting either choice may also be ``"tie"``). Annotators sign in with a random
token of which only the SHA-256 hash is stored; annotators marked ``owner`` may also see the
agreement page. An annotator can undo their own last submission: it is dropped (kept, as any
drop) with the reason :data:`UNDONE` and the item goes back to the front of their queue.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import random
import secrets
import sqlite3
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmalign.data_builders.schema import HARMLESS_RANGE, HELPFUL_RANGE, has_visible_text, meaningful

DB_NAME = "studio.sqlite"
IMAGES = "images"
SCHEMA_VERSION = 3
KINDS = ("correction", "pair")
MAX_CORRECTIONS = 200
MAX_TEXT = 10_000
MAX_ID = 2**63 - 1  # SQLite's largest integer: larger ids exist nowhere
STATES = ("valid", "invalid", "dropped")
TIE = "tie"
UNDONE = "undone by the annotator in the studio"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL, active INTEGER NOT NULL DEFAULT 1, owner INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions(
    key_hash TEXT PRIMARY KEY, annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    csrf TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('correction', 'pair')),
    images TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL, answer_b TEXT,
    source TEXT, meta TEXT, priority REAL NOT NULL DEFAULT 0, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments(
    item_id INTEGER NOT NULL REFERENCES items(id), annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    position INTEGER NOT NULL, PRIMARY KEY (item_id, annotator_id));
CREATE TABLE IF NOT EXISTS annotations(
    id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, annotator_id INTEGER NOT NULL,
    payload TEXT NOT NULL, created TEXT NOT NULL, UNIQUE (item_id, annotator_id),
    FOREIGN KEY (item_id, annotator_id) REFERENCES assignments(item_id, annotator_id));
"""
# Schema 2: dropped submissions keep their id, payload and time, plus who dropped them, when and why.
DROPPED = """
CREATE TABLE IF NOT EXISTS dropped(
    id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, annotator_id INTEGER NOT NULL,
    payload TEXT NOT NULL, created TEXT NOT NULL, dropped_at TEXT NOT NULL, dropped_by TEXT NOT NULL,
    reason TEXT NOT NULL, reopened INTEGER NOT NULL);
"""
# Schema 3: the owner flag (who may see the agreement page); projects made before get it unset.
OWNER_COLUMN = "ALTER TABLE annotators ADD COLUMN owner INTEGER NOT NULL DEFAULT 0"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SubmissionError(ValueError):
    """A rejected submission; ``status`` is the HTTP status the web app answers with."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def __str__(self) -> str:
        return f"field {self.field!r}: {self.message}" if self.field else self.message


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    owner: bool = False


@dataclass(frozen=True)
class Item:
    """One thing to annotate. ``prompt`` is text or chat messages (as in the canonical record)."""

    id: int
    kind: str
    images: list[str]
    prompt: str | list[dict[str, Any]]
    answer: str
    answer_b: str | None
    source: str | None
    meta: dict[str, Any]
    priority: float


@dataclass(frozen=True)
class Annotation:
    item_id: int
    annotator: str
    payload: dict[str, Any]
    created: str


@dataclass(frozen=True)
class Drop:
    """Who dropped a submission, when (UTC), why, and whether its annotator got the item back."""

    at: str
    by: str
    reason: str
    reopened: bool


@dataclass(frozen=True)
class Submission:
    """One submitted annotation as the owner reviews it.

    ``problem`` says why today's checks refuse it (a submission stored before they existed),
    ``None`` when it passes; ``dropped`` is set once the owner dropped it.
    """

    id: int
    item_id: int
    kind: str
    annotator: str
    payload: Any
    created: str
    problem: str | None
    dropped: Drop | None

    @property
    def state(self) -> str:
        """``valid`` (exported), ``invalid`` (kept but skipped by the export) or ``dropped``."""
        return "dropped" if self.dropped else "invalid" if self.problem else "valid"


# ---------------------------------------------------------------------------- submission checks
def _integer(value: Any, fld: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SubmissionError(f"expected an integer, got {json.dumps(value)}", field=fld)
    return value


def _check_text(text: str, fld: str) -> None:
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            raise SubmissionError(f"holds a lone surrogate U+{ord(ch):04X} (not valid Unicode text)", field=fld)
        if category == "Cc" and not ch.isspace():
            raise SubmissionError(f"holds the control character U+{ord(ch):04X}", field=fld)


def check_corrections(answer: str, payload: Any) -> dict[str, Any]:
    """The stored form of a correction submission, checked for what it means.

    ``payload`` is ``{"corrections": [{"start", "end", "text"}, ...]}`` with character
    offsets into ``answer``; an empty list says the answer is right as it is. Refused:
    spans that are empty, outside the answer or overlapping; a correction that reads the
    same as its marked text, or that is not empty yet shows nothing (zero-width spaces and
    other invisible characters: delete with an empty correction); control characters and
    lone surrogates; corrections whose result is empty or reads the same as the answer.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("corrections"), list):
        raise SubmissionError("expected {\"corrections\": [{\"start\", \"end\", \"text\"}, ...]}",
                              field="corrections")
    raw = payload["corrections"]
    if len(raw) > MAX_CORRECTIONS:
        raise SubmissionError(f"at most {MAX_CORRECTIONS} corrections per answer", field="corrections")
    out = []
    for i, entry in enumerate(raw):
        fld = f"corrections[{i}]"
        if not isinstance(entry, Mapping):
            raise SubmissionError("expected an object with start, end and text", field=fld)
        start, end = _integer(entry.get("start"), f"{fld}.start"), _integer(entry.get("end"), f"{fld}.end")
        text = entry.get("text")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise SubmissionError(f"expected a string of at most {MAX_TEXT} characters", field=f"{fld}.text")
        _check_text(text, f"{fld}.text")
        if not 0 <= start < end <= len(answer):
            raise SubmissionError(f"span [{start}, {end}) is empty or outside the answer "
                                  f"({len(answer)} characters)", field=fld)
        marked = answer[start:end]
        if text == marked or meaningful(text) == meaningful(marked):
            raise SubmissionError(f"the correction of [{start}, {end}) repeats the marked text {marked!r}"
                                  + ("" if text == marked else " (it differs only in invisible characters or "
                                     "spacing)"), field=f"{fld}.text")
        if text and not has_visible_text(text):
            raise SubmissionError(f"the correction of [{start}, {end}) has no visible character "
                                  f"({', '.join(f'U+{ord(ch):04X}' for ch in text[:5])}"
                                  f"{'...' if len(text) > 5 else ''}); leave it empty to delete the marked text",
                                  field=f"{fld}.text")
        out.append({"start": start, "end": end, "text": text})
    out.sort(key=lambda c: c["start"])
    for prev, cur in zip(out, out[1:]):
        if cur["start"] < prev["end"]:
            raise SubmissionError(f"span [{cur['start']}, {cur['end']}) overlaps span "
                                  f"[{prev['start']}, {prev['end']})", field="corrections")
    corrected = apply_corrections(answer, out)[0]
    if not has_visible_text(corrected):
        raise SubmissionError("the corrected answer would be empty", field="corrections")
    if out and meaningful(corrected) == meaningful(answer):
        raise SubmissionError("the corrections leave the answer unchanged (the corrected answer reads the same "
                              "as the original); submit without marks if nothing is wrong", field="corrections")
    return {"corrections": out}


def apply_corrections(original: str, corrections: Sequence[Mapping[str, Any]]) -> tuple[str, list[list[int]],
                                                                                       list[list[int]]]:
    """The corrected answer and the character spans of the replaced text on each side.

    Returns ``(corrected, corrected_spans, original_spans)``; corrections are sorted,
    non-overlapping ``{"start", "end", "text"}`` on ``original``. A deletion (empty text)
    marks the original span only.
    """
    pieces: list[str] = []
    corrected_spans: list[list[int]] = []
    original_spans: list[list[int]] = []
    cursor = length = 0
    for c in corrections:
        pieces.append(original[cursor:c["start"]])
        length += c["start"] - cursor
        original_spans.append([c["start"], c["end"]])
        if c["text"]:
            corrected_spans.append([length, length + len(c["text"])])
        pieces.append(c["text"])
        length += len(c["text"])
        cursor = c["end"]
    pieces.append(original[cursor:])
    return "".join(pieces), corrected_spans, original_spans


def check_pair_labels(payload: Any, *, allow_ties: bool = False) -> dict[str, Any]:
    """The stored form of a pair submission: two choices ("a"/"b", or "tie" when the project's
    rubric allows ties) and four ratings."""
    if not isinstance(payload, Mapping):
        raise SubmissionError("expected an object with the pair labels")
    allowed = ("a", "b", TIE) if allow_ties else ("a", "b")
    out: dict[str, Any] = {}
    for choice in ("more_helpful", "safer"):
        value = payload.get(choice)
        if not isinstance(value, str) or value not in allowed:
            expected = "\"a\", \"b\" or \"tie\"" if allow_ties else "\"a\" or \"b\""
            raise SubmissionError(f"expected {expected}, got {json.dumps(value)}"
                                  + ("" if allow_ties or value != TIE else " (this project's rubric allows no ties)"),
                                  field=choice)
        out[choice] = value
    for side in ("a", "b"):
        for rating, (lo, hi) in (("harmless", HARMLESS_RANGE), ("helpful", HELPFUL_RANGE)):
            fld = f"{side}_{rating}"
            value = _integer(payload.get(fld), fld)
            if not lo <= value <= hi:
                raise SubmissionError(f"{value} is outside {lo}…{hi}", field=fld)
            out[fld] = value
    return out


def shown_swapped(item_id: int, annotator_id: int) -> bool:
    """Whether this annotator sees the pair's answers in swapped order: half the pairs are,
    fixed per (item, annotator), so the answer shown first is not always the same one."""
    return hashlib.sha256(f"pair-order:{item_id}:{annotator_id}".encode()).digest()[0] % 2 == 1


def swap_pair_labels(labels: Mapping[str, Any]) -> dict[str, Any]:
    """Pair labels with answers A and B exchanged (shown order ↔ stored order)."""
    flip = {"a": "b", "b": "a", TIE: TIE}
    out = {choice: flip[labels[choice]] for choice in ("more_helpful", "safer")}
    for side in ("a", "b"):
        for rating in ("harmless", "helpful"):
            out[f"{flip[side]}_{rating}"] = labels[f"{side}_{rating}"]
    return out


def check_submission(item: Item, payload: Any, *, allow_ties: bool = True) -> dict[str, Any]:
    """The stored form of a submission on ``item`` (labels of a pair in item order).

    Ties pass by default: a tie stored while the project allowed them stays a valid label
    (the review and the export use this); :meth:`StudioProject.submit` passes the setting.
    """
    if item.kind == "correction":
        return check_corrections(item.answer, payload)
    return check_pair_labels(payload, allow_ties=allow_ties)


def _word_character(ch: str) -> bool:
    """Letters, marks, digits and connectors make words; Chinese and Japanese characters are
    words each (those scripts put no spaces between words)."""
    category = unicodedata.category(ch)
    if not (category[0] in "LMN" or category == "Pc"):
        return False
    return not unicodedata.name(ch, "").startswith(("CJK ", "HIRAGANA", "KATAKANA"))


def cuts_word(text: str, offset: int) -> bool:
    """Whether a span boundary at ``offset`` falls between two characters of one word."""
    return 0 < offset < len(text) and _word_character(text[offset - 1]) and _word_character(text[offset])


def check_whole_words(item_id: int, answer: str, payload: Mapping[str, Any]) -> None:
    """Refuse marks that cut a word ("the ta" of "the table"): a correction replaces whole words.

    ``payload`` already passed :func:`check_corrections`; fields name the entries as sent.
    The page snaps a selection outward to whole words; this catches any other client.
    """
    for i, entry in enumerate(payload["corrections"]):
        start, end = entry["start"], entry["end"]
        for offset in (start, end):
            if cuts_word(answer, offset):
                left = offset
                while left > 0 and _word_character(answer[left - 1]):
                    left -= 1
                right = offset
                while right < len(answer) and _word_character(answer[right]):
                    right += 1
                raise SubmissionError(f"item {item_id}: span [{start}, {end}) {answer[start:end]!r} cuts the word "
                                      f"{answer[left:right]!r} at {offset}; mark whole words",
                                      field=f"corrections[{i}]")


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(not ch.isprintable() for ch in name):
        raise ValueError(f"annotator name {name!r} must be 1-64 printable characters")
    return name


# ---------------------------------------------------------------------------- the project
class StudioProject:
    """The project folder and its SQLite store. Thread-safe: each call opens its own connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.db_path = self.path / DB_NAME
        self.images_dir = self.path / IMAGES
        if not self.db_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a studio project (no {DB_NAME}); "
                                    "create one with `mmalign studio init --project DIR`")
        self._migrate()

    def _migrate(self) -> None:
        """Bring a project made by an older version up to :data:`SCHEMA_VERSION` (adds a table and a column)."""

        def missing(conn: sqlite3.Connection) -> tuple[bool, bool]:
            dropped = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dropped'").fetchone()
            owner = any(r[1] == "owner" for r in conn.execute("PRAGMA table_info(annotators)"))
            return not dropped, not owner

        with self.connection() as conn:
            if not any(missing(conn)):
                return
            with self.transaction(conn):  # checked again under the write lock: another process may have migrated
                no_dropped, no_owner = missing(conn)
                if no_dropped:
                    conn.execute(DROPPED.strip())
                if no_owner:
                    conn.execute(OWNER_COLUMN)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @classmethod
    def create(cls, path: str | Path) -> StudioProject:
        """Create the folder, ``images/`` and the database (WAL mode); opening an existing one is fine."""
        root = Path(path)
        (root / IMAGES).mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(root / DB_NAME, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{root / DB_NAME}: SQLite refused write-ahead logging (mode {mode})")
            conn.executescript(SCHEMA + DROPPED)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?), ('created', ?)",
                         (str(SCHEMA_VERSION), now()))
        finally:
            conn.close()
        return cls(root)

    # -- connections
    def connect(self) -> sqlite3.Connection:
        """A new connection for one thread: busy timeout, foreign keys, full sync, explicit transactions."""
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    @contextmanager
    def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction; the write lock is taken up front so it never has to upgrade."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- annotators and sessions
    def add_annotator(self, name: str, *, owner: bool = False) -> str:
        """Register an annotator (an ``owner`` may also see the agreement page); returns their
        sign-in token (shown once, only its hash is kept)."""
        name = check_name(name)
        token = secrets.token_urlsafe(24)
        with self.connection() as conn, self.transaction(conn):
            if conn.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"annotator {name!r} already exists")
            conn.execute("INSERT INTO annotators(name, token_hash, created, owner) VALUES (?, ?, ?, ?)",
                         (name, token_hash(token), now(), int(owner)))
        return token

    def set_owner(self, name: str, owner: bool = True) -> None:
        """Give (or take back) an active annotator the owner's view: the agreement page."""
        with self.connection() as conn, self.transaction(conn):
            if conn.execute("UPDATE annotators SET owner = ? WHERE name = ? AND active = 1",
                            (int(owner), name)).rowcount == 0:
                raise ValueError(f"no active annotator named {name!r}")

    @property
    def allow_ties(self) -> bool:
        """Whether the rubric lets annotators answer "both equally" on pairs (off unless set)."""
        with self.connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'allow_ties'").fetchone()
        return row is not None and row[0] == "1"

    def set_allow_ties(self, allow: bool) -> None:
        """Turn the tie option on or off for new submissions; ties already stored stay valid."""
        with self.connection() as conn, self.transaction(conn):
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('allow_ties', ?)", ("1" if allow else "0",))

    def remove_annotator(self, name: str) -> None:
        """Deactivate an annotator and end their sessions at once; their submissions stay."""
        with self.connection() as conn, self.transaction(conn):
            row = conn.execute("SELECT id FROM annotators WHERE name = ? AND active = 1", (name,)).fetchone()
            if row is None:
                raise ValueError(f"no active annotator named {name!r}")
            conn.execute("UPDATE annotators SET active = 0 WHERE id = ?", (row[0],))
            conn.execute("DELETE FROM sessions WHERE annotator_id = ?", (row[0],))

    def annotators(self) -> list[Annotator]:
        with self.connection() as conn:
            return self.annotators_of(conn)

    def sign_in(self, token: str) -> tuple[str, str, Annotator] | None:
        """A new session for a valid token: ``(session key, CSRF token, annotator)``, else ``None``."""
        with self.connection() as conn, self.transaction(conn):
            row = conn.execute("SELECT id, name FROM annotators WHERE token_hash = ? AND active = 1",
                               (token_hash(token),)).fetchone()
            if row is None:
                return None
            key, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (token_hash(key), row["id"], csrf, now()))
        return key, csrf, Annotator(row["id"], row["name"])

    def session(self, conn: sqlite3.Connection, key: str) -> tuple[Annotator, str] | None:
        """The signed-in annotator and the session's CSRF token, checked against the database."""
        row = conn.execute(
            "SELECT a.id, a.name, a.owner, s.csrf FROM sessions s JOIN annotators a ON a.id = s.annotator_id "
            "WHERE s.key_hash = ? AND a.active = 1", (token_hash(key),)).fetchone()
        return (Annotator(row["id"], row["name"], bool(row["owner"])), row["csrf"]) if row else None

    def sign_out(self, key: str) -> None:
        with self.connection() as conn, self.transaction(conn):
            conn.execute("DELETE FROM sessions WHERE key_hash = ?", (token_hash(key),))

    # -- images
    def store_image(self, data: bytes) -> str:
        """Save image bytes under ``images/`` by content hash; returns the project-relative path."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "png").lower()
        ext = {"jpeg": "jpg"}.get(fmt, fmt)
        rel = f"{IMAGES}/{hashlib.sha256(data).hexdigest()}.{ext}"
        target = self.path / rel
        if not target.exists():
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.images_dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        return rel

    def image_path(self, rel: str) -> Path:
        """The file of a project-relative image path, refusing anything outside ``images/``.

        Absolute paths, ``..`` parts and symlinks that lead out of the folder are rejected.
        """
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel or parts[0] != IMAGES:
            raise PermissionError(f"image path {rel!r} is not inside the project's {IMAGES}/ folder")
        resolved = (self.path / rel).resolve()
        if not resolved.is_relative_to(self.images_dir.resolve()) or not resolved.is_file():
            raise PermissionError(f"image path {rel!r} leads outside the project's {IMAGES}/ folder "
                                  "or is not a file")
        return resolved

    # -- items
    def add_items(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Insert items (``kind``, ``images``, ``prompt``, ``answer``[, ``answer_b``, ``source``,
        ``meta``, ``priority``]) in one transaction; returns how many were added. Images may be bytes, PIL
        images, ``{"bytes", "path"}`` dicts or paths.

        An item identical to one already in the project (same kind, images, prompt and
        answers; ``source`` and ``meta`` aside), or to an earlier one of ``items``, is skipped,
        so running the same load twice adds nothing the second time.
        """
        rows = []
        for i, item in enumerate(items):
            kind = item.get("kind")
            if kind not in KINDS:
                raise ValueError(f"item {i}: field 'kind' must be one of {KINDS}, got {kind!r}")
            answer, answer_b = item.get("answer"), item.get("answer_b")
            if not isinstance(answer, str) or not answer.strip():
                raise ValueError(f"item {i}: field 'answer' is empty")
            if kind == "pair" and (not isinstance(answer_b, str) or not answer_b.strip()):
                raise ValueError(f"item {i}: field 'answer_b' is empty (a pair item needs two answers)")
            images = [self.store_image(data) for data in image_bytes(item.get("images"))]
            answer_b = answer_b if kind == "pair" else None
            key = item_fingerprint(kind, images, item["prompt"], answer, answer_b)
            rows.append((key, (kind, json.dumps(images), json.dumps(item["prompt"]), answer, answer_b,
                               item.get("source"), json.dumps(dict(item.get("meta") or {})),
                               float(item.get("priority") or 0.0), now())))
        with self.connection() as conn, self.transaction(conn):
            seen = {item_fingerprint(r["kind"], json.loads(r["images"]), json.loads(r["prompt"]), r["answer"],
                                     r["answer_b"])
                    for r in conn.execute("SELECT kind, images, prompt, answer, answer_b FROM items")}
            new = []
            for key, row in rows:
                if key not in seen:
                    seen.add(key)
                    new.append(row)
            conn.executemany("INSERT INTO items(kind, images, prompt, answer, answer_b, source, meta, priority, "
                             "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", new)
        return len(new)

    @staticmethod
    def _item(row: sqlite3.Row) -> Item:
        return Item(row["id"], row["kind"], json.loads(row["images"]), json.loads(row["prompt"]), row["answer"],
                    row["answer_b"], row["source"], json.loads(row["meta"] or "{}"), row["priority"])

    def items(self) -> list[Item]:
        with self.connection() as conn:
            return [self._item(r) for r in conn.execute("SELECT * FROM items ORDER BY id")]

    def assigned_item(self, conn: sqlite3.Connection, annotator_id: int, item_id: int) -> Item | None:
        """The item if it is in this annotator's queue, else ``None`` (others' items do not exist for them)."""
        if not 0 < item_id <= MAX_ID:
            return None
        row = conn.execute("SELECT i.* FROM items i JOIN assignments a ON a.item_id = i.id "
                           "WHERE i.id = ? AND a.annotator_id = ?", (item_id, annotator_id)).fetchone()
        return self._item(row) if row else None

    def queue(self, conn: sqlite3.Connection, annotator_id: int) -> list[int]:
        """Pending items of one annotator: highest priority first, then queue position."""
        rows = conn.execute(
            "SELECT a.item_id FROM assignments a JOIN items i ON i.id = a.item_id "
            "LEFT JOIN annotations n ON n.item_id = a.item_id AND n.annotator_id = a.annotator_id "
            "WHERE a.annotator_id = ? AND n.id IS NULL ORDER BY i.priority DESC, a.position, a.item_id",
            (annotator_id,)).fetchall()
        return [r[0] for r in rows]

    def progress(self, conn: sqlite3.Connection, annotator_id: int) -> tuple[int, int]:
        """(done, assigned) for one annotator."""
        row = conn.execute(
            "SELECT COUNT(*), COUNT(n.id) FROM assignments a LEFT JOIN annotations n "
            "ON n.item_id = a.item_id AND n.annotator_id = a.annotator_id WHERE a.annotator_id = ?",
            (annotator_id,)).fetchone()
        return row[1], row[0]

    def submitted(self, conn: sqlite3.Connection, annotator_id: int, item_id: int) -> bool:
        return conn.execute("SELECT 1 FROM annotations WHERE item_id = ? AND annotator_id = ?",
                            (item_id, annotator_id)).fetchone() is not None

    def check_assignment(self, *, overlap: float = 0.0, overlap_annotators: int = 2,
                         conn: sqlite3.Connection | None = None) -> None:
        """Refuse assignment options that :meth:`assign` cannot honour (``ValueError``), before
        anything is written: ``overlap`` outside 0…1, fewer than 2 ``overlap_annotators``, or
        more of them than there are active annotators (when annotators exist and ``overlap`` > 0)."""
        if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not 0.0 <= overlap <= 1.0:
            raise ValueError(f"overlap must be within 0…1 (a share of the new items), got {overlap}")
        if isinstance(overlap_annotators, bool) or not isinstance(overlap_annotators, int) or overlap_annotators < 2:
            raise ValueError(f"overlap_annotators must be at least 2, got {overlap_annotators}")
        if overlap > 0:
            with self._conn(conn) as c:
                active = len(self.annotators_of(c))
            if active and overlap_annotators > active:
                raise ValueError(f"overlap_annotators is {overlap_annotators} but the project has only {active} "
                                 f"active annotator{'s' if active != 1 else ''}")

    @contextmanager
    def _conn(self, conn: sqlite3.Connection | None) -> Iterator[sqlite3.Connection]:
        if conn is not None:
            yield conn
        else:
            with self.connection() as own:
                yield own

    def assign(self, *, overlap: float = 0.0, overlap_annotators: int = 2, seed: int = 0) -> dict[str, int]:
        """Give every unassigned item to annotators: a share ``overlap`` of them to
        ``overlap_annotators`` people (for agreement), the rest to one, least-loaded first.
        Bad options raise ``ValueError`` (see :meth:`check_assignment`) and assign nothing."""
        with self.connection() as conn, self.transaction(conn):
            self.check_assignment(overlap=overlap, overlap_annotators=overlap_annotators, conn=conn)
            people = [r[0] for r in conn.execute("SELECT id FROM annotators WHERE active = 1 ORDER BY id")]
            if not people:
                raise ValueError("no annotators yet: add one with `mmalign studio add-annotator`")
            new = [r[0] for r in conn.execute(
                "SELECT id FROM items WHERE id NOT IN (SELECT item_id FROM assignments) ORDER BY id")]
            shared = set(random.Random(seed).sample(new, round(overlap * len(new))))
            load = Counter({p: 0 for p in people})
            load.update(dict(conn.execute("SELECT annotator_id, COUNT(*) FROM assignments GROUP BY annotator_id")))
            position = dict(conn.execute("SELECT annotator_id, MAX(position) FROM assignments GROUP BY annotator_id"))
            rows = []
            for item in new:
                count = overlap_annotators if item in shared else 1
                for person in sorted(people, key=lambda p: (load[p], p))[:count]:
                    load[person] += 1
                    position[person] = position.get(person, 0) + 1
                    rows.append((item, person, position[person]))
            conn.executemany("INSERT INTO assignments VALUES (?, ?, ?)", rows)
        return {"items": len(new), "shared": len(shared), "assignments": len(rows)}

    def set_priorities(self, priorities: Mapping[int, float]) -> None:
        """Order queues by these scores (higher first), e.g. reward-model disagreement."""
        with self.connection() as conn, self.transaction(conn):
            conn.executemany("UPDATE items SET priority = ? WHERE id = ?",
                             [(float(p), int(i)) for i, p in priorities.items()])

    # -- annotations
    def submit(self, annotator_id: int, item_id: int, payload: Any, conn: sqlite3.Connection | None = None,
               *, as_shown: bool = False) -> int:
        """Check and store one annotation in one transaction; returns its id.

        Pair labels name answers A and B as stored, or, with ``as_shown``, as the annotator's
        page showed them (see :func:`shown_swapped`); they are stored in item order.
        Raises :class:`SubmissionError` (404 for an item not in the annotator's queue, 409 for
        a second submission of the same item, 400 for bad labels); nothing is written then.
        """
        own = conn is None
        conn = conn or self.connect()
        try:
            with self.transaction(conn):
                item = self.assigned_item(conn, annotator_id, item_id)
                if item is None:
                    raise SubmissionError(f"item {item_id} is not in your queue", status=404)
                allow_ties = conn.execute("SELECT value = '1' FROM meta WHERE key = 'allow_ties'").fetchone()
                stored = check_submission(item, payload, allow_ties=bool(allow_ties and allow_ties[0]))
                if item.kind == "correction":
                    check_whole_words(item_id, item.answer, payload)
                if item.kind == "pair" and as_shown and shown_swapped(item_id, annotator_id):
                    stored = swap_pair_labels(stored)
                if self.submitted(conn, annotator_id, item_id):
                    raise SubmissionError(f"item {item_id} is already submitted", status=409)
                # ids are never reused, dropped submissions included
                cur = conn.execute(
                    "INSERT INTO annotations(id, item_id, annotator_id, payload, created) VALUES ("
                    "(SELECT COALESCE(MAX(id), 0) + 1 FROM (SELECT id FROM annotations UNION ALL "
                    "SELECT id FROM dropped)), ?, ?, ?, ?)", (item_id, annotator_id, json.dumps(stored), now()))
                return int(cur.lastrowid)
        finally:
            if own:
                conn.close()

    def last_submission(self, conn: sqlite3.Connection, annotator_id: int) -> int | None:
        """The item of the annotator's latest submission still standing (what undo takes back)."""
        row = conn.execute("SELECT item_id FROM annotations WHERE annotator_id = ? ORDER BY id DESC LIMIT 1",
                           (annotator_id,)).fetchone()
        return None if row is None else row[0]

    def undo_last(self, conn: sqlite3.Connection, annotator_id: int) -> dict[str, int]:
        """Take back the annotator's latest submission, in one transaction: it moves to ``dropped``
        (by the annotator, reason :data:`UNDONE`, reopened) and the item goes to the front of
        their queue. Repeated, it walks back through earlier submissions. Returns the submission
        and item ids; :class:`SubmissionError` (409) when there is nothing left to undo."""
        with self.transaction(conn):
            row = conn.execute("SELECT n.*, a.name FROM annotations n JOIN annotators a ON a.id = n.annotator_id "
                               "WHERE n.annotator_id = ? ORDER BY n.id DESC LIMIT 1", (annotator_id,)).fetchone()
            if row is None:
                raise SubmissionError("nothing to undo: you have no submission left to take back", status=409)
            conn.execute("INSERT INTO dropped VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                         (row["id"], row["item_id"], annotator_id, row["payload"], row["created"], now(), row["name"],
                          UNDONE))
            conn.execute("DELETE FROM annotations WHERE id = ?", (row["id"],))
            first = conn.execute("SELECT MIN(position) FROM assignments WHERE annotator_id = ?",
                                 (annotator_id,)).fetchone()[0]
            conn.execute("UPDATE assignments SET position = ? WHERE item_id = ? AND annotator_id = ?",
                         (first - 1, row["item_id"], annotator_id))
        return {"submission": row["id"], "item": row["item_id"]}

    def undone_payload(self, conn: sqlite3.Connection, annotator_id: int, item_id: int) -> Any:
        """The labels of the annotator's last undone submission on a pending item (to fill the page
        in again), as stored; ``None`` when there is none or the item is submitted again."""
        if self.submitted(conn, annotator_id, item_id):
            return None
        row = conn.execute("SELECT payload, reason FROM dropped WHERE item_id = ? AND annotator_id = ? "
                           "ORDER BY dropped_at DESC, id DESC LIMIT 1", (item_id, annotator_id)).fetchone()
        return _loads(row["payload"]) if row is not None and row["reason"] == UNDONE else None

    def skip(self, conn: sqlite3.Connection, annotator_id: int, item_id: int) -> None:
        """Move a pending item to the end of the annotator's queue."""
        with self.transaction(conn):
            if self.assigned_item(conn, annotator_id, item_id) is None:
                raise SubmissionError(f"item {item_id} is not in your queue", status=404)
            last = conn.execute("SELECT MAX(position) FROM assignments WHERE annotator_id = ?",
                                (annotator_id,)).fetchone()[0]
            conn.execute("UPDATE assignments SET position = ? WHERE item_id = ? AND annotator_id = ?",
                         (last + 1, item_id, annotator_id))

    def annotations(self) -> list[Annotation]:
        """Every submission not dropped, as stored (see :meth:`submissions` for the review view)."""
        with self.connection() as conn:
            rows = conn.execute("SELECT n.item_id, a.name, n.payload, n.created FROM annotations n "
                                "JOIN annotators a ON a.id = n.annotator_id ORDER BY n.item_id, n.id").fetchall()
        return [Annotation(r[0], r[1], _loads(r[2]), r[3]) for r in rows]

    def submissions(self, *, state: str | None = None, item: int | None = None,
                    annotator: str | None = None) -> list[Submission]:
        """Submissions for review, oldest first: each with today's verdict on it and its drop record.

        ``state`` keeps only ``valid``, ``invalid`` (stored before today's checks existed and
        refused by them: the export skips these) or ``dropped`` ones; ``item`` and
        ``annotator`` (a name) filter too.
        """
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        if item is not None and not 0 < item <= MAX_ID:
            raise ValueError(f"no item {item} in the project")
        with self.connection() as conn:
            names = {r[0]: r[1] for r in conn.execute("SELECT id, name FROM annotators")}
            if annotator is not None and annotator not in names.values():
                raise ValueError(f"no annotator named {annotator!r}")
            if item is not None and not conn.execute("SELECT 1 FROM items WHERE id = ?", (item,)).fetchone():
                raise ValueError(f"no item {item} in the project")
            items = {i.id: i for i in (self._item(r) for r in conn.execute("SELECT * FROM items"))}
            kept = conn.execute("SELECT id, item_id, annotator_id, payload, created, NULL, NULL, NULL, NULL "
                                "FROM annotations").fetchall()
            gone = conn.execute("SELECT id, item_id, annotator_id, payload, created, dropped_at, dropped_by, reason, "
                                "reopened FROM dropped").fetchall()
        out = []
        for row in sorted([*kept, *gone], key=lambda r: r[0]):
            sub_id, item_id, annotator_id, raw, created, at, by, reason, reopened = tuple(row)
            if (item is not None and item_id != item) or (annotator is not None and names[annotator_id] != annotator):
                continue
            payload = _loads(raw)
            try:
                check_submission(items[item_id], payload)
                problem = None
            except SubmissionError as err:
                problem = str(err)
            drop = Drop(at, by, reason, bool(reopened)) if at is not None else None
            found = Submission(sub_id, item_id, items[item_id].kind, names[annotator_id], payload, created, problem,
                               drop)
            if state is None or found.state == state:
                out.append(found)
        return out

    def drop_submissions(self, ids: Sequence[int], reason: str, *, by: str | None = None,
                         reopen: bool = False) -> list[dict[str, Any]]:
        """Drop submissions (all or none, in one transaction); returns what became of each item.

        A dropped submission leaves the export and the agreement but is kept, with ``by``
        (default: the user running this), the time and ``reason``, in the ``dropped`` table
        (:meth:`submissions` lists it). With ``reopen`` the item goes back into the same
        annotator's queue for a new submission. Otherwise that assignment ends, and an item
        left with no submission and no pending assignment goes to the least-loaded other
        active annotator (or stays unassigned when there is none, for ``assign`` later).
        Unknown or already dropped ids and an empty reason raise ``ValueError``.
        """
        reason = reason.strip() if isinstance(reason, str) else ""
        if not reason:
            raise ValueError("give a reason for dropping (it is recorded with the submission)")
        by = (by or _user()).strip() or "unknown"
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise ValueError("no submission id given")
        results = []
        with self.connection() as conn, self.transaction(conn):
            for sub_id in ids:
                if isinstance(sub_id, bool) or not isinstance(sub_id, int) or not 0 < sub_id <= MAX_ID:
                    raise ValueError(f"no submission {sub_id!r}")
                row = conn.execute("SELECT n.*, a.name, a.active FROM annotations n JOIN annotators a "
                                   "ON a.id = n.annotator_id WHERE n.id = ?", (sub_id,)).fetchone()
                if row is None:
                    old = conn.execute("SELECT dropped_at, dropped_by, reason FROM dropped WHERE id = ?",
                                       (sub_id,)).fetchone()
                    if old:
                        raise ValueError(f"submission {sub_id} was already dropped ({old[0]} by {old[1]}: {old[2]})")
                    raise ValueError(f"no submission {sub_id} (see `mmalign studio submissions list`)")
                item_id, annotator_id = row["item_id"], row["annotator_id"]
                if reopen and not row["active"]:
                    raise ValueError(f"submission {sub_id}: annotator {row['name']!r} was removed, so the item cannot "
                                     "be reopened for them; drop it without reopening to queue it for someone else")
                conn.execute("INSERT INTO dropped VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (sub_id, item_id, annotator_id, row["payload"], row["created"], now(), by, reason,
                              int(reopen)))
                conn.execute("DELETE FROM annotations WHERE id = ?", (sub_id,))
                result = {"submission": sub_id, "item": item_id, "annotator": row["name"], "reopened": reopen,
                          "queued_for": row["name"] if reopen else None, "other_submissions": 0}
                if not reopen:
                    conn.execute("DELETE FROM assignments WHERE item_id = ? AND annotator_id = ?",
                                 (item_id, annotator_id))
                    result["other_submissions"] = conn.execute(
                        "SELECT COUNT(*) FROM annotations WHERE item_id = ?", (item_id,)).fetchone()[0]
                    pending = [r[0] for r in conn.execute(
                        "SELECT a.name FROM assignments s JOIN annotators a ON a.id = s.annotator_id "
                        "WHERE s.item_id = ? AND a.active = 1 AND NOT EXISTS (SELECT 1 FROM annotations n "
                        "WHERE n.item_id = s.item_id AND n.annotator_id = s.annotator_id)", (item_id,))]
                    if pending:
                        result["queued_for"] = pending[0]
                    elif not result["other_submissions"]:
                        result["queued_for"] = self._requeue(conn, item_id)
                results.append(result)
        return results

    def drop_submission(self, submission_id: int, reason: str, *, by: str | None = None,
                        reopen: bool = False) -> dict[str, Any]:
        """:meth:`drop_submissions` for one submission."""
        return self.drop_submissions([submission_id], reason, by=by, reopen=reopen)[0]

    def _requeue(self, conn: sqlite3.Connection, item_id: int) -> str | None:
        """Give an item to the least-loaded active annotator who has not had a submission on it dropped."""
        row = conn.execute(
            "SELECT a.id, a.name, (SELECT COUNT(*) FROM assignments s WHERE s.annotator_id = a.id) AS load, "
            "(SELECT COALESCE(MAX(position), 0) FROM assignments s WHERE s.annotator_id = a.id) AS last "
            "FROM annotators a WHERE a.active = 1 AND a.id NOT IN (SELECT annotator_id FROM dropped WHERE item_id = ?) "
            "AND a.id NOT IN (SELECT annotator_id FROM assignments WHERE item_id = ?) ORDER BY load, a.id LIMIT 1",
            (item_id, item_id)).fetchone()
        if row is None:
            return None
        conn.execute("INSERT INTO assignments VALUES (?, ?, ?)", (item_id, row["id"], row["last"] + 1))
        return row["name"]

    def agreement(self) -> dict[str, Any]:
        """:func:`mmalign.studio.agreement.agreement_report` over every valid submission (not dropped)."""
        from mmalign.studio.agreement import agreement_report

        corrections: dict[int, dict[str, list[list[int]]]] = {}
        pairs: dict[int, dict[str, dict[str, Any]]] = {}
        for note in self.submissions(state="valid"):
            if note.kind == "correction":
                spans = [[c["start"], c["end"]] for c in note.payload["corrections"]]
                corrections.setdefault(note.item_id, {})[note.annotator] = spans
            else:
                pairs.setdefault(note.item_id, {})[note.annotator] = note.payload
        return agreement_report(corrections, pairs)

    def status(self) -> dict[str, Any]:
        """Counts for the command line: items by kind, annotators with done / assigned, submissions by state."""
        with self.connection() as conn:
            kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind").fetchall())
            unassigned = conn.execute("SELECT COUNT(*) FROM items WHERE id NOT IN "
                                      "(SELECT item_id FROM assignments)").fetchone()[0]
            people = {a.name: self.progress(conn, a.id) for a in self.annotators_of(conn)}
        states = Counter(sub.state for sub in self.submissions())
        return {"items": kinds, "unassigned": unassigned, "annotators": people,
                "submissions": {state: states.get(state, 0) for state in STATES}}

    @staticmethod
    def annotators_of(conn: sqlite3.Connection) -> list[Annotator]:
        return [Annotator(r[0], r[1], bool(r[2])) for r in conn.execute(
            "SELECT id, name, owner FROM annotators WHERE active = 1 ORDER BY id")]


def item_fingerprint(kind: str, images: Sequence[str], prompt: Any, answer: str, answer_b: str | None) -> str:
    """What makes two items the same: kind, image contents (their hashed file names), prompt, answers."""
    key = [kind, [Path(rel).stem for rel in images], prompt, answer, answer_b]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"


def integrity_check(path: str | Path) -> str:
    """SQLite's own check of the project's database file (``"ok"`` when intact)."""
    conn = sqlite3.connect(Path(path) / DB_NAME)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def image_bytes(values: Sequence[Any] | None) -> list[bytes]:
    """Encoded bytes of a dataset row's images (``{"bytes", "path"}`` dicts, paths or PIL images)."""
    from mmalign.data_builders.images import ImageOptions, load_image_bytes

    return [load_image_bytes(v, ImageOptions()) for v in values or []]
