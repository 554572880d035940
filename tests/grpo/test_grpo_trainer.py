"""GRPOTrainer: the update against hand computation, columns reach rewards, dynamic sampling,
Safe GRPO's λ, exact resume and the CLI."""

import pytest
import torch
from datasets import Dataset
from PIL import Image

from mmalign.grpo import GRPOConfig, GRPOTrainer
from mmalign.losses.grpo import group_advantages
from mmalign.model_config import ModelConfig

COLORS = ("red", "blue", "green", "yellow")


def prompts(n=4):
    return Dataset.from_dict({
        "images": [[Image.new("RGB", (32, 32), COLORS[i % 4])] for i in range(n)],
        "prompt": ["is there a cat?", "describe the image.", "is there a dog?", "what color is it?"][:n],
        "reference": ["no", None, "yes", None][:n],
        "objects": [["cat"], ["dog", "cat"], [], ["cat"]][:n],
    })


def by_position(prompts, completions, **_):
    """Different rewards inside every group, whatever the tiny model samples."""
    return [float(i % 3) for i in range(len(completions))]


def make(tiny_dirs, tmp_path, reward_funcs=(by_position,), data=None, family="llava", **kw):
    values = dict(output_dir=str(tmp_path / "run"), prompts_per_step=2, num_generations=4,
                  per_device_train_batch_size=8, per_device_eval_batch_size=4, max_steps=1, max_new_tokens=6,
                  report_to="none", use_cpu=True, learning_rate=1e-2, save_strategy="no", seed=0,
                  reward_funcs=["format"])
    values.update(kw)
    args = GRPOConfig(**values)
    torch.manual_seed(0)
    adapter = ModelConfig(model_name_or_path=str(tiny_dirs[family]), use_peft=True, lora_r=4, lora_alpha=8,
                          lora_dropout=0.0).load()
    return GRPOTrainer(adapter, args, data if data is not None else prompts(), reward_funcs=list(reward_funcs))


