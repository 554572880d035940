"""Exact resume: a run killed with SIGKILL and resumed (``--resume_from_checkpoint auto``)
ends with the same adapter as an uninterrupted run (DPO, SFT, reward model, PPO); broken
checkpoints are skipped; a checkpoint written with other settings is refused unless
``--resume_with_changes``, which then trains with the new ones."""

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


def run_and_kill(method, recipe, out, log_path, steps):
    """``mmalign train METHOD`` in a subprocess, killed with SIGKILL as soon as its first
    complete checkpoint exists; returns the checkpoint a resume picks."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmalign", "train", method, "--config", str(recipe)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while latest_valid_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-2000:]
    assert not (out / "final").exists()
    reached = list_checkpoints(out)
    assert reached and int(reached[0].name.split("-")[1]) < steps
    return latest_valid_checkpoint(out)


def test_sigkill_then_resume_auto_gives_the_same_adapter(tiny_dirs, pairs_dir, reference_run, tmp_path, caplog):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, out)
    killed_at = run_and_kill("dpo", recipe, out, tmp_path / "killed.log", STEPS)

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


# ---------------------------------------------------------------------------- SFT, reward model, PPO
PPO_STEPS = 4


@pytest.fixture(scope="module")
def inputs(pairs_dir, sft_json, prompts_dir, save_scorers):
    return {"pairs": pairs_dir, "sft": sft_json, "prompts": prompts_dir, "scorers": save_scorers(0.0)}


def method_recipe(method, root, tiny_dirs, inputs, out):
    """A tiny run of ``method`` with LoRA dropout (the RNG matters) and checkpoints along the way;
    ``METHOD-full`` trains every weight instead (no LoRA)."""
    method, _, full = method.partition("-")
    values = {"model_name_or_path": str(tiny_dirs["llava"]), "lora_r": 4, "lora_dropout": 0.1,
              "output_dir": str(out), "save_strategy": "steps", "learning_rate": 1e-2, "max_length": 256,
              "logging_steps": 1, "report_to": "none", "use_cpu": True, "seed": 3}
    if method == "ppo":
        values.update({"dataset_path": str(inputs["prompts"]), "reward_model_path": str(inputs["scorers"] / "reward"),
                       "lora_alpha": 8, "max_steps": PPO_STEPS, "save_steps": 1, "rollout_batch_size": 2,
                       "per_device_train_batch_size": 1, "per_device_eval_batch_size": 2, "ppo_epochs": 1,
                       "max_new_tokens": 4})
    else:
        values.update({"max_steps": STEPS, "save_steps": 2, "per_device_train_batch_size": 2})
        if method == "sft":
            values.update({"dataset_path": str(inputs["sft"][0]), "image_folder": str(inputs["sft"][1])})
        else:
            values["dataset_path"] = str(inputs["pairs"])
    if full:
        values["use_peft"] = False
        if method == "dpo":  # the reference: the model before training
            values["precompute_ref_logps"] = True
    recipe = root / f"{method}-{out.name}.yaml"
    recipe.write_text(yaml.safe_dump(values))
    return recipe


@pytest.fixture(scope="module")
def reference_runs(tiny_dirs, inputs, tmp_path_factory):
    """``reference_runs(method)``: the output folder of an uninterrupted run (made once)."""
    runs = {}

    def get(method):
        if method not in runs:
            root = tmp_path_factory.mktemp(f"reference-{method}")
            out = root / "run"
            recipe = method_recipe(method, root, tiny_dirs, inputs, out)
            assert main(["train", method.split("-")[0], "--config", str(recipe)]) == 0
            runs[method] = out
        return runs[method]

    return get


def assert_same_weights(a, b):
    """Every safetensors file (adapters, heads, critics) of two folders holds the same tensors."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    for name in files:
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys() and wa, name
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0)


