"""Every shipped recipe parses for its method; YAML keys and flags behave as documented."""

import re
from pathlib import Path

import pytest

from mmalign.cli.train import _method_specs
from mmalign.config_io import parse_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "mmalign" / "recipes").glob("*.yaml"))
PREFIXES = {"sft-": "sft", "ddpo-": "dpo", "dpo-": "dpo", "rm-": "rm", "fact-rm-": "rm", "cost-": "cost",
            "ppo-": "ppo", "safe-ppo-": "safe-ppo", "grpo-": "grpo",
            "safe-grpo-": "safe-grpo"}


def method_of(path: Path) -> str:
    return next(m for prefix, m in sorted(PREFIXES.items(), key=lambda kv: -len(kv[0]))
                if path.name.startswith(prefix))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_parses(recipe):
    import torch

    types, _ = _method_specs()[method_of(recipe)]
    gpu_only = [] if torch.cuda.is_available() else ["--bf16", "false"]  # GPU recipes, parsed on a CPU
    model, args = parse_recipe(types, ["--config", recipe.stem, "--output_dir", "elsewhere", *gpu_only],
                               prog="test")
    if recipe.stem.startswith(("safe-ppo-", "safe-grpo-")):
        assert args.constrained and args.cost_threshold == -0.5
    assert model.model_name_or_path and args.output_dir == "elsewhere"
    if recipe.stem.startswith("cost-"):
        assert args.kind == "cost"
    if recipe.stem.startswith("grpo-"):
        assert args.reward_funcs[0] == "object_f1" and len(args.reward_weights) == len(args.reward_funcs)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if "7b" in r.stem], ids=lambda p: p.stem)
def test_7b_recipes_log_to_tensorboard(recipe):
    """Real runs leave curves to look at; the tensorboard package is a dependency for this."""
    import tensorboard  # noqa: F401 - installed with mmalign

    types, _ = _method_specs()[method_of(recipe)]
    _, args = parse_recipe(types, ["--config", str(recipe), "--bf16", "false"], prog="test")
    assert args.report_to == ["tensorboard"]


def test_unknown_key_is_an_error_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad}: unknown option(s) learning_rat (did you mean learning_rate?)")):
        parse_recipe(_method_specs()["rm"][0], ["--config", str(bad)], prog="test")
    assert capsys.readouterr().err == ""  # no usage dump


def test_load_recipe_puts_overrides_over_the_recipe_and_names_unknown_keys():
    from mmalign.config_io import load_recipe
    from mmalign.dpo import DPOConfig
    from mmalign.model_config import ModelConfig

    model, args = load_recipe("ddpo-scene-vlm", (ModelConfig, DPOConfig), {"beta": 0.3, "output_dir": "elsewhere"})
    assert (args.beta, args.gamma, args.output_dir) == (0.3, 5.0, "elsewhere")  # gamma from the recipe
    assert model.model_name_or_path == "scene-vlm" and model.load_in_4bit
    with pytest.raises(ValueError, match="overrides: unknown option.*betta"):
        load_recipe("ddpo-scene-vlm", (ModelConfig, DPOConfig), {"betta": 0.3})


# ---------------------------------------------------------------------------- recipe problems: one line, exit 2
def refused(capsys, argv):
    """``mmalign train ...`` refused: exit 2 and its one ``error:`` line (no usage dump, no traceback)."""
    from mmalign.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert "usage:" not in captured.err and "Traceback" not in captured.err
    return captured.err.strip()


