"""TRL's option names are accepted where the meaning is mmalign's (dataclass keywords, recipes,
flags); an alias and mmalign's name set to different values is refused; ``--config=FILE``
reads the recipe like ``--config FILE``; ``dataset_name`` may be a Hub id, loaded only when run."""

from __future__ import annotations

import pytest
import yaml

from mmalign.cli import main
from mmalign.config_io import ConfigError, load_recipe, parse_recipe
from mmalign.dpo import DPOConfig
from mmalign.grpo import GRPOConfig
from mmalign.model_config import ModelConfig
from mmalign.sft import SFTConfig

BASE = dict(output_dir="out", report_to="none", use_cpu=True)


def test_dataclass_keywords_take_trls_names():
    args = DPOConfig(**BASE, precompute_ref_log_probs=True, dataset_name="some/pairs")
    assert args.precompute_ref_logps is True and args.dataset_path == "some/pairs"
    assert ModelConfig(use_bnb_nested_quant=True).bnb_4bit_use_double_quant is True
    grpo = GRPOConfig(**BASE, max_steps=1, max_completion_length=7, importance_sampling_level="sequence")
    assert (grpo.max_new_tokens, grpo.importance_level) == (7, "sequence")
    assert "precompute_ref_log_probs" not in args.to_dict()  # the resolved config keeps mmalign's names


def test_alias_and_mmalign_name_with_different_values_are_refused():
    with pytest.raises(ConfigError, match="precompute_ref_log_probs .TRL's name for precompute_ref_logps. is true "
                                          "but precompute_ref_logps is false"):
        DPOConfig(**BASE, precompute_ref_log_probs=True, precompute_ref_logps=False)
    assert DPOConfig(**BASE, precompute_ref_log_probs=True, precompute_ref_logps=True).precompute_ref_logps


def test_recipes_and_flags_take_trls_names(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**BASE, "dataset_name": "data/pairs", "use_bnb_nested_quant": True}))
    model, args = parse_recipe((ModelConfig, DPOConfig), ["--config", str(recipe), "--precompute_ref_log_probs",
                                                          "true"], prog="t")
    assert (args.dataset_path, args.precompute_ref_logps, model.bnb_4bit_use_double_quant) == ("data/pairs", True, True)
    _, args = parse_recipe((ModelConfig, DPOConfig), ["--config", str(recipe), "--precompute_ref_log_probs=true"],
                           prog="t")
    assert args.precompute_ref_logps is True
    _, args = load_recipe(recipe, (ModelConfig, DPOConfig), {"precompute_ref_log_probs": True})
    assert args.precompute_ref_logps is True


def test_alias_conflicts_in_a_recipe_or_on_the_command_line_are_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**BASE, "dataset_name": "a/b", "dataset_path": "c/d"}))
    with pytest.raises(ConfigError, match=r"r.yaml: dataset_name \(TRL's name for dataset_path\) is 'a/b' but "
                                          "dataset_path is 'c/d'"):
        parse_recipe((ModelConfig, DPOConfig), ["--config", str(recipe)], prog="t")
    with pytest.raises(ValueError, match="--precompute_ref_logps false and --precompute_ref_log_probs true set the "
                                         "same option"):
        parse_recipe((ModelConfig, DPOConfig), ["--output_dir", "o", "--precompute_ref_logps", "false",
                                                "--precompute_ref_log_probs", "true"], prog="t")


@pytest.mark.parametrize("form", [["--config", "{}"], ["--config={}"]])
def test_config_equals_form_reads_the_recipe(tmp_path, capsys, form):
    missing = tmp_path / "no-such-model"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp_path / "out"), "model_name_or_path": str(missing),
                                      "dataset_path": str(tmp_path / "pairs")}))
    assert main(["train", "dpo", *(item.format(recipe) for item in form)]) == 2
    err = capsys.readouterr().err
    assert "dataset_path is required" not in err and f"model folder {missing} does not exist" in err


def test_dataset_name_hub_id_is_loaded_with_datasets_only_when_run(monkeypatch, tmp_path):
    from datasets import Dataset

    import mmalign.data_builders.storage as storage
    from mmalign.data_builders.sft import load_sft_dataset

    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return Dataset.from_list([{"messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]}])

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    args = SFTConfig(**BASE, dataset_name="someone/chats")
    assert calls == []  # a config never loads anything
    assert len(load_sft_dataset(args.dataset_path)) == 1
    assert calls == [("someone/chats", "train")]
    assert storage.is_hub_dataset_id("someone/chats")
    for local in (str(tmp_path), "./a/b", "/a/b", "a/b/c", "plain"):
        assert not storage.is_hub_dataset_id(local)
