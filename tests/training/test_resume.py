"""Exact resume: a run killed with SIGKILL and resumed (``--resume_from_checkpoint auto``)
ends with the same adapter as an uninterrupted run; broken checkpoints are skipped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mmalign.cli import main
from mmalign.training import (
    checkpoint_problem,
    latest_valid_checkpoint,
    list_checkpoints,
    resolve_resume,
)

STEPS = 6


def write_recipe(tmp_path, tiny_dirs, pairs_dir, out):
    recipe = tmp_path / f"{out.name}.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_dirs["llava"]), "lora_r": 4, "lora_dropout": 0.1,  # dropout: RNG matters
        "dataset_path": str(pairs_dir), "output_dir": str(out), "max_steps": STEPS, "save_strategy": "steps",
        "save_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "max_length": 256,
        "logging_steps": 1, "report_to": "none", "use_cpu": True, "seed": 3,
    }))
    return recipe


def losses(checkpoint):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def assert_same_adapter(a, b):
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def reference_run(tiny_dirs, pairs_dir, tmp_path_factory):
    """An uninterrupted run: checkpoints every 2 of 8 steps, then ``final``."""
    root = tmp_path_factory.mktemp("reference")
    out = root / "run"
    assert main(["train", "dpo", "--config", str(write_recipe(root, tiny_dirs, pairs_dir, out))]) == 0
    return out


def test_sigkill_then_resume_auto_gives_the_same_adapter(tiny_dirs, pairs_dir, reference_run, tmp_path, caplog):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, out)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmalign", "train", "dpo", "--config", str(recipe)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while latest_valid_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (out / "final").exists()
    reached = list_checkpoints(out)
    assert reached and int(reached[0].name.split("-")[1]) < STEPS
    killed_at = latest_valid_checkpoint(out)

    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", "auto"]) == 0
    assert f"resuming from {killed_at}" in caplog.text
    assert_same_adapter(reference_run / "final", out / "final")
    ours, theirs = losses(out / f"checkpoint-{STEPS}"), losses(reference_run / f"checkpoint-{STEPS}")
    assert [s for s, _ in ours] == list(range(1, STEPS + 1))
    for (step, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-6), step


def damage(checkpoint, how):
    if how == "truncated weights":
        path = checkpoint / "adapter_model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "missing state":
        (checkpoint / "trainer_state.json").unlink()
    elif how == "truncated state":
        path = checkpoint / "trainer_state.json"
        path.write_text(path.read_text()[:100])
    elif how == "truncated optimizer":
        path = checkpoint / "optimizer.pt"
        path.write_bytes(path.read_bytes()[:-200])
    elif how == "missing weights":
        (checkpoint / "adapter_model.safetensors").unlink()


@pytest.mark.parametrize("how, problem", [
    ("truncated weights", "adapter_model.safetensors: {half} bytes, the header describes {size}"),
    ("missing state", "no trainer_state.json or ppo_state.json"),
    ("truncated state", "trainer_state.json is not valid JSON"),
    ("truncated optimizer", "optimizer.pt is truncated or not a torch archive"),
    ("missing weights", "no weights (.safetensors)"),
])
def test_a_broken_last_checkpoint_is_detected(reference_run, tmp_path, caplog, how, problem):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("final"))
    assert checkpoint_problem(run / f"checkpoint-{STEPS}") is None
    size = (run / f"checkpoint-{STEPS}" / "adapter_model.safetensors").stat().st_size
    problem = problem.format(half=size // 2, size=size)
    damage(run / f"checkpoint-{STEPS}", how)
    assert problem in checkpoint_problem(run / f"checkpoint-{STEPS}")
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert latest_valid_checkpoint(run) == run / f"checkpoint-{STEPS - 2}"
    assert f"checkpoint {run / f'checkpoint-{STEPS}'} is incomplete or corrupt ({problem}" in caplog.text
    with pytest.raises(ValueError, match=f"cannot resume from .*checkpoint-{STEPS}: "):
        resolve_resume(str(run / f"checkpoint-{STEPS}"), run)


def test_resume_falls_back_to_the_previous_checkpoint(tiny_dirs, pairs_dir, reference_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("final"))
    damage(run / f"checkpoint-{STEPS}", "truncated weights")
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, run)
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", "auto"]) == 0
    assert f"resuming from {run / f'checkpoint-{STEPS - 2}'}" in caplog.text
    assert_same_adapter(reference_run / "final", run / "final")
    assert checkpoint_problem(run / f"checkpoint-{STEPS}") is None  # rewritten by the resumed run


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert resolve_resume("auto", tmp_path / "nothing-yet") is None
    assert "no valid checkpoint" in caplog.text
    assert resolve_resume(None, tmp_path) is None
