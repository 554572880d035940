"""The main job end to end on a small budget: stages, report, resume."""

import json

import pytest

from mmalign.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path):
    config = DemoConfig(method="ddpo", eval_scenes=4, feedback_scenes=4, epochs=1, batch_size=8, learning_rate=1e-3)
    messages: list[str] = []
    report = run_demo(tmp_path, config, progress=messages.append)
    assert [m[:5] for m in messages] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    results = json.loads((tmp_path / "results.json").read_text())
    pairs = json.loads((tmp_path / "pairs-stats.json").read_text())
    assert results["pairs"] == pairs and pairs["scenes"] == 4 and pairs["records"] > 0
    assert results["config"]["replace_absent"] is False and results["config"]["sft_weight"] == 1.0
    for side in ("before", "after"):
        assert {"F1 (mean of splits)", "CHAIR_s", "CHAIR_i"} <= set(results[side])
    table = report.read_text()
    assert f"{results['before']['CHAIR_s']:.3f}" in table and f"{results['after']['CHAIR_s']:.3f}" in table
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "before_after.png").stat().st_size > 0
    assert "lower" in table and "higher" in table  # every metric says which way is better
    # a second run resumes: no stage is redone and the numbers are read back unchanged
    adapter_time = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    messages.clear()
    run_demo(tmp_path, config, progress=messages.append)
    assert [m[:5] for m in messages] == ["[2/5]", "[5/5]"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapter_time
    assert json.loads((tmp_path / "results.json").read_text())["after"] == results["after"]


def test_demo_policy_loads_each_precision_with_a_trainable_lora():
    import bitsandbytes as bnb
    import torch

    from mmalign.demo import demo_policy

    config = DemoConfig()
    for precision, base_dtype in (("nf4", None), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        policy = demo_policy(config, precision=precision)
        modules = dict(policy.model.named_modules())
        quantized = [m for m in modules.values() if isinstance(m, bnb.nn.Linear4bit)]
        assert bool(quantized) == (precision == "nf4")
        if base_dtype is not None:
            frozen = [p for n, p in policy.model.named_parameters() if "q_proj.base_layer" in n]
            assert frozen and all(p.dtype == base_dtype for p in frozen)
        trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        demo_policy(config, precision="int8")


def test_demo_policy_lora_comes_from_the_seed_not_the_process_random_state():
    """The trainers seed once the model exists; the fresh LoRA must already repeat (it did not,
    and two identical demo runs differed by four recall points)."""
    import torch

    from mmalign.demo import demo_policy

    def lora(seed):
        policy = demo_policy(DemoConfig(), seed=seed)
        return {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}

    torch.manual_seed(1)
    first = lora(0)
    torch.rand(100)  # another process, another starting state
    again = lora(0)
    other = lora(1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first if "lora_A" in n)


def test_pairs_are_marked_done_only_with_their_statistics(tmp_path, monkeypatch):
    """A demo killed while building its pairs must not leave the pairs (the stage's marker)
    without the statistics the report reads: the statistics are written first."""
    from PIL import Image

    import mmalign.demo as demo
    import mmalign.scene.feedback as feedback
    from mmalign.data_builders.corrections import correction_record

    record = correction_record("a red cup and a cat.", "a red cup.", prompt="describe the image.",
                               images=[Image.new("RGB", (32, 32), "red")])
    monkeypatch.setattr(feedback, "scene_feedback_records",
                        lambda *a, **k: ([record], feedback.FeedbackStats(scenes=1)))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while writing the statistics

    monkeypatch.setattr(demo, "asdict", killed)  # the statistics are being turned into JSON
    pairs, stats = tmp_path / "pairs", tmp_path / "pairs-stats.json"
    with pytest.raises(KeyboardInterrupt):
        demo.build_feedback_pairs(None, DemoConfig(feedback_scenes=1), pairs, stats)
    assert not (pairs / "mmalign_dataset.json").exists()  # so a resumed demo builds the pairs again
    monkeypatch.undo()
    monkeypatch.setattr(feedback, "scene_feedback_records",
                        lambda *a, **k: ([record], feedback.FeedbackStats(scenes=1)))
    demo.build_feedback_pairs(None, DemoConfig(feedback_scenes=1), pairs, stats)
    assert (pairs / "mmalign_dataset.json").exists() and json.loads(stats.read_text())["scenes"] == 1


@pytest.mark.slow
def test_demo_killed_between_stages_resumes_from_the_next_stage(tmp_path, capsys):
    """``mmalign demo`` killed with SIGKILL once its pairs are written (between stages 3 and 4)
    resumes with the evaluation and the training, never rebuilding the finished stages."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mmalign.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--method", "ddpo", "--eval-scenes", "4", "--feedback-scenes", "4", "--epochs", "1"]
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmalign", *argv], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 300
        while not (out / "pairs" / "mmalign_dataset.json").exists() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    log = (tmp_path / "killed.log").read_text()
    assert proc.returncode == -signal.SIGKILL, log[-2000:]
    assert "[3/5]" in log and not (out / "adapter").exists()
    pairs_time = (out / "pairs" / "mmalign_dataset.json").stat().st_mtime_ns
    world_time = (out / "world" / "world.json").stat().st_mtime_ns

    assert main(argv) == 0
    stages = [line[:5] for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert stages == ["[2/5]", "[4/5]", "[5/5]"]
    assert (out / "pairs" / "mmalign_dataset.json").stat().st_mtime_ns == pairs_time
    assert (out / "world" / "world.json").stat().st_mtime_ns == world_time
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"] == json.loads((out / "pairs-stats.json").read_text()) and results["pairs"]["scenes"] == 4
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "report.md").exists()


@pytest.mark.slow
def test_demo_with_grpo_trains_on_policy_and_reports_examples(tmp_path):
    config = DemoConfig(method="grpo", eval_scenes=4, feedback_scenes=4, grpo_steps=1)
    messages: list[str] = []
    report = run_demo(tmp_path, config, progress=messages.append)
    assert "description prompts" in messages[2] and "GRPO" in messages[3]
    log = json.loads((tmp_path / "train-log.json").read_text())
    assert "rewards/object_f1" in log[0]
    assert report.read_text().startswith("# GRPO on the scene VLM")
    with pytest.raises(ValueError, match="unknown demo method"):
        DemoConfig(method="ppo")


def test_report_marks_hallucinated_words_and_picks_the_worst_examples(tmp_path):
    from mmalign.demo import example_answers, mark_hallucinations

    assert mark_hallucinations("A red table and two tables, a cup.", ["table"]) == (
        "A red **~~table~~** and two **~~tables~~**, a cup.")
    assert mark_hallucinations("A cup.", []) == "A cup."
    for name, rows in (("eval-before", [(1, ["table"]), (2, ["table", "star"]), (3, [])]),
                       ("eval-after", [(1, []), (2, ["star"]), (3, [])])):
        folder = tmp_path / name / "chair"
        folder.mkdir(parents=True)
        folder.joinpath("details.jsonl").write_text("\n".join(json.dumps(
            {"image_id": i, "caption": f"caption {i}", "hallucinated": h, "ground_truth": ["cup"]}) for i, h in rows))
    examples = example_answers(tmp_path, count=3)
    assert [e["image_id"] for e in examples] == [2, 1]  # most hallucinated first; clean captions are no example
    assert examples[0]["after"]["hallucinated"] == ["star"]
