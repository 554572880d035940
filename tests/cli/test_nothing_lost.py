"""Bad input ends in one ``error:`` line naming the file, row and field, exit code 2, no
traceback, nothing written and no input touched (docs/robustness.md, "Bad input").

Every test here failed before the fix it guards: a traceback or exit code 1, an error that
named no file, a garbage record accepted, a cache file written into the input folder.
"""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image

from mmalign.cli import main
from mmalign.data_builders.schema import RecordError, features, terminal_safe, validate_record
from mmalign.data_builders.storage import (
    load_preference_dataset,
    open_dataset,
    save_preference_dataset,
)

GOOD = {"prompt": "what is this?", "images": ["a.png"], "chosen": "a red cup.", "rejected": "a cat."}


# ---------------------------------------------------------------------------- helpers
def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → sha256): a folder that reads left untouched
    has the same snapshot before and after."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list, out: Path | None = None) -> str:
    """Run a command that must refuse its input; return its one error line."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith((f".tmp-{out.name}", f".chunks-{out.name}"))]
    return lines[0]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def data(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    return tmp_path


def records(n: int = 3) -> list[dict]:
    return [{"images": [Image.new("RGB", (16, 16), ["red", "blue", "green"][i % 3])], "prompt": "what is it?",
             "chosen": f"a cup number {i}.", "rejected": "a cat.", "facts": ["a cup."]} for i in range(n)]


@pytest.fixture()
def pairs(tmp_path):
    save_preference_dataset(records(), tmp_path / "pairs")
    return tmp_path / "pairs"


@pytest.fixture()
def zero_rows(tmp_path):
    """A dataset folder with the canonical columns and no rows (``save_to_disk`` writes no data file)."""
    Dataset.from_dict({k: [] for k in features()}, features=features()).save_to_disk(str(tmp_path / "zero"))
    return tmp_path / "zero"


@pytest.fixture(scope="module")
def reward_model(save_scorers):
    return save_scorers(0.0) / "reward"


@pytest.fixture(scope="module")
def wide_llava(tmp_path_factory):
    """A tiny LLaVA whose hidden size (128) differs from the session's tiny LLaVA (64)."""
    from mmalign.models.tiny import tiny_llava

    torch.manual_seed(0)
    model, processor = tiny_llava(hidden=128)
    out = tmp_path_factory.mktemp("wide") / "llava128"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora(tiny_dirs, tmp_path_factory):
    from mmalign.models import load_adapter
    from mmalign.qlora import LoraSettings

    adapter = load_adapter(tiny_dirs["llava"])
    adapter.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    return adapter.save_adapter(tmp_path_factory.mktemp("lora") / "adapter")


