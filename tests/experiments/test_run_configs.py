"""Experiments start from the shipped recipes: a run's configuration is the recipe with
only the experiment's stated knobs, data and bookkeeping on top."""

from pathlib import Path

import pytest

from mmalign.config_io import load_recipe
from mmalign.demo import DemoConfig
from mmalign.experiments import ppo, reward_models
from mmalign.model_config import ModelConfig
from mmalign.ppo import PPOConfig
from mmalign.reward import RewardConfig

MODELS = {"reward-model": Path("rm"), "plain-reward-model": Path("plain"), "cost-model": Path("cm")}


@pytest.mark.parametrize("arm, recipe", [("ppo", "ppo-scene-vlm"), ("safe-ppo", "safe-ppo-scene-vlm")])
def test_ppo_runs_are_the_arms_recipe_plus_the_setting(tmp_path, arm, recipe):
    setting = ppo.Setting()
    model, args = ppo.ppo_run_config(setting, Path("base"), MODELS, Path("prompts"), tmp_path / "run", 3, arm)
    _, shipped = load_recipe(recipe, (ModelConfig, PPOConfig))
    assert args.value_clip == shipped.value_clip and args.lam == shipped.lam and args.score_clip == 50.0
    assert (args.kl_coef, args.cost_threshold, args.max_steps) == (setting.kl_coef, setting.budget, setting.iterations)
    assert args.lagrangian is (arm == "safe-ppo") and args.seed == 3
    assert (model.model_name_or_path, model.lora_r, model.lora_alpha) == ("base", 8, 16)


@pytest.mark.parametrize("arm", ["grpo", "safe-grpo"])
def test_safe_grpo_arms_are_one_recipe_with_the_constraint_on_or_only_logged(tmp_path, arm):
    from mmalign.grpo import GRPOConfig

    setting = ppo.Setting()
    _, args = ppo.grpo_run_config(setting, Path("base"), MODELS, Path("prompts"), tmp_path / "run", 2, arm)
    _, shipped = load_recipe("safe-grpo-scene-vlm", (ModelConfig, GRPOConfig))
    assert args.reward_funcs == shipped.reward_funcs == ["reward_model"] and args.cost_funcs == ["cost_model"]
    assert (args.reward_model_path, args.cost_model_path) == ("rm", "cm")
    assert args.constrained is (arm == "safe-grpo") and args.cost_threshold == setting.budget
    assert (args.max_steps, args.prompts_per_step, args.num_generations, args.beta) == (
        setting.grpo_iterations, setting.grpo_prompts, setting.grpo_generations, setting.grpo_beta)
    assert args.epsilon_high == shipped.epsilon_high and args.seed == 2


@pytest.mark.parametrize("extra, recipe", [({}, "rm-scene-vlm"), ({"use_facts": True}, "fact-rm-scene-vlm"),
                                           ({"kind": "cost", "cost_signs": "graded"}, "cost-scene-vlm")])
def test_reward_models_start_from_the_recipe_of_their_kind(tmp_path, extra, recipe):
    setting = reward_models.Setting(epochs=0.5)
    _, args = reward_models.reward_run_config(setting, Path("pairs"), tmp_path, 1, **extra)
    _, shipped = load_recipe(recipe, (ModelConfig, RewardConfig))
    assert (args.kind, args.use_facts, args.cost_signs) == (shipped.kind, shipped.use_facts, shipped.cost_signs)
    assert args.l2_weight == shipped.l2_weight and args.num_train_epochs == 0.5


def test_grpo_runs_are_the_recipe_with_the_arms_rewards(tmp_path):
    from mmalign.demo import demo_grpo_args
    from mmalign.experiments import grpo
    from mmalign.grpo import GRPOConfig

    setting = grpo.Setting(steps=7, learning_rate=3e-4)
    _, shipped = load_recipe("grpo-scene-vlm", (ModelConfig, GRPOConfig))
    for arm in ("grpo-f1", "grpo-f1-yesno"):
        kinds, rewards = grpo.ARMS[arm]
        args = demo_grpo_args(setting.demo_config(), tmp_path / "run", tmp_path / "prompts", rewards=rewards, seed=4)
        assert (args.reward_funcs, args.reward_weights) == (list(rewards), list(rewards.values()))
        assert (args.max_steps, args.learning_rate, args.seed, args.beta) == (7, 3e-4, 4, DemoConfig().grpo_beta)
        assert (args.num_generations, args.loss_aggregation, args.epsilon_high) == (
            shipped.num_generations, shipped.loss_aggregation, shipped.epsilon_high)
    assert grpo.ARMS["grpo-f1-yesno"][0] == ("describe", "exist")
