"""PPO / PPO-Lagrangian: sampling, minibatches, one shared base, λ, resume, CLI."""

import json

import pytest
import torch
import yaml
from datasets import Dataset
from PIL import Image

from mmalign.cli import main
from mmalign.model_config import ModelConfig
from mmalign.models import load_adapter
from mmalign.ppo import PPOConfig, PPOTrainer, build_models

from ..conftest import FAMILIES

COLORS = ("red", "blue", "green", "yellow")


@pytest.fixture(scope="module")
def scorers(save_scorers):
    return save_scorers(cost_bias=3.0)


def prompts(n=4):
    return Dataset.from_dict({
        "images": [[Image.new("RGB", (32, 32), COLORS[i % 4])] for i in range(n)],
        "prompt": ["is there a cat?", "describe the image.", "is there a dog?", "what color is it?"][:n],
        "reference": ["no", None, "no", None][:n],
        "facts": [["a red ball."], None, ["a green tree."], None][:n],
    })


def make(tiny_dirs, scorers, tmp_path, safe=True, **kw):
    values = dict(output_dir=str(tmp_path / "run"), reward_model_path=str(scorers / "reward"),
                  cost_model_path=str(scorers / "cost") if safe else None, rollout_batch_size=4,
                  per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=1, max_new_tokens=6, shaping=True, report_to="none",
                  use_cpu=True, learning_rate=1e-2, save_strategy="no", max_length=512, seed=0)
    values.update(kw)
    args = PPOConfig(**values)
    torch.manual_seed(0)
    model_config = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), use_peft=True, lora_r=4, lora_alpha=8,
                               lora_dropout=0.0)
    adapter, reward, cost, critics = build_models(model_config, args)
    return PPOTrainer(adapter, args, prompts(), reward, cost, critics)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_sample_packs_exactly_the_sampled_tokens(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    images = [Image.new("RGB", (32, 32), c) for c in COLORS[:3]]
    texts = ["is there a cat?", "describe the image in detail please.", "what color?"]
    torch.manual_seed(0)
    out = adapter.sample(images, texts, max_new_tokens=5)
    batch = out.batch
    assert batch.response_mask.sum(-1).tolist() == out.lengths.tolist()
    image_id = adapter.base_model.config.image_token_id
    for i in range(3):
        alone = adapter.encode([images[i]], [texts[i]])
        prompt = alone.input_ids[0].tolist()
        row = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        response = batch.input_ids[i][batch.response_mask[i]].tolist()
        assert row == prompt + response  # right-packed: prompt, then exactly the sampled tokens
        assert image_id not in response
        assert out.texts[i] == adapter.tokenizer.decode(response, skip_special_tokens=True)
        assert bool(out.ended[i]) == (response[-1] in [*adapter.end_of_turn_ids, adapter.tokenizer.eos_token_id])
    # log-probs of the packed batch equal those of each row scored alone
    with torch.no_grad():
        logps, mask = adapter.response_logprobs(batch)
        features = adapter.image_features(batch)
        for i in range(3):
            alone, _ = adapter.response_logprobs(*adapter.select(batch, [i], features))
            torch.testing.assert_close(logps[i][mask[i]], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_rollout_chunks_concatenate_to_the_same_logprobs(tiny_dirs, family):
    from mmalign.models.adapter import concat_features
    from mmalign.models.batch import concat_batches, pad_cat

    adapter = load_adapter(tiny_dirs[family])
    torch.manual_seed(0)
    chunks = [adapter.sample([Image.new("RGB", (32, 32), c)], [p], max_new_tokens=4 + 3 * k).batch
              for k, (c, p) in enumerate([("red", "is there a cat?"), ("blue", "describe the image in detail.")])]
    with torch.no_grad():
        features = [adapter.image_features(b) for b in chunks]
        parts = [adapter.response_logprobs(b, f) for b, f in zip(chunks, features)]
        whole, mask = adapter.response_logprobs(concat_batches(chunks, adapter.tokenizer.pad_token_id),
                                                concat_features(features))
    torch.testing.assert_close(whole * mask, pad_cat([p[0] for p in parts], 0.0), atol=1e-5, rtol=1e-5)
    assert torch.equal(mask, pad_cat([p[1] for p in parts], False))


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_minibatch_selection_with_cached_features_matches_the_full_batch(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    images = [Image.new("RGB", (32, 32), c) for c in COLORS]
    batch = adapter.encode(images, ["a", "b c d", "e", "f g"], ["one two", "three", "four five six", "x"])
    with torch.no_grad():
        features = adapter.image_features(batch)
        full, mask = adapter.response_logprobs(batch, features)
        sub, sub_features = adapter.select(batch, [3, 1], features)
        part, part_mask = adapter.response_logprobs(sub, sub_features)
    for k, row in enumerate([3, 1]):
        torch.testing.assert_close(part[k][part_mask[k]], full[row][mask[row]], atol=1e-5, rtol=1e-5)


def test_one_iteration_trains_only_policy_and_critic_adapters(tiny_dirs, scorers, tmp_path):
    trainer = make(tiny_dirs, scorers, tmp_path)
    peft = trainer.adapter.model
    assert set(peft.peft_config) == {"default", "reward", "cost", "reward_critic", "cost_critic"}
    before = {n: p.detach().clone() for n, p in peft.named_parameters()}
    heads = {name: c.head.weight.detach().clone() for name, c in trainer.critics.items()}
    scorer_heads = [trainer.reward_model.head.weight.detach().clone(), trainer.cost_model.head.weight.detach().clone()]
    trainer.train()
    changed = {n for n, p in peft.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    assert all("lora_" in n and any(f".{a}." in n for a in ("default", "reward_critic", "cost_critic")) for n in changed)
    assert any(".default." in n for n in changed) and any(".reward_critic." in n for n in changed)
    assert all(not torch.equal(c.head.weight, heads[name]) for name, c in trainer.critics.items())
    assert torch.equal(trainer.reward_model.head.weight, scorer_heads[0])
    assert torch.equal(trainer.cost_model.head.weight, scorer_heads[1])
    assert trainer.adapter.model.active_adapter == "default"
    log = trainer.state.log_history[-1]
    for key in ("reward", "cost", "lambda", "kl", "entropy", "response_length", "unsafe_rate", "loss/policy",
                "loss/value_reward", "loss/value_cost", "shaping/incomplete"):
        assert key in log, key
    assert log["lambda"] > 1.0  # costs around +3 are above the budget 0: λ went up
    assert log["kl"] == pytest.approx(0.0, abs=1e-6)  # first rollout: the policy is still the reference


def test_lambda_falls_when_costs_are_under_budget(tiny_dirs, scorers, tmp_path):
    trainer = make(tiny_dirs, scorers, tmp_path, cost_threshold=10.0, lambda_init=2.0, lambda_max=5.0)
    trainer.train()
    assert trainer.state.log_history[-1]["lambda"] < 2.0


def test_reward_only_ppo_has_no_cost_parts(tiny_dirs, scorers, tmp_path):
    trainer = make(tiny_dirs, scorers, tmp_path, safe=False)
    assert set(trainer.critics) == {"reward"} and trainer.cost_model is None
    trainer.train()
    log = trainer.state.log_history[-1]
    assert "lambda" not in log and "cost" not in log and "loss/value_reward" in log


def test_reward_only_ppo_can_monitor_a_cost_model(tiny_dirs, scorers, tmp_path):
    trainer = make(tiny_dirs, scorers, tmp_path, lagrangian=False)
    assert set(trainer.critics) == {"reward"} and trainer.cost_model is not None
    assert "cost_critic" not in trainer.adapter.model.peft_config
    trainer.train()
    log = trainer.state.log_history[-1]
    assert "cost" in log and "unsafe_rate" in log and "lambda" not in log and "loss/value_cost" not in log


def test_resume_continues_exactly(tiny_dirs, scorers, tmp_path):
    straight = make(tiny_dirs, scorers, tmp_path / "a", max_steps=3, save_strategy="steps", save_steps=2,
                    output_dir=str(tmp_path / "a"))
    straight.train()
    resumed = make(tiny_dirs, scorers, tmp_path / "b", max_steps=3, save_strategy="steps", save_steps=2,
                   output_dir=str(tmp_path / "b"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.iteration == 3
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert resumed.state.log_history[-1]["lambda"] == pytest.approx(straight.state.log_history[-1]["lambda"])


def test_cli_safe_ppo_writes_a_standard_adapter(tiny_dirs, scorers, tmp_path):
    from mmalign.data_builders.storage import save_prompt_set

    save_prompt_set(prompts().to_list(), tmp_path / "prompts")
    recipe = tmp_path / "safe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_dirs["llava"]), "use_peft": True, "lora_r": 4, "lora_dropout": 0.0,
        "dataset_path": str(tmp_path / "prompts"), "reward_model_path": str(scorers / "reward"),
        "output_dir": str(tmp_path / "run"), "rollout_batch_size": 4, "per_device_train_batch_size": 2,
        "max_steps": 1, "max_new_tokens": 4, "report_to": "none", "use_cpu": True, "save_strategy": "no",
        "max_length": 512,
    }))
    assert main(["train", "safe-ppo", "--config", str(recipe), "--cost_model_path", str(scorers / "cost")]) == 0
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").exists() and (final / "critics" / "cost" / "value_head.safetensors").exists()
    log = json.loads((final / "ppo_log.json").read_text())
    assert [e["step"] for e in log if "reward" in e] == [1] and "lambda" in log[0]
    assert (final / "ppo_curves.png").stat().st_size > 10_000
    fresh = load_adapter(tiny_dirs["llava"])
    fresh.load_adapter(final)  # the policy loads like any PEFT adapter
    resolved = yaml.safe_load((final / "mmalign_config.yaml").read_text())
    assert resolved["cost_model_path"] == str(scorers / "cost")
    assert main(["train", "safe-ppo", "--config", str(recipe)]) == 2  # refused: safe-ppo needs a cost model


@pytest.mark.parametrize("family", FAMILIES)
def test_rollouts_of_rows_with_two_one_and_no_image_score_each_row_alone(tiny_dirs, family):
    """PPO / GRPO rollouts with several images in a prompt: each sampled row is its prompt
    (images at their placeholders) followed by exactly the sampled tokens, and its log-probs
    with cached features picked per row equal the row scored alone."""
    adapter = load_adapter(tiny_dirs[family])
    images = [[Image.new("RGB", (32, 32), "red"), Image.new("RGB", (48, 32), "blue")],
              [Image.new("RGB", (32, 32), "green")], []]
    texts = ["<image> is the first and <image> the second : what changed ?", "<image> what color ?", "is it safe ?"]
    torch.manual_seed(0)
    out = adapter.sample(images, texts, max_new_tokens=4)
    batch = out.batch
    assert batch.images_per_row == [2, 1, 0]
    with torch.no_grad():
        features = adapter.image_features(batch)
        logps, mask = adapter.response_logprobs(batch, features)
        for i in range(3):
            prompt = adapter.encode([images[i]], [texts[i]]).input_ids[0].tolist()
            row = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
            assert row == prompt + batch.input_ids[i][batch.response_mask[i]].tolist()
            sub, sub_features = adapter.select(batch, [i], features)
            alone, _ = adapter.response_logprobs(sub, sub_features)
            torch.testing.assert_close(logps[i][mask[i]], alone[0], atol=1e-5, rtol=1e-5)
