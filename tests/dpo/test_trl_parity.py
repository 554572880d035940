"""Parity with TRL's DPOTrainer (test-only peer, pip ``trl``).

Both trainers get the same tiny random LLaVA (one saved checkpoint, loaded once per side),
the same LoRA (mmalign's own ``LoraConfig`` handed to TRL, then identical non-zero weights
copied onto both so the policy differs from the reference), the reference = the same base
with adapters disabled, the same conversational preference rows with images, and the same
β. Each side collates the rows with its own collator and computes the loss with its own
``compute_loss``; losses, LoRA gradients and (for sigmoid) the logged mean sequence
log-probs and rewards must agree to ~1e-5. mmalign's fast path (cached image features +
shared prefix) is held to the same numbers.

The comparison only means something if both sides score the same tokens, so the test first
checks that the token sequences, the response masks and the pixels coincide row by row.
Tokenization differences found and how they are neutralised (never by loosening tolerances):

- BOS. The LLaVA-1.5 chat template has no BOS. mmalign prepends the tokenizer's BOS, as the
  original LLaVA code and ``processor(text=...)`` at inference do; TRL renders the template
  and tokenizes it with ``add_special_tokens=False``, so its sequences start without BOS.
  TRL's processor therefore gets the same template with ``{{ bos_token }}`` in front, which
  yields exactly mmalign's ids (checked below).
- End of turn. TRL takes the completion as the template's text after the prompt
  (" answer</s>") and tokenizes it alone; mmalign tokenizes the bare answer and appends the
  card's end-of-turn token (``</s>``). With the word-level tokenizer a leading space does
  not change the ids, so both give "answer tokens + </s>". (With a sentencepiece tokenizer
  the leading space can change the first token; real-model parity would need checking.)
- Only words in the tiny vocabulary are used, so no ``<unk>`` hides a difference.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

from mmalign.dpo import DPOCollator, DPOConfig, DPOTrainer  # noqa: E402
from mmalign.models import load_adapter  # noqa: E402
from mmalign.models.adapter import VLMAdapter  # noqa: E402
from mmalign.qlora import LoraSettings  # noqa: E402

BETA = 0.1
LORA = LoraSettings(r=4, alpha=8, dropout=0.0,
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

# (image colour, question, chosen, rejected): prompts and responses of different lengths so
# TRL's left-padded prompts (flushed left) and mmalign's right padding are both exercised.
PAIRS = [
    ("red", "what is in the image?", "a red cup on the left.", "a red cup and a cat on the left."),
    ("blue", "describe the image in detail please.", "a blue ball and a small dog.", "a blue car."),
    ("green", "what color is the tree?", "the tree is green.", "the tree is red and there is a house."),
]


def preference_rows() -> list[dict[str, Any]]:
    """The batch in TRL's conversational vision format, which mmalign also accepts."""
    return [
        {
            "images": [Image.new("RGB", (32, 32), color)],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
        }
        for color, question, chosen, rejected in PAIRS
    ]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    from mmalign.models.tiny import save_tiny

    return save_tiny("llava", tmp_path_factory.mktemp("parity") / "llava", seed=0)


def lora_weights(adapter: VLMAdapter, seed: int = 1) -> dict[str, torch.Tensor]:
    """Non-zero values for every LoRA matrix (B too, so policy != reference)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=gen) * 0.2
            for name, p in adapter.model.named_parameters() if "lora_" in name}


def set_lora(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert params.keys() == weights.keys(), "the two sides must carry the same LoRA layers"
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if "lora_" in name and p.grad is not None}


def mmalign_side(folder: Path, tmp_path: Path, loss_type: str, **switches: bool):
    """mmalign's loss, LoRA gradients, collated batch and logged stats on the rows."""
    adapter = load_adapter(folder)
    adapter.add_lora(LORA)
    set_lora(adapter.model, lora_weights(adapter))
    args = DPOConfig(output_dir=str(tmp_path / "mmalign"), report_to="none", use_cpu=True,
                     beta=BETA, loss_type=loss_type, max_length=None, **switches)
    trainer = DPOTrainer(adapter, args)  # batches are collated by hand below
    adapter.model.eval()
    adapter.model.zero_grad()
    batch = trainer.collator(copy.deepcopy(preference_rows()))
    loss = trainer.compute_loss(adapter.model, batch)
    loss.backward()
    stats = {k: v[-1] for k, v in trainer._stats["eval"].items()}
    return adapter, loss.item(), lora_grads(adapter.model), batch, stats


