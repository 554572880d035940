"""Supervised fine-tuning: labels, loss, training, recipes, export."""

import json

import pytest
import torch
import yaml
from PIL import Image

from mmalign.cli import main
from mmalign.data_builders.sft import SFTDataError, load_sft_dataset
from mmalign.export import merge_adapter
from mmalign.model_config import ModelConfig
from mmalign.models import load_adapter
from mmalign.sft import SFTCollator, SFTConfig, SFTTrainer, sft_loss

COLORS = ["red", "blue", "green", "yellow", "orange", "purple"]


@pytest.fixture()
def llava_json(tmp_path):
    """A LLaVA conversation JSON file with images, multi-turn."""
    (tmp_path / "img").mkdir()
    records = []
    for i, color in enumerate(COLORS):
        Image.new("RGB", (32, 32), color).save(tmp_path / "img" / f"{i}.png")
        records.append({
            "id": str(i),
            "image": f"{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nwhat color is it?"},
                {"from": "gpt", "value": f"it is {color}."},
                {"from": "human", "value": "is it a circle?"},
                {"from": "gpt", "value": "no."},
            ],
        })
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def args_for(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, learning_rate=5e-3,
                    save_strategy="no", report_to="none", use_cpu=True, logging_steps=1, seed=0,
                    max_length=256)
    return SFTConfig(**(defaults | kw))


def test_collator_labels_only_assistant_tokens(tiny_dirs, llava_json):
    adapter = load_adapter(tiny_dirs["llava"])
    ds = load_sft_dataset(llava_json, llava_json.parent / "img")
    features = SFTCollator(adapter)([ds[0], ds[1]])
    labels = features["labels"]
    for row in range(2):
        kept = labels[row][labels[row] != -100].tolist()
        words = adapter.tokenizer.convert_ids_to_tokens(kept)
        assert words == ["it", "is", COLORS[row], ".", "</s>", "no", ".", "</s>"]
    image_id = adapter.base_model.config.image_token_id
    assert (labels[features["input_ids"] == image_id] == -100).all()
    assert (labels[features["attention_mask"] == 0] == -100).all()


def test_loss_equals_transformers_cross_entropy(tiny_dirs, llava_json):
    adapter = load_adapter(tiny_dirs["llava"])
    adapter.model.eval()
    ds = load_sft_dataset(llava_json, llava_json.parent / "img")
    features = SFTCollator(adapter)([ds[i] for i in range(4)])
    from mmalign.models import EncodedBatch

    batch = EncodedBatch.from_features(features, adapter.inputs)
    with torch.no_grad():
        logps, mask = adapter.response_logprobs(batch)
        ours = sft_loss(logps, mask)
        model_inputs = {k: v for k, v in features.items() if k not in ("response_mask",)}
        reference = adapter.model(**model_inputs).loss  # transformers' own causal-LM loss
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # normalising by a token count from elsewhere (gradient accumulation) divides the sum
    torch.testing.assert_close(sft_loss(logps, mask, 100), -(logps[mask]).sum() / 100)


def test_qlora_steps_lower_the_loss(tiny_dirs, llava_json, tmp_path):
    adapter = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), load_in_4bit=True,
                          bnb_4bit_compute_dtype="float32", lora_r=8, lora_dropout=0.0).load()
    ds = load_sft_dataset(llava_json, llava_json.parent / "img")
    trainer = SFTTrainer(adapter, args_for(tmp_path, max_steps=12), train_dataset=ds, eval_dataset=ds)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.5
    assert all("lora_" in n for n, p in adapter.model.named_parameters() if p.requires_grad)


def test_gradient_accumulation_matches_one_large_batch(tiny_dirs, llava_json, tmp_path):
    ds = load_sft_dataset(llava_json, llava_json.parent / "img").select(range(4))
    weights = []
    for bs, accum in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        adapter = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), lora_r=4, lora_dropout=0.0).load()
        args = args_for(tmp_path / f"{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=accum,
                        max_steps=1, optim="sgd", learning_rate=1.0)
        SFTTrainer(adapter, args, train_dataset=ds).train()
        weights.append({n: p.detach().clone() for n, p in adapter.model.named_parameters() if p.requires_grad})
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, atol=1e-6, rtol=1e-5)


def test_merged_export_matches_base_plus_adapter(tiny_dirs, tmp_path):
    adapter = load_adapter(tiny_dirs["qwen2_vl"])
    adapter.add_lora()
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    adapter.model.eval()
    adapter.save_adapter(tmp_path / "lora")
    batch = adapter.encode([Image.new("RGB", (32, 32), "red")], ["what is it?"], ["a red square."])
    with torch.no_grad():
        expected, _ = adapter.response_logprobs(batch)
    out = merge_adapter(tiny_dirs["qwen2_vl"], tmp_path / "lora", tmp_path / "merged")
    from transformers import Qwen2VLForConditionalGeneration

    plain = Qwen2VLForConditionalGeneration.from_pretrained(out)  # no peft, no mmalign
    assert not any("lora" in n for n, _ in plain.named_parameters())
    merged = load_adapter(out)
    with torch.no_grad():
        got, _ = merged.response_logprobs(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cli_recipe_with_flag_overrides(tiny_dirs, llava_json, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_dirs["llava"]),
        "load_in_4bit": True,
        "bnb_4bit_compute_dtype": "float32",
        "lora_r": 4,
        "dataset_path": str(llava_json),
        "image_folder": str(llava_json.parent / "img"),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 50,
        "per_device_train_batch_size": 2,
        "report_to": "none",
        "use_cpu": True,
    }))
    assert main(["train", "sft", "--config", str(recipe), "--max_steps", "2", "--lora_r", "8"]) == 0
    final = tmp_path / "out" / "final"
    assert (final / "adapter_model.safetensors").exists()
    assert not (final / "training_args.bin").exists()  # no pickle in the deliverable
    resolved = yaml.safe_load((final / "mmalign_config.yaml").read_text())
    assert resolved["max_steps"] == 2 and resolved["lora_r"] == 8 and resolved["load_in_4bit"] is True
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert "final model in" in capsys.readouterr().out


def test_recipe_rejects_unknown_keys(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rat: 0.1\n")
    assert main(["train", "sft", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {recipe}: unknown option(s) learning_rat (did you mean learning_rate?)"


def test_sft_data_errors_name_row_and_field(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    cases = [
        ([{"messages": "hi"}], "row 0, field 'messages': expected a non-empty list of messages"),
        ([{"messages": [{"role": "user", "content": "hi"}]}],
         "row 0, field 'messages': the last message must be the assistant's turn"),
        ([{"messages": [{"role": "bot", "content": "x"}]}], r"row 0, field 'messages\[0\].role': expected one of"),
        ([{"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}],
         "row 0: conversations\\[0\\] has <image> but the record has no 'image'"),
        ([{"image": "../escape.png", "conversations": [{"from": "human", "value": "<image>q"},
                                                        {"from": "gpt", "value": "a"}]}],
         "escapes the image folder"),
        ([{"images": ["missing.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
            {"role": "assistant", "content": "a"}]}], "row 0: image file .* does not exist"),
    ]
    for records, message in cases:
        path = tmp_path / "d.json"
        path.write_text(json.dumps(records))
        with pytest.raises(SFTDataError, match=message):
            load_sft_dataset(path)
