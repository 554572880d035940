"""The shape of the command line: one set of model-loading flags, `mmalign bench NAME`
generated from the benchmark registry, the scene world under `mmalign world`, one exit code
for bad input, and every command line of the README and docs parsing as written."""

import argparse
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from mmalign.benchmarks import BENCHMARKS, REWARD_BENCHMARKS
from mmalign.benchmarks.chair import CAPTION_PROMPT
from mmalign.cli import build_parser, main
from mmalign.cli.common import load_model, model_kwargs

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MODEL_FLAGS = {"--dtype", "--load-in-4bit", "--bnb-4bit-compute-dtype", "--device-map", "--trust-remote-code"}
MODEL_COMMANDS = [*(("bench", name) for name in BENCHMARKS), ("data", "build", "ai-feedback"), ("world", "feedback"),
                  ("data", "build", "scene-feedback"), ("score",), ("studio", "load"), ("precompute-ref",)]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def listed(parser: argparse.ArgumentParser) -> set[str]:
    """The subcommands a parser's --help lists."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest for choice in action._choices_actions}


def command(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = subcommands(parser)[name]
    return parser


def parse(*argv) -> argparse.Namespace:
    return build_parser().parse_args([str(a) for a in argv])


# ---------------------------------------------------------------------------- model loading
@pytest.mark.parametrize("path", MODEL_COMMANDS, ids=" ".join)
def test_every_model_loading_command_has_the_same_flags(path):
    parser = command(*path)
    assert MODEL_FLAGS <= {s for a in parser._actions for s in a.option_strings}
    shown = parser.format_help()
    assert "--load-in-4bit" in shown and "--bnb-4bit-compute-dtype" in shown
    assert "--load-4bit" not in shown and not re.search(r"(?<![\w-])--compute-dtype", shown)  # former spellings hidden


def test_former_spellings_still_parse_and_compute_dtype_defaults():
    pope = ["bench", "pope", "--questions", "q", "--answers", "a", "--out", "o"]
    args = parse(*pope, "--load-4bit", "--dtype", "bfloat16")
    assert args.load_in_4bit and model_kwargs(args)["quantization"].compute_dtype == "bfloat16"  # = --dtype
    args = parse(*pope, "--load-in-4bit", "--bnb-4bit-compute-dtype", "float16")
    assert model_kwargs(args)["quantization"].compute_dtype == "float16"
    assert model_kwargs(parse(*pope)) == {"dtype": "float32", "quantization": None, "trust_remote_code": False}

    ref = ["precompute-ref", "--model", "m", "--data", "d", "--out", "o", "--load-in-4bit"]
    assert model_kwargs(parse(*ref))["quantization"].compute_dtype == "bfloat16"  # precompute-ref's own default
    assert model_kwargs(parse(*ref, "--compute-dtype", "float32"))["quantization"].compute_dtype == "float32"
    args = parse("score", "--model", "m", "--data", "d", "--out", "o", "--device-map", "auto", "--trust-remote-code")
    assert model_kwargs(args)["device_map"] == "auto" and model_kwargs(args)["trust_remote_code"] is True


def test_load_model_loads_in_4bit_with_the_adapter_on_the_main_model_only(tmp_path):
    from mmalign.models import load_adapter
    from mmalign.models.tiny import save_tiny
    from mmalign.qlora import LoraSettings

    tiny = save_tiny("llava", tmp_path / "tiny")
    lora = load_adapter(tiny)
    lora.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    lora.model.save_pretrained(tmp_path / "lora")
    args = parse("studio", "load", "--project", tmp_path, "--prompts", "p", "--model", tiny, "--adapter",
                 tmp_path / "lora", "--load-in-4bit", "--bnb-4bit-compute-dtype", "float32")
    adapter = load_model(args)
    layers = {type(m).__name__ for m in adapter.model.modules()}
    assert "Linear4bit" in layers and any("lora_A" in name for name, _ in adapter.model.named_modules())
    assert not adapter.model.training
    judge = load_model(args, str(tiny))  # another checkpoint: same loading flags, no adapter
    assert not any("lora_A" in name for name, _ in judge.model.named_modules())


# ---------------------------------------------------------------------------- bench from the registry
def test_bench_commands_are_generated_from_the_registry():
    bench = command("bench")
    assert set(subcommands(bench)) == listed(bench) == {*BENCHMARKS, *REWARD_BENCHMARKS, "report"}
    for name, (_, config) in BENCHMARKS.items():
        dests = {a.dest for a in command("bench", name)._actions}
        exposed = [f.name for f in dataclasses.fields(config) if "help" in f.metadata]
        assert exposed and {f"config_{field}" for field in exposed} <= dests, name


def test_generated_flags_carry_the_fields_types_defaults_and_choices(capsys):
    args = parse("bench", "chair", "--answers", "a", "--out", "o", "--num-images", "3", "--sample-seed", "2",
                 "--image-ids", "1", "2")
    assert (args.config_num_images, args.config_seed, args.config_image_ids) == (3, 2, ["1", "2"])
    assert args.config_prompt == CAPTION_PROMPT and args.config_vocabulary == "auto"
    assert args.config_instances is None and args.config_image_dir is None
    args = parse("bench", "safety", "--questions", "q", "--answers", "a", "--out", "o", "--cost-threshold", "0.5")
    assert args.config_cost_threshold == 0.5
    with pytest.raises(SystemExit):
        parse("bench", "pope", "--questions", "q", "--answers", "a", "--out", "o", "--parsing", "loose")
    assert "invalid choice: 'loose'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a field without a default is a required flag
        parse("bench", "amber", "--answers", "a", "--out", "o")
    assert "--data" in capsys.readouterr().err
    shown = command("bench", "pope").format_help()
    assert "(default: official)" in shown and "--answers ANSWERS [ANSWERS ...]" in shown  # SPLIT=FILE pairs


# ---------------------------------------------------------------------------- the scene world
def test_scene_world_commands_live_under_world_and_the_former_names_are_hidden():
    assert listed(command("world")) == {"make", "sft-data", "pretrain", "measure", "feedback", "safety", "prompts",
                                       "counterfactual"}
    build = command("data", "build")
    assert listed(build) == {"corrections", "ai-feedback", "safety-pairs"}
    assert {"scene-feedback", "scene-safety", "scene-prompts"} <= set(subcommands(build))
    assert "scene-" not in build.format_help() and "scene-" not in command("data").format_help()


def test_former_scene_builder_name_writes_the_same_dataset_with_a_note(tmp_path, capsys):
    from datasets import load_from_disk

    argv = ["--scenes", "3", "--kinds", "exist", "--seed", "1"]
    assert main(["world", "prompts", *argv, "--out", str(tmp_path / "new")]) == 0
    assert "prompt set (scene world, for PPO)" in capsys.readouterr().out
    assert main(["data", "build", "scene-prompts", *argv, "--out", str(tmp_path / "old")]) == 0
    assert "'mmalign data build scene-prompts' is now 'mmalign world prompts'" in capsys.readouterr().err
    assert load_from_disk(str(tmp_path / "new")).to_list() == load_from_disk(str(tmp_path / "old")).to_list()


# ---------------------------------------------------------------------------- bad input, every group
@pytest.mark.parametrize("argv", [
    "data validate nope",
    "data build corrections nope.jsonl --out o",
    "bench pope --questions nope.json --answers a.jsonl --out o",
    "bench report nope --out o",
    "score --model nope --data d --out o",
    "precompute-ref --model ./nope --data d --out o",
    "export --base ./nope --adapter a --out o",
    "train dpo --config nope.yaml",
    "world feedback --model ./nope --out o",
    "world make --out o --size 0",
    "world measure --world nope --out o",
    "data build scene-feedback --model ./nope --out o",
    "studio status --project nope",
    "plan --model ./nope --method dpo",
    "experiments report --out nope",
], ids=lambda argv: " ".join(argv.split()[:2]))
def test_bad_input_is_one_error_line_and_exit_code_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv.split()) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_a_runtime_failure_is_one_error_line_and_exit_code_1(tmp_path, monkeypatch, capsys):
    import json
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the judge's retries
    template = tmp_path / "template.json"
    template.write_text(json.dumps([{"question_type": "attribute", "question_topic": "animal", "image_id": "1",
                                     "image_src": "x.jpg", "image_content": ["cat"], "question": "What is it?",
                                     "gt_answer": "A cat.", "model_answer": ""}]))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 0, "model_answer": "A dog."}) + "\n")
    code = main(["bench", "mmhal", "--template", str(template), "--answers", str(answers), "--judge-url",
                 "http://127.0.0.1:9/v1", "--judge-model", "j", "--out", str(tmp_path / "m"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("error: ") == 1 and "judge http://127.0.0.1:9/v1" in err and "MMALIGN_DEBUG=1" in err


# ---------------------------------------------------------------------------- the docs
def doc_command_lines() -> list[tuple[str, str]]:
    """``mmalign ...`` lines of the README's and docs' shell blocks (continuations joined;
    lines with alternatives ``a|b`` or ``...`` left out)."""
    lines = []
    for page in PAGES:
        for lang, block in re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S):
            if lang in ("python", "yaml"):
                continue
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"^(\w+=\S*\s+)+", "", re.sub(r"^\$ ", "", line.strip()))
                line = re.split(r"\s{3,}", line)[0]  # the README's list: command, then what it does
                if line.startswith("mmalign ") and "..." not in line and "|" not in line:
                    lines.append((page.relative_to(ROOT).as_posix(), line))
    return lines


@pytest.mark.parametrize("page, line", doc_command_lines(), ids=lambda v: v if "/" in v or v.endswith(".md") else None)
def test_every_documented_command_line_parses(page, line, capsys):
    argv = shlex.split(line, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help lines print and exit 0
        assert exit_.code == 0 and "--help" in argv, f"{page}: {line}\n{capsys.readouterr().err}"
        return
    assert getattr(args, "func", None), f"{page}: {line}"


def test_docs_use_the_current_spellings():
    for page in PAGES:
        text = page.read_text()
        assert "--load-4bit" not in text and "data build scene-" not in text, page.name
        assert not re.search(r"(?<![\w-])--compute-dtype", text), page.name


def test_world_pretrain_takes_the_instruction_mix_from_its_flags_and_a_recipe(monkeypatch, tmp_path):
    import mmalign.cli.world as world_cli
    from mmalign.experiments.pretrain_scene_vlm import PretrainConfig
    from mmalign.scene.world import WorldConfig

    made = []
    monkeypatch.setattr(world_cli, "pretrain_scene_vlm",
                        lambda out, config, world, overwrite: made.append((config, world)) or out)
    args = parse("world", "pretrain", "--out", str(tmp_path / "vlm"), "--existence-share", "0.4", "--reading-share", "0.15")
    assert args.func(args) == 0
    assert made == [(PretrainConfig(existence_share=0.4, reading_share=0.15), None)]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("reading_share: 0.2\nepochs: 1.0\npartner_hidden_p: 0.3\ntext_layers: 2\n")
    args = parse("world", "pretrain", "--out", str(tmp_path / "vlm"), "--config", str(recipe), "--reading-share", "0.3")
    args.func(args)
    assert made[-1] == (PretrainConfig(reading_share=0.3, epochs=1.0, model={"text_layers": 2}),
                        WorldConfig(partner_hidden_p=0.3))  # the flag beats the recipe
    args = parse("world", "pretrain", "--out", str(tmp_path / "vlm"))
    args.func(args)
    assert made[-1] == (PretrainConfig(), None)  # the flags' defaults are the shipped recipe


def test_world_sft_data_mix_flags_default_to_scene_sft_dataset():
    import inspect

    from mmalign.cli.world import MIX_SHARES
    from mmalign.scene.sft import scene_sft_dataset

    defaults = inspect.signature(scene_sft_dataset).parameters
    args = parse("world", "sft-data", "--out", "o")
    assert {name: getattr(args, name) for name in MIX_SHARES} == {name: defaults[name].default for name in MIX_SHARES}
    assert parse("world", "sft-data", "--out", "o", "--reading-share", "0.5").reading_share == 0.5


def test_the_mix_flags_are_stage_twos_mix():
    from mmalign.cli.world import MIX_SHARES
    from mmalign.experiments.pretrain_scene_vlm import STAGE2_MIX

    assert tuple(MIX_SHARES) == STAGE2_MIX