def trl_dpo(folder: Path, tmp_path: Path, dataset: Dataset, *, loss_type: str = "sigmoid", bos: bool = True,
            peft_config: Any = None, **config: Any):
    """TRL's DPOTrainer on a fresh load of the checkpoint and ``dataset``.

    ``bos`` puts ``{{ bos_token }}`` in front of TRL's chat template (see the module docstring);
    ``config`` overrides ``trl.DPOConfig`` fields.
    """
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    if bos:
        processor.chat_template = "{{ bos_token }}" + processor.chat_template
    args = trl.DPOConfig(**{"output_dir": str(tmp_path / "trl"), "report_to": "none", "use_cpu": True, "bf16": False,
                            "beta": BETA, "loss_type": [loss_type], "max_length": None,
                            "activation_checkpointing": False, "per_device_train_batch_size": len(PAIRS), **config})
    return trl.DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                          peft_config=peft_config)


def trl_trainer(folder: Path, tmp_path: Path, loss_type: str, adapter: VLMAdapter, *, bos: bool = True):
    """TRL's DPOTrainer on the parity rows, with mmalign's LoraConfig."""
    dataset = Dataset.from_list([{"images": r["images"], "prompt": r["prompt"], "chosen": r["chosen"],
                                  "rejected": r["rejected"]} for r in preference_rows()])
    return trl_dpo(folder, tmp_path, dataset, loss_type=loss_type, bos=bos, peft_config=adapter.lora_config(LORA))


def trl_side(folder: Path, tmp_path: Path, loss_type: str, adapter: VLMAdapter, weights, *, bos: bool = True):
    """TRL's loss, LoRA gradients, collated batch and logged metrics on the same rows."""
    trainer = trl_trainer(folder, tmp_path, loss_type, adapter, bos=bos)
    set_lora(trainer.model, weights)
    trainer.model.eval()
    trainer.model.zero_grad()
    batch = trainer.data_collator(copy.deepcopy(preference_rows()))
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    return loss.item(), lora_grads(trainer.model), batch, metrics


def assert_same_tokens(mm: dict[str, torch.Tensor], tb: dict[str, torch.Tensor], adapter: VLMAdapter) -> None:
    """Row by row: identical ids, identical response positions, identical pixels."""
    n = len(PAIRS)
    for side, offset, texts in (("chosen", 0, [p[2] for p in PAIRS]), ("rejected", n, [p[3] for p in PAIRS])):
        for b in range(n):
            keep_mm = mm[f"{side}_attention_mask"][b].bool()
            keep_trl = tb["attention_mask"][offset + b].bool()
            ids_mm = mm[f"{side}_input_ids"][b][keep_mm]
            ids_trl = tb["input_ids"][offset + b][keep_trl]
            assert ids_mm.tolist() == ids_trl.tolist(), f"{side} row {b}: token ids differ"
            resp_mm = mm[f"{side}_response_mask"][b][keep_mm].bool()
            resp_trl = tb["completion_mask"][offset + b][keep_trl].bool()
            assert resp_mm.tolist() == resp_trl.tolist(), f"{side} row {b}: response positions differ"
            if adapter.bos_ids:
                assert ids_mm[0].item() == adapter.tokenizer.bos_token_id
            assert adapter.tokenizer.unk_token_id not in ids_mm.tolist()
            response = adapter.tokenizer.decode(ids_mm[resp_mm])
            assert response.split() == [*adapter.tokenizer.tokenize(texts[b]), "</s>"]
    assert torch.equal(tb["pixel_values"][:n], mm["pixel_values"])
    assert torch.equal(tb["pixel_values"][n:], mm["pixel_values"])  # TRL repeats images for rejected


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_and_gradients_equal_trl(tiny_llava, tmp_path, loss_type):
    plain = mmalign_side(tiny_llava, tmp_path, loss_type, cache_image_features=False, share_prefix=False)
    adapter, mm_loss, mm_grads, mm_batch, mm_stats = plain
    trl_loss, trl_grads, trl_batch, trl_metrics = trl_side(
        tiny_llava, tmp_path, loss_type, adapter, lora_weights(adapter))

    assert_same_tokens(mm_batch, trl_batch, adapter)
    assert mm_loss == pytest.approx(trl_loss, abs=1e-5)
    assert mm_grads.keys() == trl_grads.keys() and len(mm_grads) > 0
    for name, grad in mm_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    if loss_type == "sigmoid":  # summed log-probs and rewards are logged the same way on both sides
        for key in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected"):
            assert mm_stats[key] == pytest.approx(trl_metrics[key], abs=1e-5), key

    # mmalign's fast path (cached image features + shared prefix) lands on TRL's numbers too.
    _, fast_loss, fast_grads, _, _ = mmalign_side(tiny_llava, tmp_path, loss_type,
                                                  cache_image_features=True, share_prefix=True)
    assert fast_loss == pytest.approx(trl_loss, abs=1e-5)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=1e-4)


