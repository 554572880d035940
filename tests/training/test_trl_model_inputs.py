"""Trainers take ``model`` as TRL's do: a folder / hub id, a ``PreTrainedModel`` with
``processing_class``, or an adapter, with ``peft_config`` (a peft ``LoraConfig``) turned into
the LoRA mmalign attaches itself. Each form gives the same loss as the adapter path."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from mmalign.dpo import DPOConfig, DPOTrainer
from mmalign.grpo import GRPOConfig, GRPOTrainer
from mmalign.models import ScalarHeadModel, as_adapter, load_adapter
from mmalign.ppo import PPOConfig, PPOTrainer
from mmalign.qlora import LoraSettings
from mmalign.reward import RewardConfig, RewardTrainer
from mmalign.sft import SFTConfig, SFTTrainer

TARGETS = ["q_proj", "v_proj"]


def peft_config() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


def adapter_with_lora(path):
    adapter = load_adapter(path)
    adapter.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=TARGETS))
    return adapter


def set_weights(module: torch.nn.Module, *names: str) -> None:
    """The same non-zero values on both sides, whatever each side's random init was."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if any(n in name for n in names):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def pairs() -> Dataset:
    rows = [("red", "what is in the image?", "a red cup.", "a cat and a dog."),
            ("blue", "describe the image.", "a blue ball on the left.", "a car.")]
    return Dataset.from_list([{"images": [Image.new("RGB", (32, 32), c)], "prompt": p, "chosen": a, "rejected": b,
                               "more_helpful": "chosen"} for c, p, a, b in rows])


def common(tmp_path) -> dict:
    return dict(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, per_device_train_batch_size=2,
                max_length=256)


def one_loss(trainer, model, dataset) -> float:
    model.eval()
    with torch.no_grad():
        return trainer.compute_loss(model, trainer.data_collator([dataset[i] for i in range(len(dataset))])).item()


def dpo_loss(trainer) -> float:
    set_weights(trainer.adapter.model, "lora_")
    return one_loss(trainer, trainer.adapter.model, trainer.train_dataset)


# ---------------------------------------------------------------------------- DPO
def test_dpo_from_a_folder_with_peft_config_equals_the_adapter_path(tiny_dirs, tmp_path):
    args = DPOConfig(**common(tmp_path))
    by_path = DPOTrainer(model=str(tiny_dirs["llava"]), args=args, train_dataset=pairs(), peft_config=peft_config())
    by_adapter = DPOTrainer(adapter_with_lora(tiny_dirs["llava"]), args, train_dataset=pairs())
    assert isinstance(by_path.adapter.model, PeftModel)
    assert dpo_loss(by_path) == pytest.approx(dpo_loss(by_adapter), abs=1e-6)


def test_dpo_from_a_pretrained_model_and_processor_equals_the_adapter_path(tiny_dirs, tmp_path):
    args = DPOConfig(**common(tmp_path))
    path = tiny_dirs["llava"]
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    by_model = DPOTrainer(model=model, args=args, train_dataset=pairs(),
                          processing_class=AutoProcessor.from_pretrained(path), peft_config=peft_config())
    assert by_model.adapter.family == "llava"
    by_adapter = DPOTrainer(adapter_with_lora(path), args, train_dataset=pairs())
    assert dpo_loss(by_model) == pytest.approx(dpo_loss(by_adapter), abs=1e-6)


def test_dpo_takes_trl_ref_model_for_full_fine_tuning(tiny_dirs, tmp_path):
    path = str(tiny_dirs["llava"])
    trainer = DPOTrainer(model=path, ref_model=path, args=DPOConfig(**common(tmp_path)), train_dataset=pairs())
    assert trainer.reference is not None and not trainer.reference.model.training
    with pytest.raises(ValueError, match="reference= or TRL's ref_model="):
        DPOTrainer(path, DPOConfig(**common(tmp_path)), reference=path, ref_model=path)


# ---------------------------------------------------------------------------- reward
def test_reward_from_a_folder_with_peft_config_equals_the_scalar_head_path(tiny_dirs, tmp_path):
    args = RewardConfig(**common(tmp_path))
    by_path = RewardTrainer(model=str(tiny_dirs["llava"]), args=args, train_dataset=pairs(),
                            peft_config=peft_config())
    by_model = RewardTrainer(ScalarHeadModel(adapter_with_lora(tiny_dirs["llava"])), args, train_dataset=pairs())
    for trainer in (by_path, by_model):
        set_weights(trainer.scalar, "lora_", "head.")
    assert isinstance(by_path.scalar, ScalarHeadModel) and by_path.scalar.kind == "reward"
    assert one_loss(by_path, by_path.scalar, pairs()) == pytest.approx(one_loss(by_model, by_model.scalar, pairs()),
                                                                      abs=1e-6)


