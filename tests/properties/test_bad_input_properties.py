"""Property tests of the bad-input contract (docs/robustness.md, "Bad input").

Generated garbage — records with a field of the wrong type, missing or made of invisible
characters, whole files of random JSON, JSON Lines, random bytes, bytes that are not UTF-8,
JSON nested thousands of levels deep, folders of shards, dataset folders with odd columns
and corrupt metadata — is fed to every importer (``mmalign data import FORMAT`` for each
format of ``mmalign data import --help``) and to ``mmalign data validate``. Whatever comes
in, the command either succeeds with a valid dataset or exits with code 2 and exactly one
``error:`` line naming the input file (and its row and field when a row is at fault):
never a traceback, nothing written to ``--out``, the input left byte for byte as it was.
(``data validate`` reports invalid rows of a readable dataset with exit code 1.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmalign.cli import main
from mmalign.data_builders.importers import IMPORTERS
from mmalign.data_builders.storage import load_preference_dataset

#: Examples per property; each runs a command in-process (a few hundredths of a second).
EXAMPLES = int(os.environ.get("MMALIGN_PROPERTY_EXAMPLES", "150"))
#: Fixed examples by default (the same ones on every run); MMALIGN_PROPERTY_RANDOM=1 draws new ones.
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("MMALIGN_PROPERTY_RANDOM"),
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TURN = [{"from": "human", "value": "<image>\nwhat is on the table?"}]
VALID = {
    "rlhf-v": {"text": json.dumps({"question": "what is it?", "chosen": "a red cup on a table.",
                                   "rejected": "a blue cup on a table."}), "image": "a.png", "idx": 1},
    "rlaif-v": {"question": "what is it?", "chosen": "a red cup.", "rejected": "a cat.", "image": "a.png",
                "idx": 1, "ds_name": "x"},
    "llava-rlhf": {"id": 1, "image": "a.png", "conversations": TURN, "output_1": {"from": "llava", "value": "a cup."},
                   "output_2": {"from": "llava", "value": "a cat."}, "preference": 1},
    "beavertails-v": {"question": "is it safe?", "image": "a.png", "response_1": "yes.", "response_2": "no.",
                      "more_helpful_response_id": 1, "safer_response_id": 2, "is_response_1_safe": True,
                      "is_response_2_safe": "no", "response_1_harmless_rate": 1, "response_2_harmless_rate": -2,
                      "response_1_helpful_rate": 2, "response_2_helpful_rate": 0, "category": "c"},
    "pku-saferlhf": {"prompt": "is it safe?", "response_0": "yes.", "response_1": "no.", "better_response_id": 0,
                     "safer_response_id": 1, "is_response_0_safe": True, "is_response_1_safe": False},
    "trl": {"prompt": "what is it?", "images": ["a.png"], "chosen": "a red cup.", "rejected": "a cat.",
            "chosen_spans": [[2, 5]], "meta": {"id": 1}},
    "llava-conversations": {"id": 1, "image": "a.png", "conversations": [*TURN, {"from": "gpt", "value": "a cup."}]},
}

INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u202e\u2066\u3164 \t\n"
texts = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=INVISIBLE, min_size=1, max_size=6),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=8),  # surrogates, controls, unassigned
    st.sampled_from(["<image>", "../a.png", "/etc/passwd", "a.png\x00", "chosen", "rejected", "1", "yes", "NaN",
                     "{", "[1, 2]", "a" * 300]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=8)


@st.composite
def garbage_record(draw, fmt: str):
    """A valid record of ``fmt`` with one to three fields deleted, retyped or garbled, or extra keys."""
    record = json.loads(json.dumps(VALID[fmt]))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(st.sampled_from(sorted(record) or ["x"]), texts))
        action = draw(st.sampled_from(["delete", "value", "text", "nest"]))
        if action == "delete":
            record.pop(key, None)
        elif action == "value":
            record[key] = draw(json_values)
        elif action == "text":
            record[key] = draw(texts)
        else:
            record[key] = _nested(draw(st.integers(90, 130)))
    return record


def _nested(depth: int):
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def _dumps(value) -> str:
    return json.dumps(value)  # ensure_ascii: lone surrogates become \ud800 escapes, as JSON allows


@st.composite
def garbage_input(draw, fmt: str):
    """(relative path, {file name: bytes}) of one input: a file, or a folder of shards."""
    kind = draw(st.sampled_from(["jsonl", "json", "shards", "random-json", "bytes", "not-utf8", "deep", "empty"]))
    rows = draw(st.lists(st.one_of(garbage_record(fmt), st.just(VALID[fmt]), json_values), min_size=1, max_size=4))
    if kind == "jsonl":
        return "in.jsonl", {"in.jsonl": "".join(_dumps(r) + "\n" for r in rows).encode()}
    if kind == "json":
        return "in.json", {"in.json": _dumps(rows).encode()}
    if kind == "shards":
        return "shards", {"shards/part-0.jsonl": (_dumps(VALID[fmt]) + "\n").encode(),
                          "shards/part-1.jsonl": "".join(_dumps(r) + "\n" for r in rows).encode()}
    if kind == "random-json":
        return "in.json", {"in.json": _dumps(draw(json_values)).encode()}
    if kind == "bytes":
        name = "in." + draw(st.sampled_from(["json", "jsonl", "parquet"]))
        return name, {name: draw(st.binary(max_size=64))}
    if kind == "not-utf8":
        data = "".join(_dumps(r) + "\n" for r in rows).encode()
        at = draw(st.integers(0, len(data)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        return "in.jsonl", {"in.jsonl": data[:at] + bad + data[at:]}
    if kind == "deep":
        depth = draw(st.integers(100, 20_000))
        name = "in." + draw(st.sampled_from(["json", "jsonl"]))
        return name, {name: ("[" * depth + "]" * depth).encode()}
    return "in.jsonl", {"in.jsonl": b"\n\n" if draw(st.booleans()) else b""}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process; any exception that escapes it fails the property."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException:  # noqa: BLE001 - a traceback is what the contract forbids
            pytest.fail(f"{argv} raised instead of one error line:\n{traceback.format_exc()}")
    return code, out.getvalue(), err.getvalue()


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def check_refusal(code: int, out: str, err: str, names: list[str]) -> str:
    """Exit 2, exactly one ``error:`` line that names one of ``names``, no traceback."""
    assert code == 2, (code, out, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    assert any(name in lines[0] for name in names), lines[0]
    return lines[0]


#: Per property: examples tried, held, and how they ended (written out with MMALIGN_PROPERTY_COUNTS=FILE).
TALLY: dict[str, dict[str, int]] = {}


def tally(key: str, held: bool, code: int) -> None:
    counts = TALLY.setdefault(key, {"tried": 0, "held": 0})
    counts["tried"] += 1
    counts["held"] += held
    counts[f"exit {code}"] = counts.get(f"exit {code}", 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if os.environ.get("MMALIGN_PROPERTY_COUNTS"):
        Path(os.environ["MMALIGN_PROPERTY_COUNTS"]).write_text(json.dumps(TALLY, indent=2))


# ---------------------------------------------------------------------------- importers
@pytest.mark.parametrize("fmt", list(IMPORTERS))
@PROPERTY
@given(data=st.data())
def test_every_importer_takes_garbage_to_a_dataset_or_one_error_line(fmt, data):
    source, files = data.draw(garbage_input(fmt))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "input"
        root.mkdir()
        Image.new("RGB", (8, 8), "red").save(root / "a.png")
        for name, content in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
        before = snapshot(root)
        out = Path(tmp) / "out"
        argv = ["data", "import", fmt, str(root / source), "--out", str(out), "--images", str(root)]
        code, stdout, stderr = run_cli(argv)
        held = False
        try:
            if code == 0:
                assert not error_lines(stderr)
                load_preference_dataset(out)  # strict: every row valid
            else:
                names = [source] + [Path(n).name for n in files]
                line = check_refusal(code, stdout, stderr, names)
                assert not out.exists()
                assert not [p for p in out.parent.iterdir() if p.name.startswith((".tmp-out", ".chunks-out"))]
                if re.search(r" row \d+", line):  # a row at fault: its file is named right before it
                    assert re.search(r"(in\.jsonl?|part-\d\.jsonl|input) row \d+", line), line
            assert snapshot(root) == before
            held = True
        finally:
            tally(f"import {fmt}", held, code)


# ---------------------------------------------------------------------------- data validate
COLUMN_TYPES = {
    "text": texts,
    "int": st.integers(-5, 5),
    "bool": st.booleans(),
    "texts": st.lists(texts, max_size=2),
    "spans": st.lists(st.lists(st.integers(-3, 40), min_size=0, max_size=3), max_size=2),
}
COLUMNS = ["images", "prompt", "chosen", "rejected", "chosen_spans", "facts", "more_helpful", "chosen_is_safe",
           "chosen_harmless_rate", "meta", "source", "other"]


@st.composite
def garbage_dataset(draw):
    """Columns (canonical names or not) of one type each, rows of drawn values, images as
    encoded bytes that may be garbage."""
    n = draw(st.integers(0, 3))  # 0: a folder without rows
    names = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6, unique=True))
    columns = {}
    if draw(st.booleans()):  # the required columns, as text that is often fine
        for name in ("prompt", "chosen", "rejected"):
            columns[name] = [draw(st.one_of(st.sampled_from(["a red cup.", "a cat.", "what is it?"]), texts))
                             for _ in range(n)]
        names = [name for name in names if name not in columns]
    for name in names:
        if name == "images":
            png = io.BytesIO()
            Image.new("RGB", (4, 4)).save(png, format="PNG")
            image = st.one_of(st.just(png.getvalue()), st.binary(max_size=24))
            columns[name] = [draw(st.lists(image, max_size=2)) for _ in range(n)]
            continue
        values = COLUMN_TYPES[draw(st.sampled_from(sorted(COLUMN_TYPES)))]
        columns[name] = [draw(values) for _ in range(n)]
    return columns


@st.composite
def damage(draw):
    """What to do to the saved folder: nothing, or break one of its files."""
    return draw(st.sampled_from(["none", "truncate-arrow", "delete-arrow", "garble-state", "garble-info",
                                 "garble-manifest", "manifest-rows", "random-file", "empty-folder"])), \
        draw(st.binary(min_size=0, max_size=40))


@PROPERTY
@given(columns=garbage_dataset(), broken=damage())
def test_data_validate_reports_or_refuses_in_one_line(columns, broken):
    from datasets import Dataset

    how, junk = broken
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds"
        try:
            Dataset.from_dict(columns).save_to_disk(str(folder))
        except Exception:  # noqa: BLE001 - arrow cannot store these columns: a folder of junk instead
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            (folder / "junk.json").write_bytes(junk)
        arrow = sorted(folder.glob("*.arrow"))
        if how == "truncate-arrow" and arrow:
            os.truncate(arrow[0], arrow[0].stat().st_size * len(junk) // 41)
        elif how == "delete-arrow" and arrow:
            arrow[0].unlink()
        elif how in ("garble-state", "garble-info", "garble-manifest"):
            name = {"garble-state": "state.json", "garble-info": "dataset_info.json",
                    "garble-manifest": "mmalign_dataset.json"}[how]
            (folder / name).write_bytes(junk)
        elif how == "manifest-rows":
            (folder / "mmalign_dataset.json").write_text(json.dumps({"rows": len(junk)}))
        elif how == "random-file":
            (folder / "data-extra.arrow").write_bytes(junk)
        elif how == "empty-folder":
            shutil.rmtree(folder)
            folder.mkdir()
        before = snapshot(folder)
        code, stdout, stderr = run_cli(["data", "validate", str(folder)])
        held = False
        try:
            if code in (0, 1):  # a readable dataset: valid, or its invalid rows listed
                assert not error_lines(stderr) and "Traceback" not in stderr
                assert ("ok: all" in stdout) if code == 0 else ("INVALID:" in stdout)
            else:
                check_refusal(code, stdout, stderr, [str(folder)])
            assert snapshot(folder) == before
            held = True
        finally:
            tally("data validate", held, code)
