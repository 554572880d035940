"""The adapter contract, checked on a tiny instance of every supported family.

Each model is a real transformers class saved to a folder and loaded back through the
adapter the way a user loads a hub checkpoint.
"""

import bitsandbytes as bnb
import pytest
import torch
from PIL import Image

from mmalign.models import ScalarHeadModel, load_adapter
from mmalign.qlora import LoraSettings, QuantizationConfig

from ..conftest import FAMILIES

Q4 = QuantizationConfig(compute_dtype="float32")
PROMPTS = ["what is in the image?", "how many objects are there?", "describe the scene."]
RESPONSES = ["a red circle.", "two small objects on the left and one large", "a cat"]


def images():
    return [
        Image.new("RGB", (40, 30), (200, 30, 30)),
        Image.new("RGB", (64, 48), (20, 200, 40)),
        Image.new("RGB", (32, 32), (10, 10, 220)),
    ]


def load(tiny_dirs, family, quantized=False, **kw):
    adapter = load_adapter(tiny_dirs[family], quantization=Q4 if quantized else None, **kw)
    adapter.model.eval()
    return adapter


def manual_logprobs(adapter, batch):
    """The straightforward path: full logits, log_softmax, gather the next token."""
    logits = adapter.model(**adapter.forward_kwargs(batch)).logits.float()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return [logp[i][batch.response_mask[i, 1:]] for i in range(len(logp))]


def perturb_lora(model, scale=0.5):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_loading_freezing_and_quantization(tiny_dirs, family, quantized):
    adapter = load(tiny_dirs, family, quantized)
    assert adapter.family == family
    vision = adapter.vision_parameters()
    assert vision and all(not p.requires_grad for _, p in vision)
    assert adapter.projector_parameters()
    assert all(not p.requires_grad for _, p in adapter.projector_parameters())
    modules = dict(adapter.base_model.named_modules())
    four_bit = [n for n, m in modules.items() if isinstance(m, bnb.nn.Linear4bit)]
    if quantized:
        assert adapter.quantized
        assert four_bit and all(n.startswith(adapter.language_scope + ".") for n in four_bit)
        assert modules[four_bit[0]].weight.__class__.__name__ == "Params4bit"
        assert modules[four_bit[0]].weight.quant_type == "nf4"
        assert not isinstance(modules["lm_head"], bnb.nn.Linear4bit)
    else:
        assert not four_bit and not adapter.quantized