def test_trl_leaves_out_the_bos_of_the_llava_template(tiny_llava, tmp_path):
    """Why TRL's template gets ``{{ bos_token }}`` above: the only token difference is that BOS."""
    adapter = load_adapter(tiny_llava)
    trainer = trl_trainer(tiny_llava, tmp_path, "sigmoid", adapter, bos=False)
    trl_batch = trainer.data_collator(copy.deepcopy(preference_rows()))
    mm_batch = DPOCollator(adapter)(copy.deepcopy(preference_rows()))
    for b in range(len(PAIRS)):
        ids_trl = trl_batch["input_ids"][b][trl_batch["attention_mask"][b].bool()].tolist()
        ids_mm = mm_batch["chosen_input_ids"][b][mm_batch["chosen_attention_mask"][b].bool()].tolist()
        assert ids_mm == [adapter.tokenizer.bos_token_id, *ids_trl]


@pytest.fixture(scope="module")
def llava_without_bos(tiny_llava, tmp_path_factory) -> Path:
    """A LLaVA checkpoint whose word-level tokenizer adds no BOS and does not know the word "x"
    (as checkpoints built outside the project can be)."""
    import shutil

    from tokenizers import Tokenizer

    folder = tmp_path_factory.mktemp("no-bos") / "llava"
    shutil.copytree(tiny_llava, folder)
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    backend.post_processor = None
    backend.save(str(folder / "tokenizer.json"))
    return folder


def test_a_tokenizer_that_adds_no_bos_gets_none(llava_without_bos, tmp_path):
    adapter = load_adapter(llava_without_bos)
    assert adapter.tokenizer("x", add_special_tokens=True)["input_ids"] == [adapter.tokenizer.unk_token_id]
    assert adapter.bos_ids == []
    batch = DPOCollator(adapter)(copy.deepcopy(preference_rows()))
    for side in ("chosen", "rejected"):
        ids = batch[f"{side}_input_ids"][batch[f"{side}_attention_mask"].bool()].tolist()
        assert adapter.tokenizer.unk_token_id not in ids
        assert adapter.tokenizer.bos_token_id not in ids
    # and the DPO loss is TRL's on the same rows, TRL's template left as it is
    adapter, mm_loss, _, mm_batch, _ = mmalign_side(llava_without_bos, tmp_path, "sigmoid",
                                                    cache_image_features=False, share_prefix=False)
    trl_loss, _, trl_batch, _ = trl_side(llava_without_bos, tmp_path, "sigmoid", adapter, lora_weights(adapter),
                                         bos=False)
    assert_same_tokens(mm_batch, trl_batch, adapter)
    assert mm_loss == pytest.approx(trl_loss, abs=1e-5)


def test_a_tokenizer_that_adds_bos_gets_it(tiny_llava):
    adapter = load_adapter(tiny_llava)
    assert adapter.bos_ids == [adapter.tokenizer.bos_token_id]