def truncated_copy(folder: Path, file: str, dest: Path) -> Path:
    import shutil

    shutil.copytree(folder, dest)
    target = dest / file
    os.truncate(target, target.stat().st_size // 2)
    return dest


# ---------------------------------------------------------------------------- 1. tracebacks
def test_zero_row_dataset_is_refused_where_it_is_opened(capsys, zero_rows, tmp_path):
    """Was an IndexError traceback from datasets in every command that opened the folder."""
    assert "zero: the dataset has no rows" in refused(capsys, ["data", "validate", zero_rows])
    assert "zero: the dataset has no rows" in refused(capsys, ["data", "inspect", zero_rows])
    assert "the dataset has no rows" in refused(capsys, ["data", "build", "safety-pairs", zero_rows, "--by",
                                                         "helpful", "--out", tmp_path / "o"], tmp_path / "o")
    assert main(["studio", "init", "--project", str(tmp_path / "proj")]) == 0
    assert "the dataset has no rows" in refused(capsys, ["studio", "load", "--project", tmp_path / "proj",
                                                         "--from-dataset", zero_rows])
    with pytest.raises(ValueError, match="the dataset has no rows"):  # what the trainers and studio call
        load_preference_dataset(zero_rows)
    Dataset.from_dict({"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}).select([]).save_to_disk(
        str(tmp_path / "emptied"))
    with pytest.raises(ValueError, match="the dataset has no rows"):
        open_dataset(tmp_path / "emptied")


def test_zero_row_dataset_in_score(capsys, zero_rows, reward_model, tmp_path):
    line = refused(capsys, ["score", "--model", reward_model, "--data", zero_rows, "--out", tmp_path / "o"],
                   tmp_path / "o")
    assert "zero: the dataset has no rows" in line


def test_adapter_for_another_base_size_names_both_bases(capsys, lora, wide_llava, tmp_path):
    """Was a RuntimeError (exit 1) listing every mismatched tensor."""
    line = refused(capsys, ["export", "--merge", "--base", wide_llava, "--adapter", lora, "--out", tmp_path / "m"],
                   tmp_path / "m")
    assert f"adapter {lora} does not fit the base {wide_llava}" in line
    made_for = json.loads((lora / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert f"(it was made for {made_for})" in line and "layer shapes differ" in line


def test_adapter_for_another_family_is_refused(capsys, lora, tiny_dirs, tmp_path):
    """Was accepted: a LLaVA adapter merged into a Qwen2-VL base whose layer names and shapes match."""
    line = refused(capsys, ["export", "--merge", "--base", tiny_dirs["qwen2_vl"], "--adapter", lora,
                            "--out", tmp_path / "m"], tmp_path / "m")
    assert f"adapter {lora} was made for the llava model" in line and "not for the qwen2_vl model" in line


def test_reward_model_on_another_base_in_score(capsys, reward_model, wide_llava, pairs, tmp_path):
    line = refused(capsys, ["score", "--model", reward_model, "--base", wide_llava, "--data", pairs,
                            "--out", tmp_path / "o"], tmp_path / "o")
    assert f"adapter {reward_model} does not fit the base {wide_llava}" in line and "it was made for" in line


def test_truncated_adapter_file_is_named(capsys, lora, tiny_dirs, tmp_path):
    """Was a SafetensorError traceback."""
    cut = truncated_copy(lora, "adapter_model.safetensors", tmp_path / "cut")
    line = refused(capsys, ["export", "--merge", "--base", tiny_dirs["llava"], "--adapter", cut,
                            "--out", tmp_path / "m"], tmp_path / "m")
    assert f"{cut / 'adapter_model.safetensors'}: not a readable safetensors file, truncated or corrupt" in line


def test_truncated_reward_head_is_named(capsys, reward_model, pairs, tmp_path):
    cut = truncated_copy(reward_model, "scalar_head.safetensors", tmp_path / "cut")
    line = refused(capsys, ["score", "--model", cut, "--data", pairs, "--out", tmp_path / "o"], tmp_path / "o")
    assert f"{cut / 'scalar_head.safetensors'}: not a readable safetensors file" in line


def test_score_reads_images_as_the_canonical_reader_does(capsys, reward_model, tmp_path, data):
    """Was a TypeError traceback for every images column that was not a decoded Image column."""
    png = (data / "a.png").read_bytes()
    base = {"prompt": ["what is it?"] * 2, "chosen": ["a red cup."] * 2, "rejected": ["a cat."] * 2}
    Dataset.from_dict({**base, "images": [[{"bytes": png, "path": None}]] * 2}).save_to_disk(str(tmp_path / "dicts"))
    Dataset.from_dict({**base, "images": [[png]] * 2}).save_to_disk(str(tmp_path / "raw"))
    Dataset.from_dict({**base, "images": [["a.png"]] * 2}).save_to_disk(str(tmp_path / "paths"))
    for name in ("dicts", "raw"):
        assert main(["score", "--model", str(reward_model), "--data", str(tmp_path / name),
                     "--out", str(tmp_path / f"scored-{name}")]) == 0
    capsys.readouterr()
    scored = [open_dataset(tmp_path / f"scored-{name}")["reward_chosen"] for name in ("dicts", "raw")]
    assert scored[0] == pytest.approx(scored[1])
    line = refused(capsys, ["score", "--model", reward_model, "--data", tmp_path / "paths",
                            "--out", tmp_path / "o"], tmp_path / "o")
    assert "paths row 0, field 'images[0]': image path 'a.png' given but no image folder is set" in line


# ---------------------------------------------------------------------------- 2. reads never write
def test_score_writes_nothing_into_its_input(reward_model, pairs, tmp_path, capsys):
    """``Dataset.map`` wrote a full-size cache-*.arrow into the input folder on every run."""
    before = snapshot(pairs)
    for run in range(2):
        assert main(["score", "--model", str(reward_model), "--data", str(pairs),
                     "--out", str(tmp_path / f"scored{run}")]) == 0
    assert snapshot(pairs) == before
    scored = load_preference_dataset(tmp_path / "scored0")
    assert len(scored["reward_chosen"]) == 3 and scored["reward_chosen"] == load_preference_dataset(
        tmp_path / "scored1")["reward_chosen"]


def test_reading_commands_leave_their_input_as_it_was(pairs, tmp_path, capsys):
    before = snapshot(pairs)
    assert main(["data", "validate", str(pairs)]) == 0
    assert main(["data", "inspect", str(pairs), "--diff", "--html", str(tmp_path / "p.html")]) == 0
    assert main(["data", "import", "trl", str(pairs), "--out", str(tmp_path / "again")]) == 0
    load_preference_dataset(pairs)
    assert snapshot(pairs) == before


# ---------------------------------------------------------------------------- 3. garbage accepted
@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff\u200b", "\u200d\u2060 \u00ad", "\u3164", "\u202e\u2066"])
def test_invisible_responses_are_empty(capsys, data, invisible):
    """Passed the non-empty check (str.strip keeps format characters)."""
    path = jsonl(data / "pairs.jsonl", [GOOD, {**GOOD, "chosen": invisible}])
    line = refused(capsys, ["data", "import", "trl", path, "--out", data / "out"], data / "out")
    assert "pairs.jsonl row 1, field 'chosen': has no visible text (only invisible characters: U+" in line


@pytest.mark.parametrize("change, field, message", [
    ({"rejected": "a red\u200b cup. "}, "rejected", "reads the same as 'chosen'"),
    ({"chosen": "a <image> cup."}, "chosen", "contains the image placeholder <image>"),
    ({"facts": ["see <image>"]}, "facts[0]", "contains the image placeholder"),
    ({"facts": ["\ufeff"]}, "facts[0]", "has no visible text"),
    ({"chosen": "a \ud800 cup."}, "chosen", "unpaired surrogate"),
    ({"meta": {"score": float("nan")}}, "meta", "not JSON-serialisable"),
    ({"meta": {"note": "\udc00"}}, "meta", "unpaired surrogate"),
    ({"more_helpful": ["chosen"]}, "more_helpful", "expected 'chosen' or 'rejected'"),
    ({"prompt": [{"role": ["user"], "content": "hi"}]}, "prompt[0].role", "expected one of"),
    ({"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "<image> hi"}]}]},
     "prompt[0].content[1].text", "contains the image placeholder"),
    ({"chosen": [{"role": "assistant", "content": [{"type": "text", "text": 5}]}]}, "chosen[0].content[0].text",
     "expected a string"),
    ({"prompt": [{"role": "user", "content": [{"type": "text", "text": "\u200b"}]}], "images": []}, "prompt",
     "has no visible text and no image"),
])
def test_fields_are_checked_for_meaning(data, change, field, message):
    record = {**GOOD, "images": [(data / "a.png").read_bytes()], **change}
    with pytest.raises(RecordError) as info:
        validate_record(record, row=4)
    assert info.value.field == field and info.value.row == 4
    assert message in str(info.value)


@pytest.mark.parametrize("image, message", [
    ({"bytes": "not bytes"}, "image dict 'bytes' must be bytes, got str"),
    ({"bytes": 10}, "image dict 'bytes' must be bytes, got int"),
    ({"path": ["a.png"]}, "image dict 'path' must be a string"),
    ("a\x00.png", "is not a usable path"),
    ("x" * 5000 + ".png", "cannot be read"),
])
def test_odd_image_references_are_refused_with_the_row(capsys, data, image, message):
    """Were a TypeError traceback, bytes(10) accepted as an image, an error naming no row."""
    path = jsonl(data / "pairs.jsonl", [GOOD, {**GOOD, "images": [image]}])
    line = refused(capsys, ["data", "import", "trl", path, "--out", data / "out"], data / "out")
    assert "pairs.jsonl row 1, field 'images[0]'" in line and message in line


@pytest.mark.parametrize("row_id, ok", [(7, True), ("a-7", True), (7.0, True), ([1, 2], False), ({"a": 1}, False)])
def test_record_ids_are_strings_or_numbers(capsys, data, row_id, ok):
    row = {"id": row_id, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat?"}],
           "output_1": {"from": "llava", "value": "a cup."}, "output_2": {"from": "llava", "value": "a cat."},
           "preference": 1}
    path = data / "prefs.json"
    path.write_text(json.dumps([row]))
    if ok:
        assert main(["data", "import", "llava-rlhf", str(path), "--out", str(data / "out")]) == 0
    else:
        line = refused(capsys, ["data", "import", "llava-rlhf", path, "--out", data / "out"], data / "out")
        assert "prefs.json row 0, field 'id': expected a string or integer id" in line


def test_trl_meta_that_is_not_an_object(capsys, data):
    """A list (or broken JSON) in 'meta' beside other columns was a TypeError traceback."""
    path = jsonl(data / "pairs.jsonl", [{**GOOD, "meta": [1], "extra": 1}])
    line = refused(capsys, ["data", "import", "trl", path, "--out", data / "out"], data / "out")
    assert "pairs.jsonl row 0, field 'meta': expected a JSON object, got list" in line


# ---------------------------------------------------------------------------- 4. errors name the place
def test_non_utf8_input_names_file_offset_and_line(capsys, data):
    (data / "pairs.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    line = refused(capsys, ["data", "import", "trl", data / "pairs.jsonl", "--out", data / "out"], data / "out")
    offset = len(json.dumps(GOOD)) + 1 + len('{"prompt": "caf')
    assert f"pairs.jsonl row 1: line 2 is not UTF-8 text: byte 0xe9 at offset {offset}" in line
    (data / "pairs.json").write_bytes(b'[\n{"prompt": "\xff"}]')
    line = refused(capsys, ["data", "import", "trl", data / "pairs.json", "--out", data / "out"], data / "out")
    assert "pairs.json: not UTF-8 text: byte 0xff at offset 14 (line 2)" in line


def test_non_utf8_record_file_names_file(capsys, data, tmp_path):
    from mmalign.io import read_json, read_records

    (data / "q.jsonl").write_bytes(b'{"a": 1}\n{"a": "\xc3"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl: not UTF-8 text: byte 0xc3 at offset 16 \(line 2\)"):
        read_records(data / "q.jsonl")
    (data / "c.json").write_bytes(b"\xfe\xff")
    with pytest.raises(ValueError, match="c.json: not UTF-8 text"):
        read_json(data / "c.json")


@pytest.mark.parametrize("name, text", [
    ("deep.json", "[" * 100_000 + "]" * 100_000),
    ("deep.jsonl", json.dumps(GOOD) + "\n" + '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
    ("nested.jsonl", json.dumps({**GOOD, "meta": json.loads("[" * 150 + "]" * 150)}) + "\n"),
    ("nested.json", json.dumps([{**GOOD, "extra": json.loads("[" * 150 + "]" * 150)}])),
])
def test_deep_nesting_is_refused_with_the_file(capsys, data, name, text):
    """Was a RecursionError (exit 1) or a recursion deep inside datasets."""
    (data / name).write_text(text)
    line = refused(capsys, ["data", "import", "trl", data / name, "--out", data / "out"], data / "out")
    assert name in line and "levels deep" in line


def test_deep_nesting_in_a_record_file(data):
    from mmalign.io import read_json, read_records

    (data / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for read in (read_json, read_records):
        with pytest.raises(ValueError, match="deep.json: JSON nested more than 100 levels deep"):
            read(data / "deep.json")


def test_corrupt_manifest_is_named(capsys, pairs):
    (pairs / "mmalign_dataset.json").write_text('{"kind": "preference", ')
    line = refused(capsys, ["data", "validate", pairs])
    assert f"{pairs / 'mmalign_dataset.json'}: not a readable mmalign dataset manifest (invalid JSON" in line
    (pairs / "mmalign_dataset.json").unlink()
    (pairs / "state.json").write_text("[]")
    assert f"{pairs / 'state.json'}: not a readable datasets state file" in refused(capsys, ["data", "inspect", pairs])


def test_truncated_arrow_file_is_named(capsys, tmp_path):
    save_preference_dataset(records(40), tmp_path / "pairs")
    arrow = next((tmp_path / "pairs").glob("*.arrow"))
    os.truncate(arrow, arrow.stat().st_size - 100)
    line = refused(capsys, ["data", "validate", tmp_path / "pairs"])
    assert f"{arrow}: not a readable Arrow file, truncated or corrupt" in line


def test_fewer_rows_than_the_manifest_says(capsys, pairs):
    manifest = json.loads((pairs / "mmalign_dataset.json").read_text())
    (pairs / "mmalign_dataset.json").write_text(json.dumps({**manifest, "rows": 7}))
    assert "holds 3 rows but its manifest mmalign_dataset.json says 7" in refused(capsys, ["data", "validate", pairs])


def test_a_manifest_missing_fields_still_validates(capsys, pairs):
    """A manifest without 'schema_version' was 'error: schema_version' (a KeyError)."""
    (pairs / "mmalign_dataset.json").write_text(json.dumps({"rows": 3}))
    assert main(["data", "validate", str(pairs)]) == 0
    assert "schema v?" in capsys.readouterr().out


def test_validate_lists_bad_safety_labels_instead_of_crashing(capsys, tmp_path):
    """A harmless rating stored as a list was a TypeError traceback in the label summary."""
    Dataset.from_dict({"prompt": ["q"], "chosen": ["a"], "rejected": ["b"], "chosen_is_safe": [False],
                       "chosen_harmless_rate": [[1]]}).save_to_disk(str(tmp_path / "ds"))
    assert main(["data", "validate", str(tmp_path / "ds")]) == 1
    assert "field 'chosen_harmless_rate': expected an integer, got list" in capsys.readouterr().out


def test_unknown_split_lists_the_splits(capsys, tmp_path, pairs):
    """Was 'error: nope' (a KeyError)."""
    rows = {"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    line = refused(capsys, ["data", "validate", tmp_path / "dd", "--split", "nope"])
    assert f"{tmp_path / 'dd'} has no split 'nope'; its splits are train, test" in line
    assert "holds splits train, test; choose one with --split" in refused(capsys, ["data", "validate", tmp_path / "dd"])
    line = refused(capsys, ["data", "import", "trl", tmp_path / "dd", "--split", "nope", "--out", tmp_path / "o"],
                   tmp_path / "o")
    assert "has no split 'nope'; its splits are train, test" in line
    assert "holds one dataset, not splits" in refused(capsys, ["data", "validate", pairs, "--split", "train"])


def test_score_batch_size_is_refused_up_front(capsys, pairs, tmp_path):
    """Was 'range() arg 3 must not be zero', after loading the model."""
    line = refused(capsys, ["score", "--model", tmp_path / "no-model", "--data", pairs, "--out", tmp_path / "o",
                            "--batch-size", "0"], tmp_path / "o")
    assert "--batch-size must be at least 1, got 0" in line


def test_shard_errors_name_the_shard_and_its_row(capsys, data):
    """Rows were numbered across the files of a folder and the shard was not named."""
    (data / "shards").mkdir()
    (data / "imgs").mkdir()
    (data / "a.png").rename(data / "imgs" / "a.png")
    jsonl(data / "shards" / "train-00000.jsonl", [GOOD] * 3)
    jsonl(data / "shards" / "train-00001.jsonl", [GOOD, {**GOOD, "chosen": ""}])
    line = refused(capsys, ["data", "import", "trl", data / "shards", "--images", data / "imgs",
                            "--out", data / "out"], data / "out")
    assert f"{data / 'shards' / 'train-00001.jsonl'} row 1, field 'chosen': is empty" in line


def test_an_input_without_records_is_named(capsys, data):
    """Said 'no valid records to write to OUT', naming the output instead of the input."""
    (data / "empty.json").write_text("[]")
    line = refused(capsys, ["data", "import", "trl", data / "empty.json", "--out", data / "out"], data / "out")
    assert f"{data / 'empty.json'}: no records to import" in line


def test_mixed_prompt_forms_name_the_row(capsys, data):
    conversational = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}]
    path = jsonl(data / "pairs.jsonl", [GOOD, {**GOOD, "prompt": conversational}])
    line = refused(capsys, ["data", "import", "trl", path, "--out", data / "out"], data / "out")
    assert "pairs.jsonl row 1, field 'prompt': mixes text and conversational prompts" in line


# ---------------------------------------------------------------------------- 5. terminal output
def test_inspect_shows_control_characters_as_escapes(capsys, data):
    nasty = "red \x1b[2J\x1b]0;owned\x07 cup\r \x9b31m \u202e"
    path = jsonl(data / "pairs.jsonl", [{**GOOD, "chosen": nasty, "chosen_spans": [[0, 3]], "source": "s\x1b[5m",
                                         "facts": ["f\x1b[1m"], "meta": {"k": "\x1b"}}])
    assert main(["data", "import", "trl", str(path), "--out", str(data / "ds")]) == 0
    capsys.readouterr()
    for color in ("always", "never"):
        assert main(["data", "inspect", str(data / "ds"), "--color", color, "--diff"]) == 0
        out = capsys.readouterr().out
        for raw in ("\x1b[2J", "\x1b]0", "\x07", "\r", "\x9b", "\u202e", "\x1b[5m", "\x1b[1m"):
            assert raw not in out
        assert "\\x1b[2J\\x1b]0;owned\\x07 cup\\x0d \\x9b31m \\u202e" in re.sub("\x1b\\[[0-9;]*m", "", out)


def test_error_lines_escape_control_characters(capsys, data):
    path = jsonl(data / "pairs.jsonl", [{**GOOD, "id": "\x1b[31mred", "chosen": ""}])
    line = refused(capsys, ["data", "import", "trl", path, "--out", data / "out"], data / "out")
    assert "\x1b" not in line
    assert terminal_safe("a\x1bb\nc\td\x85") == "a\\x1bb\nc\td\\x85"


def test_inspect_refuses_rows_past_the_end(capsys, pairs):
    assert "has 3 rows; there is no row 9" in refused(capsys, ["data", "inspect", str(pairs), "--start", "9"])
    assert "rows to show start at 0" in refused(capsys, ["data", "inspect", str(pairs), "--start", "-2"])