@pytest.mark.parametrize("family", FAMILIES)
def test_train_projector_unfreezes_only_projector(tiny_dirs, family):
    adapter = load(tiny_dirs, family, train_projector=True)
    assert all(p.requires_grad for _, p in adapter.projector_parameters())
    assert all(not p.requires_grad for _, p in adapter.vision_parameters())
    adapter.add_lora(LoraSettings(r=4))
    saved = adapter.model.peft_config["default"].modules_to_save
    assert saved, "a trained projector must be saved with the adapter"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_lora_only_on_language_model(tiny_dirs, family, quantized):
    adapter = load(tiny_dirs, family, quantized)
    adapter.add_lora(LoraSettings(r=4, target_modules="all-linear"))
    trainable = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(f"{adapter.language_scope}." in n for n in trainable)
    # every linear layer of the language model got an adapter, none outside it
    lora_layers = {n.split(".lora_")[0] for n in trainable}
    assert not any("vision" in n or "visual" in n for n in lora_layers)
    assert any(n.endswith("down_proj") for n in lora_layers)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_response_logprobs_match_manual_and_cached_features(tiny_dirs, family, quantized):
    adapter = load(tiny_dirs, family, quantized)
    adapter.add_lora(LoraSettings(r=4))
    perturb_lora(adapter.model)
    batch = adapter.encode(images(), PROMPTS, RESPONSES)
    with torch.no_grad():
        logps, mask = adapter.response_logprobs(batch)
        manual = manual_logprobs(adapter, batch)
        cached, cached_mask = adapter.response_logprobs(batch, adapter.image_features(batch))
    assert mask.sum(-1).tolist() == [len(m) for m in manual] == batch.response_lengths.tolist()
    for i, row in enumerate(manual):
        torch.testing.assert_close(logps[i][mask[i]], row, atol=1e-5, rtol=1e-5)
    assert torch.equal(cached_mask, mask)
    torch.testing.assert_close(cached, logps, atol=1e-5, rtol=1e-5)
    assert (logps[~mask] == 0).all() and (logps[mask] < 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_features_carry_gradients_to_lora(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    adapter.add_lora(LoraSettings(r=4))
    perturb_lora(adapter.model, 0.1)
    batch = adapter.encode(images()[:2], PROMPTS[:2], RESPONSES[:2])
    feats = adapter.image_features(batch)
    losses = []
    for f in (None, feats):
        adapter.model.zero_grad()
        logps, mask = adapter.response_logprobs(batch, f)
        loss = -logps[mask].mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
        losses.append((loss.item(), grads))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)
    assert losses[0][1].keys() == losses[1][1].keys() and losses[0][1]
    for name, g in losses[0][1].items():
        torch.testing.assert_close(losses[1][1][name], g, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_response_offsets_map_characters(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    batch = adapter.encode(images(), PROMPTS, RESPONSES)
    for b, response in enumerate(RESPONSES):
        ids = batch.input_ids[b][batch.response_mask[b]].tolist()
        offsets = batch.response_offsets[b]
        assert len(offsets) == len(ids)
        words = adapter.tokenizer.convert_ids_to_tokens(ids[:-1])
        assert [response[s:e].lower() for s, e in offsets[:-1]] == words
        assert offsets[-1] == (len(response), len(response))  # the end-of-turn token
        assert ids[-1] == adapter.end_of_turn_ids[-1]


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_keeps_image_tokens(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    full = adapter.encode(images()[:1], PROMPTS[:1], RESPONSES[1:2])
    prompt_len = int((~full.response_mask[0]).sum())
    cut = adapter.encode(images()[:1], PROMPTS[:1], RESPONSES[1:2], max_length=prompt_len + 3)
    assert cut.input_ids.shape[1] == prompt_len + 3
    assert torch.equal(cut.input_ids[0], full.input_ids[0, : prompt_len + 3])
    assert cut.response_offsets[0] == full.response_offsets[0][:3]
    with pytest.raises(ValueError, match="row 0.*image tokens are never truncated"):
        adapter.encode(images()[:1], PROMPTS[:1], RESPONSES[:1], max_length=prompt_len - 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_batched_left_padded_equals_single(tiny_dirs, family):
    adapter = load(tiny_dirs, family)
    answers = adapter.generate(images(), PROMPTS, max_new_tokens=6)
    assert len(answers) == 3 and all(isinstance(a, str) and a.strip() for a in answers)
    singles = [adapter.generate([img], [p], max_new_tokens=6)[0] for img, p in zip(images(), PROMPTS)]
    assert answers == singles
    sampled = adapter.generate(images()[:1], PROMPTS[:1], max_new_tokens=6, do_sample=True,
                               num_return_sequences=3)
    assert len(sampled) == 3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_peft_adapter_round_trip(tiny_dirs, family, quantized, tmp_path):
    adapter = load(tiny_dirs, family, quantized)
    adapter.add_lora(LoraSettings(r=4))
    perturb_lora(adapter.model)
    batch = adapter.encode(images(), PROMPTS, RESPONSES)
    with torch.no_grad():
        before, _ = adapter.response_logprobs(batch)
        with adapter.adapters_disabled():
            base, _ = adapter.response_logprobs(batch)
    assert not torch.allclose(before, base)
    out = adapter.save_adapter(tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not list(tmp_path.glob(".tmp-*"))

    fresh = load(tiny_dirs, family, quantized)
    fresh.load_adapter(out)
    with torch.no_grad():
        after, _ = fresh.response_logprobs(batch)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_scalar_head_reads_last_real_token_under_any_padding(tiny_dirs, family, tmp_path):
    adapter = load(tiny_dirs, family)
    head = ScalarHeadModel(adapter, kind="reward")
    right = adapter.encode(images(), PROMPTS, RESPONSES, padding_side="right")
    left = adapter.encode(images(), PROMPTS, RESPONSES, padding_side="left")
    assert (right.attention_mask == 0).any() and (left.attention_mask[:, 0] == 0).any()
    with torch.no_grad():
        s_right, s_left = head(right), head(left)
        singles = torch.cat([head(adapter.encode([im], [p], [r]))
                             for im, p, r in zip(images(), PROMPTS, RESPONSES)])
        hidden = adapter.hidden_states(right)
    torch.testing.assert_close(s_right, singles, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_left, singles, atol=1e-5, rtol=1e-5)
    # by hand: the head applied to the hidden state of the end-of-turn token of each row
    last = right.attention_mask.sum(-1) - 1
    assert (right.input_ids[torch.arange(3), last] == adapter.end_of_turn_ids[-1]).all()
    manual = head.head(hidden[torch.arange(3), last]).squeeze(-1)
    torch.testing.assert_close(s_right, manual)

    head.save_pretrained(tmp_path / "rm")
    again = ScalarHeadModel.from_pretrained(tmp_path / "rm", load(tiny_dirs, family))
    with torch.no_grad():
        torch.testing.assert_close(again(right), s_right)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_bf16_loading_keeps_float32_logprobs(tiny_dirs, family):
    adapter = load(tiny_dirs, family, dtype="bfloat16")
    lm_weight = next(p for n, p in adapter.base_model.named_parameters() if "language_model" in n)
    assert lm_weight.dtype == torch.bfloat16
    batch = adapter.encode(images(), PROMPTS, RESPONSES)
    with torch.no_grad():
        logps, mask = adapter.response_logprobs(batch)
        manual = manual_logprobs(adapter, batch)
    assert logps.dtype == torch.float32
    for i, row in enumerate(manual):
        torch.testing.assert_close(logps[i][mask[i]], row, atol=1e-4, rtol=1e-4)