def lora_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.adapter.model.named_parameters() if "lora_" in k}


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_one_update_equals_the_loss_computed_by_hand(tiny_dirs, tmp_path, aggregation):
    trainer = make(tiny_dirs, tmp_path, loss_aggregation=aggregation)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    rollout, log = trainer.make_rollout()
    assert rollout.old_logps is None  # one pass, one minibatch: the policy has not moved since sampling
    lengths = rollout.mask.sum(-1).float()
    # ratio 1 at the first step: the per-token loss is -A; aggregate by hand
    a = rollout.advantages
    expected = {"token_mean": -(a * lengths).sum() / lengths.sum(),
                "sequence_mean": -a.mean(),
                "constant": -(a * lengths).sum() / (len(a) * 6)}[aggregation]
    before = lora_weights(trainer)
    stats = trainer.grpo_update(rollout)
    assert stats["loss"] == pytest.approx(float(expected), abs=1e-5)
    assert stats["clip_ratio/region"] == 0.0
    after = lora_weights(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_rewards_see_the_columns_and_advantages_follow_the_group(tiny_dirs, tmp_path):
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(columns)
        seen["prompts"] = prompts
        return by_position(prompts, completions)

    trainer = make(tiny_dirs, tmp_path, reward_funcs=(spy,))
    rollout, log = trainer.make_rollout()
    assert {"images", "reference", "objects", "completion_lengths", "ended"} <= set(seen)
    assert len(seen["prompts"]) == 8 and seen["prompts"][0] == seen["prompts"][3]  # G copies, consecutive
    rewards = torch.tensor([float(i % 3) for i in range(8)])
    assert torch.allclose(rollout.advantages, group_advantages(rewards, 4).advantages)
    assert log["reward"] == pytest.approx(float(rewards.mean()))
    assert log["rewards/spy"] == pytest.approx(float(rewards.mean()))


def test_several_minibatches_keep_the_sampling_policy_for_the_ratio(tiny_dirs, tmp_path):
    trainer = make(tiny_dirs, tmp_path, per_device_train_batch_size=4, num_iterations=2)
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    rollout, _ = trainer.make_rollout()
    assert rollout.old_logps is not None
    batch, features = trainer.adapter.select(rollout.batch, list(range(8)), rollout.features)
    with torch.no_grad():
        now, mask = trainer.adapter.response_logprobs(batch, features)
    assert torch.allclose(now[mask], rollout.old_logps[:, : now.shape[1]][mask], atol=1e-5)
    stats = trainer.grpo_update(rollout)
    assert stats["optimizer_steps"] == 4


def test_dynamic_sampling_drops_tied_groups_and_refills(tiny_dirs, tmp_path):
    def first_prompt_tied(prompts, completions, **_):
        return [0.0 if p == "is there a cat?" else float(i) for i, p in enumerate(prompts)]

    trainer = make(tiny_dirs, tmp_path, reward_funcs=(first_prompt_tied,), dynamic_sampling=True,
                   max_refill_batches=3)
    rollout, log = trainer.make_rollout()
    assert log["groups_kept"] == 2 and log["groups_drawn"] > 2
    assert log["zero_std_fraction"] == 0.0
    assert rollout.batch.input_ids.shape[0] == 8


def test_safe_grpo_raises_lambda_while_the_cost_is_over_budget(tiny_dirs, tmp_path):
    def cost(prompts, completions, **_):
        return [1.0 + (i % 2) for i in range(len(completions))]

    trainer = make(tiny_dirs, tmp_path, cost_threshold=0.0, lambda_init=1.0, lambda_lr=0.5)
    trainer.cost_funcs = [cost]
    _, first = trainer.make_rollout()
    _, second = trainer.make_rollout()
    assert 1.0 < first["lambda"] < second["lambda"]
    assert first["cost"] == pytest.approx(1.5)


@pytest.mark.parametrize("lagrangian", [True, False])
def test_the_cost_advantage_enters_with_lambda_or_is_only_logged(tiny_dirs, tmp_path, lagrangian):
    def cost(prompts, completions, **_):
        return [float(i % 4 == 0) - 0.5 for i in range(len(completions))]  # one unsafe answer per group

    trainer = make(tiny_dirs, tmp_path, cost_threshold=-1.0, lambda_init=2.0, lambda_lr=0.0, unsafe_cost=0.0,
                   lagrangian=lagrangian)
    trainer.cost_funcs = [cost]
    rollout, log = trainer.make_rollout()
    rewards = torch.tensor([float(i % 3) for i in range(8)]).view(2, 4)
    costs = torch.tensor([float(i % 4 == 0) - 0.5 for i in range(8)]).view(2, 4)

    def by_hand(x):  # GRPO: (x - group mean) / (group std + 1e-4), the std unbiased as torch's
        return ((x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-4)).flatten()

    expected = (by_hand(rewards) - 2.0 * by_hand(costs)) / 3.0 if lagrangian else by_hand(rewards)
    assert torch.allclose(rollout.advantages, expected, atol=1e-5)
    assert log["cost"] == pytest.approx(-0.25) and log["unsafe_rate"] == pytest.approx(0.25)
    assert ("lambda" in log) == lagrangian


def test_a_resumed_run_ends_with_the_uninterrupted_runs_adapter(tiny_dirs, tmp_path):
    straight = make(tiny_dirs, tmp_path / "a", max_steps=2, save_strategy="steps", save_steps=1)
    straight.train()
    killed = make(tiny_dirs, tmp_path / "b", max_steps=2, save_strategy="steps", save_steps=1)
    save = killed.save_loop_checkpoint

    def save_then_die():
        save()
        raise KeyboardInterrupt  # killed right after the first checkpoint

    killed.save_loop_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    again = make(tiny_dirs, tmp_path / "b", max_steps=2, save_strategy="steps", save_steps=1)
    again.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-1"))
    a, b = lora_weights(straight), lora_weights(again)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert again.iteration == 2 and again.batches_drawn == straight.batches_drawn


def test_cli_trains_grpo_from_a_recipe(tiny_dirs, tmp_path, capsys):
    from mmalign.cli import main
    from mmalign.data_builders.storage import save_prompt_set

    rows = [{"images": [Image.new("RGB", (32, 32), c)], "prompt": p, "objects": o, "reference": r}
            for c, p, o, r in zip(COLORS, ["describe the image.", "is there a cat?"] * 2,
                                  [["cat"], ["dog"], ["cat", "dog"], []], [None, "no", None, "yes"])]
    save_prompt_set(rows, tmp_path / "prompts")
    code = main(["train", "grpo", "--config", "grpo-scene-vlm", "--model_name_or_path", str(tiny_dirs["llava"]),
                 "--dataset_path", str(tmp_path / "prompts"), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "2", "--prompts_per_step", "2", "--num_generations", "2",
                 "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_new_tokens", "5",
                 "--use_cpu", "true", "--save_steps", "1"])
    assert code == 0
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "grpo_log.json").is_file()
    assert (tmp_path / "run" / "checkpoint-2" / "grpo_state.json").is_file()
    assert (final / "grpo_curves.png").stat().st_size > 10_000  # reward and length per iteration
    assert main(["train", "safe-grpo", "--config", "grpo-scene-vlm", "--dataset_path", str(tmp_path / "prompts")]) == 2
    assert "set cost_funcs" in capsys.readouterr().err
    cost = ["--cost_funcs", "format", "--dataset_path", str(tmp_path / "prompts")]
    assert main(["train", "grpo", "--config", "grpo-scene-vlm", *cost]) == 2  # a cost constrains: safe-grpo
    assert "use mmalign train safe-grpo" in capsys.readouterr().err
    assert main(["train", "safe-grpo", "--config", "grpo-scene-vlm", *cost, "--lagrangian", "false"]) == 2
    assert "set cost_funcs" in capsys.readouterr().err  # safe-grpo always constrains


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_shared_prefix_update_equals_the_plain_update(tiny_dirs, tmp_path, family):
    # one minibatch per pass, two passes: the second pass has ratios != 1 against the kept log-probs
    plain = make(tiny_dirs, tmp_path / "a", share_prefix=False, num_iterations=2, family=family)
    shared = make(tiny_dirs, tmp_path / "b", share_prefix=True, num_iterations=2, family=family)
    assert shared.share_prefix and not plain.share_prefix
    for trainer in (plain, shared):
        trainer.create_optimizer_and_scheduler(num_training_steps=2)
    rollout, _ = plain.make_rollout()
    a = plain.grpo_update(rollout)
    b = shared.grpo_update(rollout)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    wa, wb = lora_weights(plain), lora_weights(shared)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_shared_prefix_rollout_samples_the_plain_tokens(tiny_dirs, tmp_path, family):
    plain = make(tiny_dirs, tmp_path / "a", share_prefix=False, reward_funcs=["length"], family=family)
    shared = make(tiny_dirs, tmp_path / "b", share_prefix=True, reward_funcs=["length"], family=family)
    torch.manual_seed(5)
    a, _ = plain.make_rollout()
    torch.manual_seed(5)
    b, _ = shared.make_rollout()
    assert torch.equal(a.batch.input_ids, b.batch.input_ids) and torch.equal(a.mask, b.mask)
    assert torch.allclose(a.advantages, b.advantages)
    assert b.features is not None and len(b.features["image"].pooler_output) == len(a.batch.input_ids)


def test_share_prefix_is_on_for_the_qwen_families_and_refused_without_a_position_rule(tiny_dirs, tmp_path):
    from mmalign.models import LlavaAdapter
    from mmalign.models.batch import ModelInputsSpec

    class TypedLlava(LlavaAdapter):
        family = "typed_llava"
        inputs = ModelInputsSpec(image_keys=("pixel_values",), text_keys=("token_type_ids",))

    assert make(tiny_dirs, tmp_path / "q", family="qwen2_5_vl").share_prefix  # the default where supported
    args = GRPOConfig(output_dir=str(tmp_path), reward_funcs=["format"], share_prefix=True, use_cpu=True, max_steps=1,
                      per_device_train_batch_size=4, num_generations=4, prompts_per_step=1, report_to="none")
    llava = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), use_peft=True, lora_r=4).load()
    with pytest.raises(ValueError, match="share_prefix is not available for typed_llava"):
        GRPOTrainer(TypedLlava(llava.model, llava.processor, llava.card), args, prompts(), reward_funcs=[by_position])
