"""Garbage configs are refused: every option of ModelConfig, SFTConfig, DPOConfig,
RewardConfig and PPOConfig is checked for type and range when the config is made, with one
``ConfigError`` (a ``ValueError``) naming the option and its allowed range; a refused
``mmalign train`` run loads no model and writes nothing."""

import math

import pytest
import yaml

from mmalign.cli import main
from mmalign.config_io import ConfigError
from mmalign.dpo import DPOConfig
from mmalign.model_config import ModelConfig
from mmalign.ppo import PPOConfig
from mmalign.reward import RewardConfig
from mmalign.sft import SFTConfig


def make(cls, tmp_path, **values):
    base = {"output_dir": str(tmp_path / "run"), "report_to": "none", "use_cpu": True}
    if cls is PPOConfig:
        base.update(max_steps=1, rollout_batch_size=2, per_device_train_batch_size=1)
    if cls is ModelConfig:
        base = {}
    return cls(**(base | values))


BAD = [
    # ModelConfig
    (ModelConfig, "dtype", "float8", "dtype must be one of float32, fp32, bfloat16, bf16, float16, fp16, got 'float8'"),
    (ModelConfig, "bnb_4bit_quant_type", "int4", "bnb_4bit_quant_type must be one of nf4, fp4 or null, got 'int4'"),
    (ModelConfig, "bnb_4bit_compute_dtype", "half", "bnb_4bit_compute_dtype must be one of float32"),
    (ModelConfig, "lora_r", 0, "lora_r must be an integer >= 1 or null, got 0"),
    (ModelConfig, "lora_r", 4.5, "lora_r must be an integer >= 1 or null, got 4.5"),
    (ModelConfig, "lora_alpha", -16, "lora_alpha must be an integer >= 1 or null, got -16"),
    (ModelConfig, "lora_dropout", 1.0, "lora_dropout must be a number in [0, 1) or null, got 1.0"),
    (ModelConfig, "lora_target_modules", [], "lora_target_modules must be a non-empty list of module names"),
    (ModelConfig, "load_in_4bit", "yes", "load_in_4bit must be true or false, got 'yes'"),
    (ModelConfig, "attn_implementation", "fast", "attn_implementation must be one of sdpa, eager"),
    (ModelConfig, "model_name_or_path", 7, "model_name_or_path must be a string, got 7"),
    # TrainingArguments options every method uses (here through DPOConfig and SFTConfig)
    (DPOConfig, "learning_rate", -1e-4, "learning_rate must be a number > 0, got -0.0001"),
    (DPOConfig, "learning_rate", 0.0, "learning_rate must be a number > 0, got 0.0"),
    (DPOConfig, "learning_rate", math.nan, "learning_rate must be a number > 0, got nan"),
    (DPOConfig, "learning_rate", "abc", "learning_rate must be a number > 0, got 'abc'"),
    (SFTConfig, "per_device_train_batch_size", 0, "per_device_train_batch_size must be an integer >= 1, got 0"),
    (SFTConfig, "per_device_eval_batch_size", -2, "per_device_eval_batch_size must be an integer >= 1, got -2"),
    (SFTConfig, "gradient_accumulation_steps", 0, "gradient_accumulation_steps must be an integer >= 1, got 0"),
    (SFTConfig, "max_steps", 0, "max_steps must be an integer >= 1 or -1, got 0"),
    (SFTConfig, "num_train_epochs", 0.0, "num_train_epochs must be a number > 0, got 0.0"),
    (SFTConfig, "weight_decay", math.inf, "weight_decay must be a number >= 0, got inf"),
    (SFTConfig, "adam_beta1", 1.0, "adam_beta1 must be a number in [0, 1), got 1.0"),
    (SFTConfig, "adam_beta2", -0.1, "adam_beta2 must be a number in [0, 1), got -0.1"),
    (SFTConfig, "adam_epsilon", 0.0, "adam_epsilon must be a number > 0, got 0.0"),
    (SFTConfig, "max_grad_norm", -1.0, "max_grad_norm must be a number >= 0 or null, got -1.0"),
    (SFTConfig, "seed", -1, "seed must be an integer in [0, 4294967295], got -1"),
    (SFTConfig, "data_seed", 2**32, "data_seed must be an integer in [0, 4294967295] or null, got 4294967296"),
    (SFTConfig, "logging_steps", -5, "logging_steps must be a number > 0, got -5"),
    (SFTConfig, "save_steps", 0, "save_steps must be a number > 0, got 0"),
    (SFTConfig, "save_total_limit", -1, "save_total_limit must be an integer >= 0 or null, got -1"),
    (SFTConfig, "lr_scheduler_type", "exponential", "lr_scheduler_type must be one of linear, cosine"),
    (SFTConfig, "save_strategy", "sometimes", "save_strategy must be one of no, steps, epoch, best, got 'sometimes'"),
    (SFTConfig, "label_smoothing_factor", 0.1, "label_smoothing_factor must be 0: mmalign's losses do not use it"),
    (SFTConfig, "remove_unused_columns", True, "remove_unused_columns must be false: the collators read"),
    (SFTConfig, "max_nonfinite_steps", -1, "max_nonfinite_steps must be an integer >= 0, got -1"),
    (SFTConfig, "resume_with_changes", "maybe", "resume_with_changes must be true or false, got 'maybe'"),
    (SFTConfig, "max_length", 0, "max_length must be an integer >= 1 or null, got 0"),
    # DPO
    (DPOConfig, "beta", -0.1, "beta must be a number > 0, got -0.1"),
    (DPOConfig, "beta", 0.0, "beta must be a number > 0, got 0.0"),
    (DPOConfig, "gamma", 0.0, "gamma must be a number > 0, got 0.0"),
    (DPOConfig, "gamma", -5.0, "gamma must be a number > 0, got -5.0"),
    (DPOConfig, "label_smoothing", 0.5, "label_smoothing must be a number in [0, 0.5), got 0.5"),
    (DPOConfig, "label_smoothing", -0.1, "label_smoothing must be a number in [0, 0.5), got -0.1"),
    (DPOConfig, "loss_type", "dpo", "loss_type must be one or more of sigmoid, ipo, hinge, robust, ddpo, bco_pair, mdpo, simpo, orpo, sft, got 'dpo'"),
    (DPOConfig, "sft_weight", -1.0, "sft_weight must be a number >= 0, got -1.0"),
    (DPOConfig, "dynamic_beta_weight", -0.5, "dynamic_beta_weight must be a number >= 0, got -0.5"),
    (DPOConfig, "dynamic_beta_k", 0.0, "dynamic_beta_k must be a number > 0, got 0.0"),
    (DPOConfig, "ddpo_normalize", 1, "ddpo_normalize must be true or false, got 1"),
    (DPOConfig, "max_length", -1, "max_length must be an integer >= 1 or null, got -1"),
    # reward and cost models
    (RewardConfig, "kind", "value", "kind must be one of reward, cost, got 'value'"),
    (RewardConfig, "cost_signs", "sign", "cost_signs must be one of label, graded, none, got 'sign'"),
    (RewardConfig, "facts_position", "end", "facts_position must be one of evaluation, prompt, got 'end'"),
    (RewardConfig, "l2_weight", -1e-3, "l2_weight must be a number >= 0, got -0.001"),
    (RewardConfig, "center_weight", -1.0, "center_weight must be a number >= 0, got -1.0"),
    (RewardConfig, "facts_seed", 1.5, "facts_seed must be an integer, got 1.5"),
    # PPO and PPO-Lagrangian
    (PPOConfig, "max_steps", -1, "max_steps must be an integer >= 1 (the number of PPO iterations"),
    (PPOConfig, "rollout_batch_size", 0, "rollout_batch_size must be an integer >= 1, got 0"),
    (PPOConfig, "ppo_epochs", 0, "ppo_epochs must be an integer >= 1, got 0"),
    (PPOConfig, "max_new_tokens", 0, "max_new_tokens must be an integer >= 1, got 0"),
    (PPOConfig, "temperature", 0.0, "temperature must be a number > 0, got 0.0"),
    (PPOConfig, "top_p", 0.0, "top_p must be a number in (0, 1], got 0.0"),
    (PPOConfig, "top_p", 1.5, "top_p must be a number in (0, 1], got 1.5"),
    (PPOConfig, "kl_coef", -0.1, "kl_coef must be a number >= 0, got -0.1"),
    (PPOConfig, "clip_range", 0.0, "clip_range must be a number in (0, 1), got 0.0"),
    (PPOConfig, "clip_range", 1.0, "clip_range must be a number in (0, 1), got 1.0"),
    (PPOConfig, "value_clip", 0.0, "value_clip must be a number > 0 or null, got 0.0"),
    (PPOConfig, "value_coef", -1.0, "value_coef must be a number >= 0, got -1.0"),
    (PPOConfig, "gamma", 1.5, "gamma must be a number in [0, 1], got 1.5"),
    (PPOConfig, "lam", -0.1, "lam must be a number in [0, 1], got -0.1"),
    (PPOConfig, "score_clip", -50.0, "score_clip must be a number > 0 or null, got -50.0"),
    (PPOConfig, "target_kl", 0.0, "target_kl must be a number > 0 or null, got 0.0"),
    (PPOConfig, "choice_bonus", -2.0, "choice_bonus must be a number >= 0, got -2.0"),
    (PPOConfig, "incomplete_penalty", -8.0, "incomplete_penalty must be a number >= 0, got -8.0"),
    (PPOConfig, "length_coef", math.nan, "length_coef must be a finite number, got nan"),
    (PPOConfig, "cost_threshold", math.inf, "cost_threshold must be a finite number, got inf"),
    (PPOConfig, "lambda_init", 0.0, "lambda_init must be a number > 0, got 0.0"),
    (PPOConfig, "lambda_lr", -0.1, "lambda_lr must be a number >= 0, got -0.1"),
    (PPOConfig, "lambda_max", 0.0, "lambda_max must be a number > 0 or null, got 0.0"),
    (PPOConfig, "lambda_update_delay", -1, "lambda_update_delay must be an integer >= 0, got -1"),
    (PPOConfig, "episode_cost_window", 0, "episode_cost_window must be an integer >= 1, got 0"),
    (PPOConfig, "save_strategy", "epoch", "save_strategy must be one of steps, no, got 'epoch'"),
    (PPOConfig, "gradient_accumulation_steps", 2, "gradient_accumulation_steps must be 1 for PPO"),
]


