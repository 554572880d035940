"""Non-finite guard: a NaN/inf step leaves the weights alone; too many in a row stop the run."""

import math

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback

from mmalign.data_builders.storage import load_preference_dataset
from mmalign.dpo import DPOConfig, DPOTrainer
from mmalign.model_config import ModelConfig
from mmalign.training import NONFINITE_LOG_KEY, NonFiniteTrainingError, checkpoint_problem


class PoisonedDPOTrainer(DPOTrainer):
    """DPO whose loss (``poison="loss"``) or gradient (``"grad"``) is non-finite on chosen steps."""

    def __init__(self, *args, bad_steps=(), poison="loss", **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_steps, self.poison = set(bad_steps), poison

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training and self.state.global_step in self.bad_steps:
            if self.poison == "loss":
                loss = loss * float("nan")
            else:  # finite loss, infinite gradient
                loss.register_hook(lambda g: g * math.inf)
        return loss


class Snapshots(TrainerCallback):
    """LoRA weights after every optimizer step."""

    def __init__(self):
        self.weights = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})


def make_trainer(tiny_dirs, pairs_dir, tmp_path, **kw):
    adapter = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), lora_r=4, lora_dropout=0.0).load()
    options = dict(bad_steps=kw.pop("bad_steps"), poison=kw.pop("poison", "loss"))
    args = DPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, learning_rate=1e-2,
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, max_length=256, **kw)
    snapshots = Snapshots()
    trainer = PoisonedDPOTrainer(adapter, args, train_dataset=load_preference_dataset(pairs_dir),
                                 callbacks=[snapshots], **options)
    return trainer, snapshots


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_counted(tiny_dirs, pairs_dir, tmp_path, caplog, poison):
    trainer, snaps = make_trainer(tiny_dirs, pairs_dir, tmp_path, bad_steps={1}, poison=poison, max_steps=3)
    with caplog.at_level("WARNING", logger="mmalign.training"):
        trainer.train()
    before, bad, after = snaps.weights
    for name, value in before.items():
        assert torch.equal(bad[name], value), name  # the poisoned step changed nothing
    assert any(not torch.equal(after[n], before[n]) for n in before)  # the next good step trains again
    assert all(torch.isfinite(v).all() for v in after.values())
    # the optimizer took two steps, not three: Adam's moments saw no NaN and no extra step
    steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert steps == {2}
    counts = [e[NONFINITE_LOG_KEY] for e in trainer.state.log_history if "loss" in e]
    assert counts == [0, 1, 1]
    assert "step 2: non-finite loss or gradient, optimizer step skipped (1 in a row, 1 in total)" in caplog.text


def test_repeated_nonfinite_steps_stop_with_a_usable_checkpoint(tiny_dirs, pairs_dir, tmp_path):
    trainer, snaps = make_trainer(tiny_dirs, pairs_dir, tmp_path, bad_steps={1, 2, 3, 4, 5}, max_steps=6,
                                  max_nonfinite_steps=2)
    with pytest.raises(NonFiniteTrainingError, match="training stopped at step 3: 2 optimizer steps in a row had "
                       "a NaN/inf loss or gradient") as err:
        trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert str(checkpoint) in str(err.value)
    assert len(snaps.weights) == 3 and trainer.state.global_step == 3  # stopped, not run to max_steps
    assert checkpoint_problem(checkpoint) is None
    saved = load_file(checkpoint / "adapter_model.safetensors")
    first = get_peft_model_state_dict(trainer.model)
    assert saved.keys() == first.keys()
    for name, value in saved.items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, first[name], atol=0, rtol=0)
    # the weights of the only good step, loaded into a fresh model from the checkpoint
    reloaded = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), adapter_path=str(checkpoint)).load()
    good = snaps.weights[0]
    for name, value in reloaded.model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(value, good[name], atol=0, rtol=0)
    assert trainer.state.log_history[-1][NONFINITE_LOG_KEY] == 2


def test_ppo_skips_nonfinite_steps_and_stops_with_a_checkpoint(tiny_dirs, tmp_path, caplog):
    from datasets import Dataset
    from PIL import Image
    from transformers import set_seed

    from mmalign.models import ScalarHeadModel, load_adapter
    from mmalign.ppo import PPOConfig, PPOTrainer, build_models
    from mmalign.qlora import LoraSettings

    torch.manual_seed(1)
    scorer = load_adapter(tiny_dirs["llava"])
    scorer.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    ScalarHeadModel(scorer, kind="reward").save_pretrained(tmp_path / "reward")
    args = PPOConfig(output_dir=str(tmp_path / "run"), reward_model_path=str(tmp_path / "reward"), rollout_batch_size=2,
                     per_device_train_batch_size=1, per_device_eval_batch_size=2, ppo_epochs=2, max_steps=3,
                     max_new_tokens=4, report_to="none", use_cpu=True, save_strategy="no", max_length=256, seed=0,
                     max_nonfinite_steps=3)
    prompts = Dataset.from_dict({"images": [[Image.new("RGB", (32, 32), c)] for c in ("red", "blue")],
                                 "prompt": ["is there a cat?", "what color is it?"]})
    set_seed(0)
    adapter, reward, _, critics = build_models(
        ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), lora_r=4, lora_alpha=8, lora_dropout=0.0), args)
    trainer = PPOTrainer(adapter, args, prompts, reward, None, critics)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    # the policy's first LoRA layer outputs NaN whenever gradients are on (PPO minibatches, not the rollout)
    lora = next(m for n, m in adapter.model.named_modules() if n.endswith("lora_A.default"))
    lora.register_forward_hook(lambda module, inputs, output: output * float("nan") if torch.is_grad_enabled() else None)
    with caplog.at_level("WARNING", logger="mmalign.ppo.trainer"), pytest.raises(
            NonFiniteTrainingError, match="PPO stopped in iteration 1: 3 minibatch steps in a row had a NaN/inf"):
        trainer.train()
    assert "minibatch step skipped (1 in a row, 1 in total)" in caplog.text
    assert trainer.nonfinite_skipped == 3 and trainer.iteration == 0
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:  # policy, critic and value head: no step was taken
            assert torch.equal(p.detach(), before[name]), name
    checkpoint = tmp_path / "run" / "checkpoint-0"
    assert checkpoint_problem(checkpoint) is None
    policy = load_file(checkpoint / "adapter_model.safetensors")
    assert policy and all(torch.isfinite(v).all() for v in policy.values())


