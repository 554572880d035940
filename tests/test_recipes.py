"""Every shipped recipe parses for its method; YAML keys and flags behave as documented."""

from pathlib import Path

import pytest

from mmalign.cli.train import _method_specs
from mmalign.config_io import parse_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "mmalign" / "recipes").glob("*.yaml"))
PREFIXES = {"sft-": "sft", "ddpo-": "dpo", "dpo-": "dpo", "rm-": "rm", "fact-rm-": "rm", "cost-": "cost",
            "ppo-": "ppo", "safe-ppo-": "safe-ppo"}


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
    if recipe.stem.startswith("safe-ppo-"):
        assert args.constrained and args.cost_threshold == -0.5
    assert model.model_name_or_path and args.output_dir == "elsewhere"
    if recipe.stem.startswith("cost-"):
        assert args.kind == "cost"


def test_unknown_key_is_an_error_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearning_rat: 0.1\n")
    with pytest.raises(SystemExit):
        parse_recipe(_method_specs()["rm"][0], ["--config", str(bad)], prog="test")
    assert "unknown option(s) learning_rat" in capsys.readouterr().err


def test_load_recipe_puts_overrides_over_the_recipe_and_names_unknown_keys():
    from mmalign.config_io import load_recipe
    from mmalign.dpo import DPOConfig
    from mmalign.model_config import ModelConfig

    model, args = load_recipe("ddpo-scene-vlm", (ModelConfig, DPOConfig), {"beta": 0.3, "output_dir": "elsewhere"})
    assert (args.beta, args.gamma, args.output_dir) == (0.3, 5.0, "elsewhere")  # gamma from the recipe
    assert model.model_name_or_path == "scene-vlm" and model.load_in_4bit
    with pytest.raises(ValueError, match="overrides: unknown option.*betta"):
        load_recipe("ddpo-scene-vlm", (ModelConfig, DPOConfig), {"betta": 0.3})