@pytest.mark.parametrize("cls, name, value, message", BAD, ids=[f"{c.__name__}-{n}-{v}" for c, n, v, _ in BAD])
def test_an_option_out_of_range_is_refused_naming_it_and_its_range(tmp_path, cls, name, value, message):
    with pytest.raises(ConfigError) as err:
        make(cls, tmp_path, **{name: value})
    assert isinstance(err.value, ValueError)
    assert name in err.value.problems
    assert message in str(err.value)


IMPOSSIBLE = [
    (ModelConfig, {"load_in_4bit": True, "use_peft": False}, "use_peft", "load_in_4bit needs use_peft"),
    (ModelConfig, {"train_vision": True}, "train_vision", "train_vision trains the vision tower in full"),
    (ModelConfig, {"use_peft": False, "adapter_path": "sft-adapter"}, "adapter_path", "adapter_path starts from"),
    (DPOConfig, {"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing",
     "label_smoothing is used by the sigmoid, ddpo, robust losses, not by loss_type hinge"),
    (DPOConfig, {"image_feature_cache_dir": "cache", "cache_image_features": False}, "image_feature_cache_dir",
     "image_feature_cache_dir needs cache_image_features: true"),
    (RewardConfig, {"kind": "cost", "center_weight": 1e-3}, "center_weight",
     "center_weight regularises reward models only"),
    (PPOConfig, {"rollout_batch_size": 3, "per_device_train_batch_size": 2}, "rollout_batch_size",
     "rollout_batch_size (3) must be a multiple of per_device_train_batch_size (2)"),
    (PPOConfig, {"lambda_init": 2.0, "lambda_max": 1.0}, "lambda_max",
     "lambda_max (1.0) must be at least lambda_init (2.0)"),
]


@pytest.mark.parametrize("cls, values, name, message", IMPOSSIBLE, ids=[v[2] for v in IMPOSSIBLE])
def test_an_impossible_combination_is_refused(tmp_path, cls, values, name, message):
    with pytest.raises(ConfigError) as err:
        make(cls, tmp_path, **values)
    assert name in err.value.problems and message in str(err.value)


def test_every_problem_is_listed_in_one_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        make(DPOConfig, tmp_path, beta=-1.0, learning_rate=0.0, per_device_train_batch_size=0, loss_type="x")
    assert set(err.value.problems) == {"beta", "learning_rate", "per_device_train_batch_size", "loss_type"}
    assert str(err.value).count("must be") == 4


@pytest.mark.parametrize("cls", [ModelConfig, SFTConfig, DPOConfig, RewardConfig, PPOConfig])
def test_defaults_and_edges_of_the_ranges_are_accepted(tmp_path, cls):
    make(cls, tmp_path)
    edges = {
        ModelConfig: {"lora_r": 1, "lora_dropout": 0.0, "lora_target_modules": ["all-linear"]},
        SFTConfig: {"max_steps": 1, "seed": 0, "adam_beta1": 0.0, "max_grad_norm": 0.0, "logging_steps": 0.1},
        DPOConfig: {"label_smoothing": 0.49, "loss_type": "robust", "beta": 1e-6, "gamma": 1e-3, "sft_weight": 0.0},
        RewardConfig: {"kind": "cost", "center_weight": 0.0, "cost_signs": "graded", "l2_weight": 0.0},
        PPOConfig: {"gamma": 1.0, "lam": 0.0, "top_p": 1.0, "kl_coef": 0.0, "lambda_lr": 0.0, "cost_threshold": -0.5,
                    "length_coef": -1.0, "lambda_max": 1.0, "save_strategy": "no"},
    }[cls]
    make(cls, tmp_path, **edges)


# ---------------------------------------------------------------------------- refused runs write nothing
@pytest.fixture(scope="module")
def run_inputs(tiny_dirs, pairs_dir, sft_json, prompts_dir, save_scorers):
    scorers = save_scorers(0.0)
    common = ["--model_name_or_path", str(tiny_dirs["llava"]), "--lora_r", "4", "--report_to", "none",
              "--use_cpu", "true", "--max_length", "256", "--per_device_train_batch_size", "2"]
    pairs = ["--dataset_path", str(pairs_dir), "--max_steps", "2"]
    ppo = ["--dataset_path", str(prompts_dir), "--reward_model_path", str(scorers / "reward"), "--max_steps", "1",
           "--rollout_batch_size", "2", "--max_new_tokens", "4", "--save_strategy", "no"]
    return {
        "sft": common + ["--dataset_path", str(sft_json[0]), "--image_folder", str(sft_json[1]), "--max_steps", "2"],
        "dpo": common + pairs, "rm": common + pairs, "cost": common + pairs, "ppo": common + ppo,
        "safe-ppo": common + ppo + ["--cost_model_path", str(scorers / "cost")],
    }


#: (method, flags, what the one error line says): values the old code trained on, or refused
#: only after it had loaded the model and written output_dir/mmalign_config.yaml
REFUSED = [
    ("sft", ["--learning_rate", "-0.001"], "learning_rate must be a number > 0, got -0.001"),
    ("dpo", ["--loss_type", "dpo"], "loss_type must be one or more of sigmoid, ipo, hinge, robust, ddpo, bco_pair, mdpo, simpo, orpo, sft, got 'dpo'"),
    ("dpo", ["--dynamic_beta", "true"], "dynamic_beta needs a 'reward_margin' column in the data"),
    ("dpo", ["--resume_from_checkpoint", "no-such-checkpoint"], "cannot resume from no-such-checkpoint: not a folder"),
    ("rm", ["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be an integer >= 1, got 0"),
    ("cost", ["--center_weight", "0.1"], "center_weight regularises reward models only"),
    ("ppo", ["--clip_range", "-0.2"], "clip_range must be a number in (0, 1), got -0.2"),
    ("safe-ppo", ["--gamma", "1.5"], "gamma must be a number in [0, 1], got 1.5"),
]


@pytest.mark.parametrize("method, flags, message", REFUSED, ids=[f"{m}-{f[0][2:]}" for m, f, _ in REFUSED])
def test_a_refused_run_loads_no_model_and_writes_nothing(run_inputs, tmp_path, capsys, monkeypatch,
                                                         method, flags, message):
    def no_loading(self, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(ModelConfig, "load", no_loading)
    out = tmp_path / "run"
    assert main(["train", method, *run_inputs[method], "--output_dir", str(out), *flags]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


def test_a_recipe_value_out_of_range_names_the_recipe_and_a_flag_the_command_line(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"beta": -1.0, "per_device_train_batch_size": 0, "output_dir": str(tmp_path)}))
    assert main(["train", "dpo", "--config", str(recipe), "--gamma", "0"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"error: {recipe}: per_device_train_batch_size must be an integer >= 1, got 0; beta must be a "
                    "number > 0, got -1.0; command line: gamma must be a number > 0, got 0.0")