# ---------------------------------------------------------------------------- the CLI: one line, exit 1
def one_error_line(capsys):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    return lines[0]


def test_cli_nonfinite_stop_is_one_error_line_with_the_checkpoint_to_resume(tiny_dirs, pairs_dir, tmp_path, capsys,
                                                                            monkeypatch, caplog):
    """Not bad input: exit code 1 (docs/robustness.md), one line naming the checkpoint and how to
    resume with a lower learning rate; following it trains to the end."""
    from mmalign.cli import main

    original = DPOTrainer.compute_loss

    def nan_after_first_step(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original(self, model, inputs, return_outputs, num_items_in_batch)
        return loss * float("nan") if model.training and self.state.global_step >= 1 else loss

    monkeypatch.setattr(DPOTrainer, "compute_loss", nan_after_first_step)
    out = tmp_path / "run"
    argv = ["train", "dpo", "--model_name_or_path", str(tiny_dirs["llava"]), "--lora_r", "4", "--dataset_path",
            str(pairs_dir), "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "2",
            "--max_length", "256", "--report_to", "none", "--use_cpu", "true", "--learning_rate", "1e-2",
            "--max_nonfinite_steps", "2", "--save_strategy", "no"]
    assert main(argv) == 1
    checkpoint = out / "checkpoint-3"
    assert one_error_line(capsys) == (
        "error: training stopped at step 3: 2 optimizer steps in a row had a NaN/inf loss or gradient "
        f"(max_nonfinite_steps=2); every one was skipped, so {checkpoint} holds the last good weights. Check the "
        f"data and lower the learning rate, then resume with --resume_from_checkpoint {checkpoint} "
        "--resume_with_changes true (MMALIGN_DEBUG=1 shows the traceback)")
    assert checkpoint_problem(checkpoint) is None and not (out / "final").exists()
    monkeypatch.setattr(DPOTrainer, "compute_loss", original)
    with caplog.at_level("WARNING", logger="mmalign.training"):
        assert main([*argv, "--learning_rate", "1e-3", "--resume_from_checkpoint", str(checkpoint),
                     "--resume_with_changes", "true"]) == 0
    assert "changed from the next step on: learning_rate 0.01 → 0.001" in caplog.text
    assert (out / "final" / "adapter_model.safetensors").exists()


def test_cli_ppo_nonfinite_stop_is_one_error_line(tiny_dirs, tmp_path, capsys, monkeypatch, save_scorers):
    import dataclasses

    import yaml
    from datasets import Dataset
    from PIL import Image

    import mmalign.ppo.trainer as ppo_trainer
    from mmalign.cli import main
    from mmalign.data_builders.storage import save_prompt_set

    original = ppo_trainer.ppo_policy_loss
    monkeypatch.setattr(ppo_trainer, "ppo_policy_loss",
                        lambda *a, **k: dataclasses.replace(out := original(*a, **k), loss=out.loss * float("nan")))
    save_prompt_set(Dataset.from_dict({"images": [[Image.new("RGB", (32, 32), c)] for c in ("red", "blue")],
                                       "prompt": ["is there a cat?", "what color is it?"]}).to_list(),
                    tmp_path / "prompts")
    out = tmp_path / "run"
    assert main(["train", "ppo", "--model_name_or_path", str(tiny_dirs["llava"]), "--lora_r", "4",
                 "--lora_alpha", "8", "--dataset_path", str(tmp_path / "prompts"), "--reward_model_path",
                 str(save_scorers(0.0) / "reward"), "--output_dir", str(out), "--max_steps", "2",
                 "--rollout_batch_size", "2", "--per_device_train_batch_size", "1", "--max_new_tokens", "4",
                 "--max_length", "256", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no"]) == 1
    checkpoint = out / "checkpoint-0"
    line = one_error_line(capsys)
    assert line.startswith("error: PPO stopped in iteration 1: 3 minibatch steps in a row had a NaN/inf loss")
    assert f"resume with --resume_from_checkpoint {checkpoint} (and --resume_with_changes true" in line
    assert checkpoint_problem(checkpoint) is None
    recorded = yaml.safe_load((checkpoint / "mmalign_config.yaml").read_text())
    assert recorded["max_nonfinite_steps"] == 3 and recorded["rollout_batch_size"] == 2
