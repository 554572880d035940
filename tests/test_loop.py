"""The on-policy loop: rounds resume after a kill, each round starts from (and is referenced to)
the previous round's policy on scenes of its own, a studio round waits for labels, bad settings
are refused before anything runs."""

import json

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from mmalign import loop as loop_module
from mmalign.cli import main
from mmalign.data_builders.storage import load_preference_dataset, save_prompt_set
from mmalign.dpo import DPOTrainer
from mmalign.loop import LoopConfig, run_loop

TRAINING = {"num_train_epochs": 1, "per_device_train_batch_size": 64, "max_length": 512, "warmup_steps": 0}


def tiny(tmp_path, **kw):
    values = dict(output_dir=str(tmp_path / "loop"), rounds=2, prompts_per_round=2, eval_scenes=2,
                  max_new_tokens=48, training=TRAINING)
    return LoopConfig(**{**values, **kw})


class Killed(RuntimeError):
    pass


def test_a_two_round_loop_resumes_after_a_kill_between_rounds(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    calls = {"feedback": [], "train": [], "policy": []}
    original_train, original_policy = loop_module._train, loop_module._policy
    original_records = loop_module.SceneFeedback.records

    def records(self, policy, round_index, config):
        calls["feedback"].append(round_index)
        return original_records(self, policy, round_index, config)

    def train(config, round_index, round_dir, previous):
        calls["train"].append((round_index, previous))
        if round_index == 1 and len(calls["train"]) == 2:
            raise Killed("killed between round 1's pairs and its training")
        return original_train(config, round_index, round_dir, previous)

    def policy(model_config, adapter, seed):
        calls["policy"].append(adapter)
        return original_policy(model_config, adapter, seed)

    monkeypatch.setattr(loop_module.SceneFeedback, "records", records)
    monkeypatch.setattr(loop_module, "_train", train)
    monkeypatch.setattr(loop_module, "_policy", policy)
    with pytest.raises(Killed):
        run_loop(config, progress=None)
    out = tmp_path / "loop"
    assert calls["feedback"] == [0, 1]
    # round 1's answers come from round 0's policy
    assert calls["policy"] == [None, None, out / "round-0" / "adapter"]  # round 0: answers, training
    round0 = sorted(out.joinpath("round-0").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in (out / "base-metrics.json", out / "round-0" / "metrics.json",
                                               out / "round-0" / "adapter" / "adapter_model.safetensors")}
    calls.update(feedback=[], train=[], policy=[])
    started = {}
    original_init = DPOTrainer.__init__

    def init(self, model, args, train_dataset=None, **kw):
        original_init(self, model, args, train_dataset=train_dataset, **kw)
        started["lora"] = {k: v.clone() for k, v in get_peft_model_state_dict(model.model).items()}
        started["columns"] = self.train_dataset.column_names

    monkeypatch.setattr(DPOTrainer, "__init__", init)
    result = run_loop(config, progress=None)
    # nothing of round 0 (or of round 1's pairs) is done again; round 1 trains from round 0's adapter
    assert calls["feedback"] == [] and calls["train"] == [(1, out / "round-0" / "adapter")]
    assert calls["policy"][0] == out / "round-0" / "adapter"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and sorted(out.joinpath("round-0").iterdir()) == round0
    # round 1's DPO starts where round 0 ended, and its reference (precomputed before training) is that policy
    saved = load_file(out / "round-0" / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == started["lora"].keys() and any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)
    for key, value in saved.items():
        torch.testing.assert_close(started["lora"][key], value)
    assert "ref_chosen_logps" in started["columns"]
    assert [row.get("round", 0) for row in result.rounds] == [0, 1, 2] and result.waiting is None
    # each round answered scenes of its own
    scenes = [{json.loads(m)["scene"] for m in load_preference_dataset(out / f"round-{k}" / "pairs")["meta"]}
              for k in (0, 1)]
    assert scenes[0] and scenes[1] and not scenes[0] & scenes[1]
    report = (out / "report.md").read_text()
    assert "CHAIR_i (lower)" in report and "recall (higher)" in report and (out / "rounds.png").stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["rounds"] == result.rounds
    # a finished run is only reported again
    calls.update(feedback=[], train=[], policy=[])
    assert run_loop(config, progress=None).rounds == result.rounds and calls["train"] == []


def test_a_studio_round_waits_for_labels_then_trains_on_the_corrections(tmp_path):
    from mmalign.scene.feedback import scene_prompt_records
    from mmalign.scene.world import WorldConfig
    from mmalign.studio.project import StudioProject

    save_prompt_set(scene_prompt_records(WorldConfig(seed=0), 2, kinds=["describe"], seed=0), tmp_path / "prompts")
    project_dir = tmp_path / "project"
    project = StudioProject.create(project_dir)
    project.add_annotator("ann")
    config = tiny(tmp_path, rounds=1, feedback="studio", prompts_path=str(tmp_path / "prompts"),
                  studio_project=str(project_dir), eval_scenes=0, opa_sft=True)
    first = run_loop(config, progress=None)
    assert first.waiting and "2 answers" in first.waiting and not (tmp_path / "loop" / "round-0" / "pairs").exists()
    again = run_loop(config, progress=None)  # nothing labelled yet: still waiting, nothing added twice
    assert "0 of 2 answers labelled" in again.waiting and len(project.items()) == 2
    project.assign()
    annotator = project.annotators()[0]
    for item in project.items():
        word = item.answer.split()[0]
        project.submit(annotator.id, item.id, {"corrections": [{"start": 0, "end": len(word), "text": "Truly"}]})
    started = {}
    original_init = DPOTrainer.__init__

    def init(self, model, args, train_dataset=None, **kw):
        original_init(self, model, args, train_dataset=train_dataset, **kw)
        started["lora"] = {k: v.clone() for k, v in get_peft_model_state_dict(model.model).items()}

    DPOTrainer.__init__ = init
    try:
        done = run_loop(config, progress=None)
    finally:
        DPOTrainer.__init__ = original_init
    assert done.waiting is None
    # OPA-DPO: SFT on the corrected answers first, and DPO starts from (and is referenced to) that policy
    sft = load_file(tmp_path / "loop" / "round-0" / "sft-adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in sft.items() if "lora_B" in k)
    for key, value in sft.items():
        torch.testing.assert_close(started["lora"][key], value)
    pairs = load_preference_dataset(tmp_path / "loop" / "round-0" / "pairs")
    assert len(pairs) == 2 and all(c.startswith("Truly") for c in pairs["chosen"])
    assert (tmp_path / "loop" / "round-0" / "adapter" / "adapter_config.json").exists()


class ScriptedPolicy:
    def generate(self, images, prompts, **kwargs):
        return [answer for _ in prompts for answer in ("A red cup. A red plate.", "A blue cup. A green plate.")]


class WordJudge:
    def judge(self, images, questions):
        from mmalign.data_builders.claims import Verdict

        return [Verdict(0.0, -1.0) if "red" in q.lower() else Verdict(-1.0, 0.0) for q in questions]


def test_ai_feedback_takes_each_rounds_slice_of_the_prompt_set(tmp_path):
    from PIL import Image

    from mmalign.data_builders.ai_feedback import AIFeedbackConfig
    from mmalign.loop import AIFeedback

    records = [{"images": [Image.new("RGB", (8, 8), "red")], "prompt": f"Question {i}?", "meta": {"i": i}} for i in range(5)]
    save_prompt_set(records, tmp_path / "prompts")
    config = LoopConfig(output_dir=str(tmp_path / "o"), feedback="ai", prompts_path=str(tmp_path / "prompts"),
                        prompts_per_round=2)
    source = AIFeedback(WordJudge(), settings=AIFeedbackConfig(num_samples=2, max_pairs_per_prompt=1))
    pairs = source.records(ScriptedPolicy(), 1, config)
    assert [p["prompt"] for p in pairs] == ["Question 2?", "Question 3?"]
    assert all(p["chosen"] == "A red cup. A red plate." for p in pairs) and source.last_stats["prompts"] == 2
    assert [p["prompt"] for p in source.records(ScriptedPolicy(), 2, config)] == ["Question 4?"]
    with pytest.raises(ValueError, match="holds fewer than 7 prompts"):
        source.records(ScriptedPolicy(), 3, config)


@pytest.mark.parametrize(("values", "words"), [
    ({"rounds": 0}, "rounds"),
    ({"feedback": "crowd"}, "feedback"),
    ({"feedback": "ai"}, "prompts_path"),
    ({"feedback": "studio", "prompts_path": "p"}, "studio_project"),
    ({"studio_min_labelled": 0}, "studio_min_labelled"),
    ({"training": ["lr"]}, "training"),
])
def test_bad_settings_are_refused_naming_the_field(tmp_path, values, words):
    with pytest.raises(ValueError, match=words):
        LoopConfig(output_dir=str(tmp_path), **values)
    with pytest.raises(ValueError, match="unknown loop setting"):
        LoopConfig.from_dict({"output_dir": "x", "round": 2})


def test_cli_loop_takes_a_yaml_config_and_flags(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(config, feedback=None, progress=print):
        seen["config"], seen["feedback"] = config, feedback
        return loop_module.LoopResult([], tmp_path / "report.md")

    monkeypatch.setattr(loop_module, "run_loop", fake)
    (tmp_path / "loop.yaml").write_text("rounds: 4\nprompts_per_round: 50\ntraining:\n  beta: 0.2\n")
    assert main(["loop", "--config", str(tmp_path / "loop.yaml"), "--out", str(tmp_path / "o"), "--rounds", "2",
                 "--set", "loss_type=mdpo", "--opa-sft"]) == 0
    config = seen["config"]
    assert (config.rounds, config.prompts_per_round, config.opa_sft) == (2, 50, True)
    assert config.training == {"beta": 0.2, "loss_type": "mdpo"}
    assert isinstance(seen["feedback"], loop_module.SceneFeedback)
    assert "report:" in capsys.readouterr().out
    assert main(["loop", "--out", str(tmp_path / "o"), "--feedback", "ai", "--prompts", "p"]) == 2
    assert "give exactly one judge" in capsys.readouterr().err

