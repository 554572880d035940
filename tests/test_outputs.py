"""Outputs never destroy anything: the writer contract of :func:`mmalign.io.atomic_dir`.

A missing path or an empty folder is written; an earlier output of the same kind is
replaced atomically; any other folder only with ``overwrite``; a file and the writer's
inputs never. Temporary siblings carry the writer's PID; those of dead writers are removed.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmalign.cli import main
from mmalign.data_builders.storage import (
    load_preference_dataset,
    read_manifest,
    save_preference_dataset,
)
from mmalign.io import (
    OutputExistsError,
    OutputIsInputError,
    OutputKind,
    atomic_dir,
    check_output,
    remove_stale,
)

KIND = OutputKind("test output", ("sig.json",))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (folders as None, files with their bytes)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def write(tmp: Path, text: str = "new") -> None:
    (tmp / "sig.json").write_text("{}")
    (tmp / "result.txt").write_text(text)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def record():
    def make(**overrides):
        return {"prompt": "What is on the table?", "chosen": "A red cup.", "rejected": "A blue cup.", **overrides}

    return make


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


# ---------------------------------------------------------------------------- the contract
def test_a_foreign_folder_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "x"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep")
    (out / "sub" / "data.bin").write_bytes(b"\0\1")
    before = snapshot(tmp_path)
    with pytest.raises(OutputExistsError) as info:
        with atomic_dir(out, replaces=KIND) as tmp:
            write(tmp)
    message = str(info.value)
    assert str(out) in message and "notes.txt" in message and "--overwrite" in message
    assert isinstance(info.value, ValueError)
    assert snapshot(tmp_path) == before
    # overwrite=True (--overwrite) replaces it
    with atomic_dir(out, replaces=KIND, overwrite=True) as tmp:
        write(tmp)
    assert snapshot(out) == {"result.txt": b"new", "sig.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_is_refused_and_left_untouched(tmp_path, overwrite):
    out = tmp_path / "x"
    out.write_text("a file")
    with pytest.raises(OutputExistsError, match="is a file"):
        with atomic_dir(out, replaces=KIND, overwrite=overwrite) as tmp:
            write(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"] and out.read_text() == "a file"


@pytest.mark.parametrize("where, relation", [("same", "is the input"), ("inside", "is inside the input"),
                                             ("contains", "contains the input")])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_overlapping_an_input_is_refused_even_with_overwrite(tmp_path, where, relation, overwrite):
    data = tmp_path / "data"
    data.mkdir()
    write(data, "the input")  # an output of the same kind: replaceable, were it not an input
    out, inputs = {"same": (data, [data]), "inside": (data / "sub", [data]),
                   "contains": (tmp_path, [data])}[where]
    before = snapshot(tmp_path)
    with pytest.raises(OutputIsInputError, match=relation):
        with atomic_dir(out, replaces=KIND, overwrite=overwrite, inputs=inputs) as tmp:
            write(tmp)
    assert snapshot(tmp_path) == before
    with pytest.raises(OutputIsInputError):  # the same check, for callers to run before long work
        check_output(out, replaces=KIND, overwrite=overwrite, inputs=[str(inputs[0]), None, "hub/model-id"])


@pytest.mark.parametrize("state", ["missing", "empty", "same kind"])
def test_a_missing_path_an_empty_folder_and_an_earlier_output_are_written(tmp_path, state, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("x")
    if state != "missing":
        out.mkdir()
    if state == "same kind":
        write(out, "old")
        (out / "stale-extra.txt").write_text("from the earlier output")
    # inputs that are no paths on disk (hub ids, card names) overlap nothing
    with atomic_dir(out, replaces=KIND, inputs=["scene-vlm", "llava-hf/llava-1.5-7b-hf", None, ""]) as tmp:
        assert tmp.parent.resolve() == tmp_path and tmp.name.startswith(f".tmp-x-{os.getpid()}-")
        write(tmp)
    assert snapshot(out) == {"result.txt": b"new", "sig.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_temp_folders_carry_the_pid_and_stale_ones_are_removed(tmp_path, live_pid, caplog):
    out = tmp_path / "x"
    dead = dead_pid()
    stale = [tmp_path / f".tmp-x-{dead}-abcd1234", tmp_path / f".chunks-x-{dead}-0a1b2c3d",
             tmp_path / f".old-x-{dead}-deadbeef"]
    kept = [tmp_path / f".tmp-x-{live_pid}-abcd1234",  # a writer still running
            tmp_path / f".tmp-x-y-{dead}-abcd1234",  # another output's (x-y)
            tmp_path / ".tmp-x-abcd1234"]  # no PID: nobody can tell whose
    for folder in stale + kept:
        folder.mkdir()
        (folder / "part.arrow").write_bytes(b"x" * 100)
    out.mkdir()
    write(out, "old")
    with caplog.at_level("WARNING", logger="mmalign.io"):
        with atomic_dir(out, replaces=KIND) as tmp:
            assert tmp.name.startswith(f".tmp-x-{os.getpid()}-")
            assert not any(p.exists() for p in stale)
            write(tmp)
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x", *(p.name for p in kept)])
    assert f"removed .tmp-x-{dead}-abcd1234, left by process {dead}" in caplog.text


def test_a_previous_output_left_between_the_two_renames_is_put_back(tmp_path):
    dead = dead_pid()
    old = tmp_path / f".old-x-{dead}-abcd1234"
    old.mkdir()
    write(old, "previous")
    assert remove_stale(tmp_path / "x") == [old]
    assert (tmp_path / "x" / "result.txt").read_text() == "previous" and not old.exists()


def test_a_crash_keeps_the_previous_output_and_leaves_nothing(tmp_path):
    out = tmp_path / "x"
    with atomic_dir(out, replaces=KIND) as tmp:
        write(tmp, "first")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out, replaces=KIND) as tmp:
            write(tmp, "half")
            # what a SIGKILL here would leave names its writer, so the next one can remove it
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x", tmp.name])
            assert tmp.name.startswith(f".tmp-x-{os.getpid()}-")
            raise KeyboardInterrupt
    assert (out / "result.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_something_put_at_the_path_while_writing_is_not_replaced(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(OutputExistsError):
        with atomic_dir(out, replaces=KIND) as tmp:
            write(tmp)
            out.mkdir()
            (out / "notes.txt").write_text("someone else's")
    assert snapshot(tmp_path) == {"x": None, "x/notes.txt": b"someone else's"}


def test_dataset_writers_refuse_a_foreign_folder_before_reading_a_record(record, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "notes.txt").write_text("keep")

    def records():
        raise AssertionError("a record was read")
        yield

    with pytest.raises(OutputExistsError, match="canonical dataset"):
        save_preference_dataset(records(), out)
    assert snapshot(out) == {"notes.txt": b"keep"}
    save_preference_dataset([record()], out, overwrite=True)
    assert read_manifest(out)["rows"] == 1 and not (out / "notes.txt").exists()
    save_preference_dataset([record(), record()], out)  # an earlier dataset: replaced
    assert read_manifest(out)["rows"] == 2


# ---------------------------------------------------------------------------- a resumed training run
@dataclass
class _Config:
    model_name_or_path: str
    dataset_path: str
    output_dir: str
    resume_from_checkpoint: str | None = None


def test_training_removes_the_final_folder_a_killed_run_left_and_refuses_an_input(tmp_path):
    from mmalign.training import train_and_save

    run = tmp_path / "run"
    run.mkdir()
    left = run / f".tmp-final-{dead_pid()}-abcd1234"
    left.mkdir()

    class Trainer:
        args = SimpleNamespace(output_dir=str(run), resume_from_checkpoint=None)
        accelerator = SimpleNamespace(wait_for_everyone=lambda: None)
        trained = False

        def is_world_process_zero(self):
            return True

        def train(self, resume_from_checkpoint=None):
            self.trained = True

        def save_model(self, path):
            Path(path, "adapter_config.json").write_text("{}")

    final = train_and_save(Trainer(), _Config(str(tmp_path / "base"), str(tmp_path / "pairs"), str(run)))
    assert sorted(p.name for p in run.iterdir()) == ["final", "mmalign_config.yaml"]
    assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "mmalign_config.yaml"]
    # a second run on top of the first one's final model must not replace it
    trainer = Trainer()
    with pytest.raises(OutputIsInputError, match="is the input"):
        train_and_save(trainer, _Config(str(final), str(tmp_path / "pairs"), str(run)))
    assert not trainer.trained


# ---------------------------------------------------------------------------- through the command
def _trl_file(path: Path, rows: int = 2) -> Path:
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"prompt": f"Question {i}: what is shown?", "chosen": "A red cup on a table.",
                                "rejected": "A blue cup on a table."}) + "\n")
    return path


def _import(*argv) -> int:
    return main(["data", "import", "trl", *map(str, argv)])


def test_import_onto_a_foreign_folder_exits_2_and_keeps_it(tmp_path, capsys):
    good = _trl_file(tmp_path / "good.jsonl")
    out = tmp_path / "x"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n")
    before = snapshot(tmp_path)
    assert _import(good, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "notes.txt" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before

    assert _import(good, "--out", out, "--overwrite") == 0
    assert len(load_preference_dataset(out)) == 2 and not (out / "notes.txt").exists()
    assert _import(_trl_file(tmp_path / "more.jsonl", 3), "--out", out) == 0  # its own output: replaced
    assert len(load_preference_dataset(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "more.jsonl", "x"]


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_import_onto_its_input_is_refused(tmp_path, capsys, record, flags):
    data = tmp_path / "data"
    save_preference_dataset([record(), record()], data)  # a TRL-readable dataset folder, same kind as the output
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert _import(data, "--out", data, *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "is the input" in err
    assert _import(data, "--out", data / "inner", *flags) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_import_onto_a_file_is_refused(tmp_path, capsys, flags):
    good = _trl_file(tmp_path / "good.jsonl")
    (tmp_path / "x").write_text("a file")
    before = snapshot(tmp_path)
    assert _import(good, "--out", tmp_path / "x", *flags) == 2
    assert "is a file" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_every_command_with_out_has_overwrite():
    from mmalign.cli import build_parser

    writers = {("data", "import"), ("data", "build", "corrections"), ("data", "build", "ai-feedback"),
               ("data", "build", "safety-pairs"), ("world", "make"), ("world", "sft-data"), ("world", "pretrain"),
               ("world", "feedback"), ("world", "safety"), ("world", "prompts"), ("studio", "export"), ("score",),
               ("precompute-ref",), ("export",), ("tiny",)}
    parser = build_parser()
    for path in writers:
        p = parser
        for name in path:
            sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
            p = sub.choices[name]
        assert "--overwrite" in p._option_string_actions, path


def test_sigkill_mid_import_then_the_next_run_cleans_up(tmp_path):
    big = _trl_file(tmp_path / "big.jsonl", 30000)  # 30 chunks of 1000 rows: seconds of writing
    out = tmp_path / "x"
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mmalign", "data", "import", "trl", str(big), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(tmp_path.glob(f".chunks-x-{proc.pid}-*/00001")):  # a chunk written, more to come
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left and all(f"-x-{proc.pid}-" in name for name in left) and not out.exists()

    assert _import(_trl_file(tmp_path / "small.jsonl"), "--out", out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl", "small.jsonl", "x"]
    assert len(load_preference_dataset(out)) == 2


# ---------------------------------------------------------------------------- property
NAMES = st.text(alphabet="abcXY._-0", min_size=1, max_size=5).filter(lambda n: n not in (".", ".."))
TREES = st.recursive(st.binary(max_size=8), lambda children: st.dictionaries(NAMES, children, max_size=4),
                     max_leaves=8)


def _build(path: Path, tree) -> None:
    if isinstance(tree, bytes):
        path.write_bytes(tree)
    else:
        path.mkdir()
        for name, child in tree.items():
            _build(path / name, child)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(existing=st.one_of(st.none(), TREES), same_kind=st.booleans(), overwrite=st.booleans(),
       input_at=st.sampled_from([None, "out", "inside", "parent", "sibling"]))
def test_property_written_and_nothing_else_changed_or_refused_and_nothing_changed(existing, same_kind, overwrite,
                                                                                  input_at):
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        (root / "sibling").mkdir()
        (root / "sibling" / "keep.txt").write_text("keep")
        out = root / "parent" / "out"
        out.parent.mkdir()
        if existing is not None:
            _build(out, existing)
            if same_kind and out.is_dir():
                (out / "sig.json").write_text("old")
        inputs = {None: [], "out": [out], "inside": [out / "a"], "parent": [out.parent],
                  "sibling": [root / "sibling"]}[input_at]
        before = snapshot(root)
        is_file, is_dir = out.is_file(), out.is_dir()
        empty = is_dir and not any(out.iterdir())
        overlaps = (input_at == "out" and out.exists()) or input_at == "parent" or (
            input_at == "inside" and (out / "a").exists())
        allowed = not overlaps and not is_file and (not is_dir or empty or overwrite or (out / "sig.json").is_file())
        try:
            with atomic_dir(out, replaces=KIND, overwrite=overwrite, inputs=inputs) as tmp:
                write(tmp)
        except (OutputExistsError, OutputIsInputError):
            assert not allowed
            assert snapshot(root) == before
            return
        assert allowed
        after = snapshot(root)
        assert snapshot(out) == {"result.txt": b"new", "sig.json": b"{}"}
        outside = {k: v for k, v in before.items() if not k.startswith("parent/out")}
        assert {k: v for k, v in after.items() if not k.startswith("parent/out")} == outside
        assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