def history(checkpoint):
    """(step, loss) of every logged step: the Trainer's loss, or PPO's policy loss."""
    for state, key in (("trainer_state.json", "loss"), ("ppo_state.json", "loss/policy")):
        if (checkpoint / state).exists():
            return [(e["step"], e[key]) for e in json.loads((checkpoint / state).read_text())["log_history"]
                    if key in e]
    raise AssertionError(f"no state in {checkpoint}")


# full fine-tuning: a LLaVA's weights are saved under their original key names, which
# transformers' Trainer does not map back when it resumes (it would silently keep the start weights)
@pytest.mark.parametrize("method", ["sft", "sft-full", "dpo-full", "rm", "ppo"])
def test_sigkill_then_resume_auto_gives_the_same_weights(method, tiny_dirs, inputs, reference_runs, tmp_path,
                                                         caplog):
    reference = reference_runs(method)
    steps = PPO_STEPS if method == "ppo" else STEPS
    out = tmp_path / "run"
    recipe = method_recipe(method, tmp_path, tiny_dirs, inputs, out)
    killed_at = run_and_kill(method.split("-")[0], recipe, out, tmp_path / "killed.log", steps)

    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main(["train", method.split("-")[0], "--config", str(recipe), "--resume_from_checkpoint", "auto"]) == 0
    assert f"resuming from {killed_at}" in caplog.text
    assert_same_weights(reference / "final", out / "final")
    ours, theirs = history(out / f"checkpoint-{steps}"), history(reference / f"checkpoint-{steps}")
    assert [s for s, _ in ours] == list(range(1, steps + 1))
    for (step, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-6), step


# ---------------------------------------------------------------------------- resuming with other settings
def only_checkpoint(reference, tmp_path, step):
    """A copy of a finished run that stopped at ``checkpoint-{step}``."""
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=lambda folder, names: [
        n for n in names if folder == str(reference) and (n == "final" or (n.startswith("checkpoint-")
                                                                            and n != f"checkpoint-{step}"))])
    return run


def snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def one_error(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def logged_rates(checkpoint):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [e["learning_rate"] for e in state["log_history"] if "loss" in e]


def test_auto_refuses_a_checkpoint_written_with_other_settings(tiny_dirs, pairs_dir, reference_run, tmp_path,
                                                                capsys):
    run = only_checkpoint(reference_run, tmp_path, 2)
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, run)
    before = snapshot(run)
    assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", "auto",
                 "--learning_rate", "5e-3", "--seed", "4", "--logging_steps", "2", "--save_steps", "3"]) == 2
    line = one_error(capsys)
    assert line.startswith(f"error: cannot resume from {run / 'checkpoint-2'} (the newest checkpoint in {run}): "
                           "it was written with different settings: learning_rate 0.01 → 0.005, seed 3 → 4. ")
    assert "--resume_with_changes true" in line
    assert "logging_steps" not in line and "save_steps" not in line  # harmless: they may differ
    assert snapshot(run) == before  # refused before anything was written (nor a fresh start)


def test_an_explicit_checkpoint_with_other_loss_settings_is_refused(tiny_dirs, pairs_dir, reference_run, tmp_path,
                                                                    capsys):
    run = only_checkpoint(reference_run, tmp_path, 4)
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, run)
    assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", str(run / "checkpoint-4"),
                 "--beta", "0.3", "--loss_type", "ipo", "--per_device_train_batch_size", "4"]) == 2
    line = one_error(capsys)
    assert f"cannot resume from {run / 'checkpoint-4'}: it was written with different settings: " in line
    assert "beta 0.1 → 0.3, loss_type sigmoid → ipo, per_device_train_batch_size 2 → 4" in line


