"""Every supported family trains: one DPO step and one reward-model step on a tiny instance,
each loss equal to the same loss computed by hand from the adapter's own log-probs / scores."""

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image

from mmalign.dpo import DPOConfig, DPOTrainer
from mmalign.losses.reward import bradley_terry_loss
from mmalign.models import ScalarHeadModel, load_adapter
from mmalign.qlora import LoraSettings
from mmalign.reward import RewardConfig, RewardScorer, RewardTrainer

from ..conftest import FAMILIES

ROWS = [
    (Image.new("RGB", (40, 30), "red"), "what is in the image?", "a red cup on a table.", "a red cup and a cat."),
    (Image.new("RGB", (64, 48), "blue"), "describe the image.", "a blue ball on the left.", "a blue car."),
]


def pairs() -> Dataset:
    return Dataset.from_list([{"images": [img], "prompt": p, "chosen": c, "rejected": r} for img, p, c, r in ROWS])


def lora_adapter(tiny_dirs, family):
    torch.manual_seed(0)
    adapter = load_adapter(tiny_dirs[family])
    adapter.add_lora(LoraSettings(r=4, dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return adapter


def summed_logps(adapter, responses, reference=False):
    batch = adapter.encode([[img] for img, *_ in ROWS], [p for _, p, *_ in ROWS], responses)
    if reference:
        with adapter.model.disable_adapter():
            logps, mask = adapter.response_logprobs(batch)
    else:
        logps, mask = adapter.response_logprobs(batch)
    return (logps * mask).sum(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_dpo_step(tiny_dirs, tmp_path, family):
    adapter = lora_adapter(tiny_dirs, family)
    args = DPOConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, beta=0.5,
                     per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2, save_strategy="no")
    trainer = DPOTrainer(adapter, args, train_dataset=pairs())
    adapter.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(adapter.model, trainer.collator([trainer.train_dataset[i] for i in range(2)]))
        chosen, rejected = [c for *_, c, _ in ROWS], [r for *_, r in ROWS]
        margin = (summed_logps(adapter, chosen) - summed_logps(adapter, chosen, reference=True)) - (
            summed_logps(adapter, rejected) - summed_logps(adapter, rejected, reference=True))
        expected = -F.logsigmoid(0.5 * margin).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    trainer.train()
    moved = {n for n, p in adapter.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved)  # LoRA on the language model only


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_model_step(tiny_dirs, tmp_path, family):
    adapter = lora_adapter(tiny_dirs, family)
    model = ScalarHeadModel(adapter, kind="reward")
    args = RewardConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, save_strategy="no",
                        per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2, max_length=512)
    trainer = RewardTrainer(model, args, train_dataset=pairs())
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, trainer.collator([trainer.train_dataset[i] for i in range(2)]))
        scorer = RewardScorer(model, max_length=512)
        images, prompts = [[img] for img, *_ in ROWS], [p for _, p, *_ in ROWS]
        first = torch.tensor(scorer(images, prompts, [c for *_, c, _ in ROWS]))
        second = torch.tensor(scorer(images, prompts, [r for *_, r in ROWS]))
        expected = bradley_terry_loss(first, second, center_weight=args.center_weight, l2_weight=args.l2_weight)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    head = model.head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.head.weight, head)