@pytest.mark.parametrize("text, message", [
    ("model_name_or_path: [x\nbeta: 1\n", "not valid YAML (expected ',' or ']', but got ':' at line 2, column 5)"),
    ("beta: 0.1\n  gamma: 2\n", "not valid YAML (mapping values are not allowed here at line 2, column 8)"),
    ("- beta\n- gamma\n", "a recipe is a mapping of option names to values, not a list"),
    ("just words\n", "a recipe is a mapping of option names to values, not a str"),
    ("learning_rate: abc\n", "learning_rate: expected a number, got 'abc'"),
    ("per_device_train_batch_size: [1, 2]\n", "per_device_train_batch_size: expected an integer, got a list"),
    ("max_steps: 2.5\n", "max_steps: expected an integer, got 2.5"),
    ("use_peft: maybe\n", "use_peft: expected true or false, got 'maybe'"),
    ("beta: null\n", "beta: expected a number, got null"),
    ("save_strategy: no\n", 'save_strategy: expected a string, got false (YAML reads yes/no/on/off as true/false: '
                            'quote the word, e.g. "no")'),
    ("lr_scheduler_type: {a: 1}\n", "lr_scheduler_type: expected one of linear, cosine, "),
    ("optim: adamw\n", "optim: expected one of adamw_torch, adamw_torch_fused"),
    ("learning_rat: 0.1\nbetta: 2\n", "unknown option(s) betta (did you mean beta?), learning_rat (did you mean "
                                      "learning_rate?)"),
    ("beta: -0.5\n", "beta must be a number > 0, got -0.5"),
])
def test_a_recipe_problem_is_one_line_naming_the_recipe_and_key(tmp_path, capsys, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    out = tmp_path / "run"
    line = refused(capsys, ["train", "dpo", "--config", recipe, "--output_dir", out])
    assert line.startswith(f"error: {recipe}: ") and message in line, line
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--config", "no-such-recipe.yaml"], "error: no recipe file 'no-such-recipe.yaml'; shipped recipes: "),
    (["--config"], "error: mmalign train dpo: --config needs a recipe file"),
    (["--config", "ddpo-scene-vlm", "--config", "ddpo-scene-vlm"], "error: mmalign train dpo: --config given twice"),
    (["--beta", "x"], "error: mmalign train dpo: argument --beta: invalid float value: 'x'"),
    (["--betta", "0.2"], "error: mmalign train dpo: unknown option(s) betta (did you mean beta?)"),
    (["--loss_type"], "error: mmalign train dpo: argument --loss_type/--loss-type: expected one argument"),
])
def test_a_command_line_problem_is_one_line(capsys, argv, message):
    assert refused(capsys, ["train", "dpo", *argv]).startswith(message)


def test_a_folder_or_binary_file_as_recipe(tmp_path, capsys):
    assert refused(capsys, ["train", "sft", "--config", tmp_path]).endswith("a folder, not a recipe file")
    binary = tmp_path / "r.yaml"
    binary.write_bytes(b"\xff\xfe\x00beta")
    assert refused(capsys, ["train", "sft", "--config", binary]) == f"error: {binary}: not a text (UTF-8) file"


def test_recipe_values_come_back_as_their_flags_give_them(tmp_path):
    from mmalign.config_io import load_recipe
    from mmalign.dpo import DPOConfig
    from mmalign.model_config import ModelConfig

    recipe = tmp_path / "r.yaml"
    # YAML 1.1 reads 1e-3 (no dot) as a string; a quoted number or flag word is text too
    recipe.write_text("learning_rate: 1e-3\nbeta: '0.2'\nuse_peft: 'yes'\nlora_target_modules: q_proj\n"
                      "output_dir: 2024\n")
    types = (ModelConfig, DPOConfig)
    model, args = load_recipe(recipe, types)
    assert (args.learning_rate, args.beta, model.use_peft, args.output_dir) == (1e-3, 0.2, True, "2024")
    assert model.lora_target_modules == ["q_proj"]  # one module, as --lora_target_modules q_proj gives
    parsed_model, parsed = parse_recipe(types, ["--config", str(recipe)], prog="test")
    assert (parsed.learning_rate, parsed.beta, parsed_model.lora_target_modules) == (1e-3, 0.2, ["q_proj"])
    with pytest.raises(ValueError, match=re.escape("overrides: beta: expected a number, got 'high'")):
        load_recipe(recipe, types, {"beta": "high"})
    with pytest.raises(ValueError, match=re.escape("overrides: gamma must be a number > 0, got -1.0")):
        load_recipe(recipe, types, {"gamma": -1.0})