def test_resume_with_changes_trains_with_the_new_settings(tiny_dirs, pairs_dir, reference_run, tmp_path, caplog):
    run = only_checkpoint(reference_run, tmp_path, 2)
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, run)
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", "auto",
                     "--learning_rate", "5e-3", "--resume_with_changes", "true"]) == 0
    assert (f"resuming from {run / 'checkpoint-2'} with changed settings (resume_with_changes): kept from the "
            "checkpoint: the trained weights, the optimizer state (Adam moments), the step count") in caplog.text
    assert "changed from the next step on: learning_rate 0.01 → 0.005" in caplog.text
    ours, theirs = logged_rates(run / f"checkpoint-{STEPS}"), logged_rates(reference_run / f"checkpoint-{STEPS}")
    assert ours[:2] == theirs[:2]  # the two steps of the checkpoint
    assert ours[2:] == pytest.approx([rate / 2 for rate in theirs[2:]], rel=1e-9)  # same schedule, new base rate
    recorded = yaml.safe_load((run / f"checkpoint-{STEPS}" / "mmalign_config.yaml").read_text())
    assert recorded["learning_rate"] == 5e-3  # later checkpoints record the settings they were trained with


def test_resume_with_changes_cannot_change_the_shape_of_the_weights(tiny_dirs, pairs_dir, reference_run, tmp_path,
                                                                   capsys):
    run = only_checkpoint(reference_run, tmp_path, 2)
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, run)
    assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", "auto", "--lora_r", "8",
                 "--resume_with_changes", "true"]) == 2
    assert "its weights do not fit this run's model (lora_r 4 → 8)" in one_error(capsys)


def test_harmless_changes_resume_exactly(tiny_dirs, pairs_dir, reference_run, tmp_path, caplog):
    run = only_checkpoint(reference_run, tmp_path, 4)
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, run)
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", "auto",
                     "--logging_steps", "2", "--save_steps", "1", "--max_nonfinite_steps", "5"]) == 0
    assert f"resuming from {run / 'checkpoint-4'}" in caplog.text and "changed settings" not in caplog.text
    assert_same_adapter(reference_run / "final", run / "final")


def test_a_checkpoint_of_older_mmalign_resumes_with_a_warning(tiny_dirs, pairs_dir, reference_run, tmp_path, caplog):
    run = only_checkpoint(reference_run, tmp_path, 4)
    (run / "checkpoint-4" / "mmalign_config.yaml").unlink()  # checkpoints did not record their settings
    recipe = write_recipe(tmp_path, tiny_dirs, pairs_dir, run)
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main(["train", "dpo", "--config", str(recipe), "--resume_from_checkpoint", "auto"]) == 0
    assert (f"resuming from {run / 'checkpoint-4'}, which does not record the settings it was written with"
            in caplog.text)
    assert_same_adapter(reference_run / "final", run / "final")


def test_ppo_checkpoints_record_their_settings_and_check_them(tiny_dirs, inputs, reference_runs, tmp_path, capsys,
                                                              caplog):
    import torch as _torch

    reference = reference_runs("ppo")
    recorded = yaml.safe_load((reference / "checkpoint-1" / "mmalign_config.yaml").read_text())
    assert recorded["kl_coef"] == 0.1 and recorded["model_name_or_path"] == str(tiny_dirs["llava"])
    run = only_checkpoint(reference, tmp_path, 2)
    recipe = method_recipe("ppo", tmp_path, tiny_dirs, inputs, run)
    # the generation batch is harmless for the Trainer methods, not for PPO: it changes the samples
    assert main(["train", "ppo", "--config", str(recipe), "--resume_from_checkpoint", "auto", "--kl_coef", "0.2",
                 "--per_device_eval_batch_size", "1"]) == 2
    assert "different settings: kl_coef 0.1 → 0.2, per_device_eval_batch_size 2 → 1" in one_error(capsys)
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main(["train", "ppo", "--config", str(recipe), "--resume_from_checkpoint", "auto", "--learning_rate",
                     "5e-3", "--resume_with_changes", "true"]) == 0
    assert "kept from the checkpoint: the policy's and critics' weights" in caplog.text
    state = _torch.load(run / f"checkpoint-{PPO_STEPS}" / "training_state.pt", weights_only=True)
    assert state["scheduler"]["base_lrs"] == [5e-3] * len(state["scheduler"]["base_lrs"])