def test_reward_refuses_peft_config_with_a_built_scalar_head(tiny_dirs, tmp_path):
    model = ScalarHeadModel(adapter_with_lora(tiny_dirs["llava"]))
    with pytest.raises(ValueError, match="pass the base model"):
        RewardTrainer(model, RewardConfig(**common(tmp_path)), peft_config=peft_config())


# ---------------------------------------------------------------------------- SFT
def test_sft_from_a_pretrained_model_and_processor_equals_the_adapter_path(tiny_dirs, tmp_path):
    path = tiny_dirs["llava"]
    conversations = Dataset.from_list([{"images": [Image.new("RGB", (32, 32), "red")], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "it is red."}]}]}])
    args = SFTConfig(**common(tmp_path))
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    by_model = SFTTrainer(model=model, args=args, train_dataset=conversations,
                          processing_class=AutoProcessor.from_pretrained(path))
    by_adapter = SFTTrainer(load_adapter(path), args, train_dataset=conversations)
    assert not any(p.requires_grad for _, p in by_model.adapter.vision_parameters())  # frozen as mmalign does
    assert one_loss(by_model, by_model.adapter.model, conversations) == pytest.approx(
        one_loss(by_adapter, by_adapter.adapter.model, conversations), abs=1e-6)


# ---------------------------------------------------------------------------- GRPO and PPO
def test_grpo_from_a_folder_with_peft_config_gets_language_model_lora(tiny_dirs, tmp_path):
    prompts = Dataset.from_list([{"images": [Image.new("RGB", (32, 32), "red")], "prompt": "describe the image.",
                                  "reference": "a red image."}] * 2)
    args = GRPOConfig(**common(tmp_path), max_steps=1, num_generations=2, prompts_per_step=1, max_new_tokens=4,
                      reward_funcs=["answer_match"])
    trainer = GRPOTrainer(model=str(tiny_dirs["llava"]), args=args, train_dataset=prompts, peft_config=peft_config())
    lora = [n for n, p in trainer.model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and all(trainer.adapter.language_scope in n for n in lora)


def test_ppo_from_a_folder_with_peft_config_loads_scorers_and_critics(tiny_dirs, save_scorers, tmp_path):
    scorers = save_scorers(0.0)
    args = PPOConfig(**common(tmp_path), dataset_path="unused", reward_model_path=str(scorers / "reward"),
                     cost_model_path=str(scorers / "cost"), rollout_batch_size=2, max_new_tokens=4, max_steps=1)
    trainer = PPOTrainer(model=str(tiny_dirs["llava"]), args=args, train_dataset=pairs(), peft_config=peft_config())
    assert set(trainer.critics) == {"reward", "cost"}
    assert trainer.adapter.model.active_adapter == "default"
    assert trainer.reward_model.backbone is trainer.adapter.model


# ---------------------------------------------------------------------------- what is refused, and how
def test_unsupported_inputs_say_what_to_pass(tiny_dirs):
    path = str(tiny_dirs["llava"])
    with pytest.raises(TypeError, match="model card name, hub id or local folder .* PreTrainedModel"):
        as_adapter(42)
    with pytest.raises(TypeError, match="processing_class must be the model's processor"):
        as_adapter(path, processing_class=AutoTokenizer.from_pretrained(path))
    with pytest.raises(ValueError, match=r"use_dora=True is not supported"):
        as_adapter(path, peft_config=LoraConfig(use_dora=True))
    with pytest.raises(ValueError, match="names the vision tower or projector .*vision_tower"):
        as_adapter(path, peft_config=LoraConfig(target_modules=["vision_tower.vision_model.q_proj"]))
    with pytest.raises(ValueError, match="a regex is not supported"):
        as_adapter(path, peft_config=LoraConfig(target_modules=r".*\.q_proj"))
    with pytest.raises(TypeError, match="peft_config must be a peft LoraConfig"):
        as_adapter(path, peft_config={"r": 4})
    with pytest.raises(ValueError, match="already carries LoRA"):
        as_adapter(adapter_with_lora(path), peft_config=peft_config())


def test_peft_config_leaf_names_reach_the_language_model_only(tiny_dirs):
    adapter = as_adapter(str(tiny_dirs["llava"]), peft_config=peft_config())
    lora = [n for n, _ in adapter.model.named_parameters() if "lora_A" in n]
    assert lora and all(adapter.language_scope in n for n in lora)  # CLIP's q_proj / v_proj get none
    assert {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in lora} == set(TARGETS)