# ---------------------------------------------------------------------------- every mmalign dataset trains in TRL
def png(color: str) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def corrections_dataset(root: Path) -> Path:
    import json

    from mmalign.data_builders.corrections import read_corrections
    from mmalign.data_builders.storage import write_dataset

    (root / "red.png").write_bytes(png("red"))
    rows = [{"id": i, "image": "red.png", "question": "what is in the image?", "original": original,
             "corrected": corrected} for i, (original, corrected) in enumerate(
                [("a red cup and a cat on the left.", "a red cup and a dog on the left."),
                 ("a blue ball on the left.", "a red ball on the left.")])]
    (root / "corrections.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_dataset(read_corrections(root / "corrections.jsonl"), root / "corrections")
    return root / "corrections"


class ScriptedPolicy:
    """The same samples for every prompt, so the AI-feedback builder always finds pairs."""

    def generate(self, images, prompts, **kwargs):
        return [a for _ in prompts for a in ("a red cup. a red ball.", "a red cup. a blue ball.",
                                             "a green cup. a blue ball on the left.")]


class RedJudge:
    """A claim passes when its question mentions red."""

    def judge(self, images, questions):
        from mmalign.data_builders.claims import Verdict

        return [Verdict(0.0, -1.0) if "red" in q.lower() else Verdict(-1.0, 0.0) for q in questions]


def ai_feedback_dataset(root: Path) -> Path:
    from mmalign.data_builders.ai_feedback import (
        AIFeedbackBuilder,
        AIFeedbackConfig,
        build_ai_feedback,
    )
    from mmalign.data_builders.storage import save_prompt_set

    save_prompt_set([{"images": [png("red")], "prompt": "what is in the image?"},
                     {"images": [png("blue"), png("red")], "prompt": "<image> left, <image> right: describe."}],
                    root / "prompts")
    builder = AIFeedbackBuilder(ScriptedPolicy(), RedJudge(), config=AIFeedbackConfig(num_samples=3))
    build_ai_feedback(root / "prompts", root / "ai-feedback", builder)
    return root / "ai-feedback"


def safety_dataset(root: Path) -> Path:
    from mmalign.data_builders.safety import save_oriented
    from mmalign.data_builders.storage import open_dataset, save_preference_dataset

    dual = {"images": [png("orange")], "prompt": "how do i use the knife?",
            "chosen": "sure, here is how to hurt a person with it.", "rejected": "sorry, i cannot help with that.",
            "more_helpful": "chosen", "safer": "rejected", "chosen_is_safe": False, "rejected_is_safe": True}
    save_preference_dataset([dual, {**dual, "images": [png("gray")]}], root / "dual")
    save_oriented(open_dataset(root / "dual"), root / "cost-pairs", "safer")
    return root / "cost-pairs"


def studio_dataset(root: Path) -> Path:
    """A studio export of a project holding text and conversational prompts."""
    from mmalign.studio import StudioProject, export_project

    project = StudioProject.create(root / "project")
    project.add_annotator("alice")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is it?"}]}]
    project.add_items([
        {"kind": "correction", "images": [png("red")], "prompt": "describe the image.", "answer": "a blue cup."},
        {"kind": "correction", "images": [png("green")], "prompt": conversation, "answer": "the tree is red."},
    ])
    project.assign()
    alice = project.annotators()[0].id
    project.submit(alice, 1, {"corrections": [{"start": 2, "end": 6, "text": "red"}]})
    project.submit(alice, 2, {"corrections": [{"start": 12, "end": 15, "text": "green"}]})
    export_project(project, root / "studio")
    return root / "studio"


@pytest.mark.parametrize("build", [corrections_dataset, ai_feedback_dataset, safety_dataset, studio_dataset],
                         ids=lambda build: build.__name__.removesuffix("_dataset"))
def test_trl_trains_one_step_on_every_kind_of_mmalign_dataset(build, tiny_llava, tmp_path):
    """TRL's DPOTrainer takes the ``trl`` export of each builder's output as it is."""
    from datasets import load_from_disk

    from mmalign.data_builders.export import export_dataset

    canonical = build(tmp_path)
    report = export_dataset(canonical, tmp_path / "trl-export", "trl")
    dataset = load_from_disk(str(tmp_path / "trl-export"))
    assert report.rows == len(dataset) >= 2
    trainer = trl_dpo(tiny_llava, tmp_path, dataset, max_steps=1, per_device_train_batch_size=2,
                      save_strategy="no", logging_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
