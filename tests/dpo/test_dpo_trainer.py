"""DPO trainer: optimised paths equal the straightforward one; reference modes; truncation."""

import pytest
import torch

from mmalign.dpo import DPOCollator, DPOConfig, DPOTrainer, span_token_weights
from mmalign.dpo.reference import precompute_reference_logps
from mmalign.models import load_adapter
from mmalign.qlora import LoraSettings


def make(tiny_dirs, family="llava", perturb=True, quantized=False):
    from mmalign.qlora import QuantizationConfig

    torch.manual_seed(0)
    adapter = load_adapter(tiny_dirs[family], quantization=QuantizationConfig(compute_dtype="float32") if quantized else None)
    adapter.add_lora(LoraSettings(r=4, dropout=0.0))
    if perturb:
        perturb_lora(adapter)
    return adapter


def perturb_lora(adapter, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def step(adapter, dataset, tmp_path, **kw):
    """Loss and LoRA gradients of one batch of all pairs."""
    args = DPOConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True,
                     per_device_train_batch_size=len(dataset), **kw)
    trainer = DPOTrainer(adapter, args, train_dataset=dataset)
    adapter.model.eval()
    adapter.model.zero_grad()
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    loss = trainer.compute_loss(adapter.model, trainer.collator(rows))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def assert_same(a, b, atol=1e-5):
    assert a[0] == pytest.approx(b[0], abs=atol)
    assert a[1].keys() == b[1].keys() and a[1]
    for name, g in a[1].items():
        torch.testing.assert_close(b[1][name], g, atol=atol, rtol=1e-4)


@pytest.mark.parametrize(("family", "loss_type"), [("llava", "sigmoid"), ("llava", "ddpo"),
                                                  ("qwen2_vl", "ddpo"), ("qwen2_5_vl", "sigmoid")])
def test_optimised_paths_equal_straightforward(tiny_dirs, pair_dataset, tmp_path, family, loss_type):
    kw = dict(loss_type=loss_type, gamma=3.0, ddpo_normalize=loss_type == "ddpo")
    plain = step(make(tiny_dirs, family), pair_dataset, tmp_path, cache_image_features=False, **kw)
    cached = step(make(tiny_dirs, family), pair_dataset, tmp_path, cache_image_features=True, **kw)
    shared = step(make(tiny_dirs, family), pair_dataset, tmp_path, share_prefix=True, cache_image_features=False, **kw)
    both = step(make(tiny_dirs, family), pair_dataset, tmp_path, share_prefix=True, **kw)
    assert plain[0] > 0
    for other in (cached, shared, both):
        assert_same(plain, other)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_feature_cache_equals_straightforward_other_families(tiny_dirs, pair_dataset, tmp_path, family):
    plain = step(make(tiny_dirs, family), pair_dataset, tmp_path, cache_image_features=False)
    cached = step(make(tiny_dirs, family), pair_dataset, tmp_path, cache_image_features=True)
    assert_same(plain, cached)


def test_disk_feature_cache_equals_straightforward(tiny_dirs, pair_dataset, tmp_path):
    cache_dir = tmp_path / "features"
    plain = step(make(tiny_dirs), pair_dataset, tmp_path, cache_image_features=False, loss_type="ddpo", gamma=3.0)
    # first pass fills the cache, the second reads every image back from disk
    filled = step(make(tiny_dirs), pair_dataset, tmp_path, image_feature_cache_dir=str(cache_dir),
                  loss_type="ddpo", gamma=3.0)
    adapter = make(tiny_dirs)
    args = DPOConfig(output_dir=str(tmp_path / "run2"), report_to="none", use_cpu=True, loss_type="ddpo",
                     gamma=3.0, per_device_train_batch_size=len(pair_dataset), image_feature_cache_dir=str(cache_dir))
    trainer = DPOTrainer(adapter, args, train_dataset=pair_dataset)
    adapter.model.eval()
    loss = trainer.compute_loss(adapter.model, trainer.collator([pair_dataset[i] for i in range(len(pair_dataset))]))
    loss.backward()
    read = (loss.item(), {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None})
    (cache,) = trainer.feature_caches.values()
    assert (cache.misses, cache.hits) == (0, len(pair_dataset))
    assert len(list(cache_dir.rglob("*.safetensors"))) == len(pair_dataset)
    assert_same(plain, filled)
    assert_same(plain, read)


def test_short_last_batch_keeps_every_metric(tiny_dirs, pair_dataset, tmp_path):
    # 4 pairs in batches of 3: the last batch holds one pair, fewer rows than logged metrics
    args = DPOConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, loss_type="ddpo", gamma=3.0,
                     per_device_train_batch_size=3, num_train_epochs=1, logging_steps=1, save_strategy="no")
    trainer = DPOTrainer(make(tiny_dirs), args, train_dataset=pair_dataset)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rewards/margins" in entry]
    assert len(logged) == 2 and all("ddpo/corrected_token_share" in entry for entry in logged)


def test_disk_feature_cache_needs_in_memory_cache(tiny_dirs, pair_dataset, tmp_path):
    with pytest.raises(ValueError, match="image_feature_cache_dir needs cache_image_features"):
        step(make(tiny_dirs), pair_dataset, tmp_path, cache_image_features=False,
             image_feature_cache_dir=str(tmp_path / "f"))


def test_share_prefix_refused_for_per_token_inputs_without_their_own_positions(tiny_dirs, pair_dataset, tmp_path):
    from mmalign.models import LlavaAdapter
    from mmalign.models.batch import ModelInputsSpec

    class TypedLlava(LlavaAdapter):
        family = "typed_llava"
        inputs = ModelInputsSpec(image_keys=("pixel_values",), text_keys=("token_type_ids",))

    adapter = make(tiny_dirs, perturb=False)
    with pytest.raises(ValueError, match="share_prefix is not available for typed_llava"):
        step(TypedLlava(adapter.model, adapter.processor, adapter.card), pair_dataset, tmp_path, share_prefix=True)


def test_precomputed_reference_equals_adapters_off(tiny_dirs, pair_dataset, tmp_path):
    fresh = make(tiny_dirs, perturb=False)  # fresh LoRA: policy == base == reference
    with_ref = precompute_reference_logps(fresh, pair_dataset, progress=False)
    assert with_ref.column_names[-2:] == ["ref_chosen_logps", "ref_rejected_logps"]
    perturb_lora(fresh)
    precomputed = step(fresh, with_ref, tmp_path)
    live = step(make(tiny_dirs), pair_dataset, tmp_path)
    assert_same(live, precomputed)
    # the trainer can also precompute on its own at start-up
    auto = make(tiny_dirs, perturb=False)
    args = DPOConfig(output_dir=str(tmp_path / "a"), report_to="none", use_cpu=True, precompute_ref_logps=True)
    trainer = DPOTrainer(auto, args, train_dataset=pair_dataset)
    assert trainer.train_dataset["ref_chosen_logps"] == with_ref["ref_chosen_logps"]


def test_ddpo_gamma_one_is_plain_dpo(tiny_dirs, pair_dataset, tmp_path):
    sigmoid = step(make(tiny_dirs), pair_dataset, tmp_path, loss_type="sigmoid")
    ddpo = step(make(tiny_dirs), pair_dataset, tmp_path, loss_type="ddpo", gamma=1.0)
    assert_same(sigmoid, ddpo)
    heavier = step(make(tiny_dirs), pair_dataset, tmp_path, loss_type="ddpo", gamma=5.0)
    assert heavier[0] != pytest.approx(sigmoid[0], abs=1e-4)


def test_span_weights_follow_characters():
    offsets = [(0, 1), (2, 5), (6, 9), (9, 10), (10, 10)]  # "a red cup." + end of turn
    assert span_token_weights(offsets, [[2, 5]], 5.0) == [1, 5, 1, 1, 1]
    assert span_token_weights(offsets, [[3, 7]], 2.0) == [1, 2, 2, 1, 1]  # partial overlaps count
    assert span_token_weights(offsets, [], 5.0) == [1] * 5


def test_collator_weights_and_truncation(tiny_dirs, pair_dataset):
    adapter = make(tiny_dirs)
    features = DPOCollator(adapter, gamma=4.0)([pair_dataset[1]])  # "car" vs "ball"
    tokens = adapter.tokenizer.convert_ids_to_tokens(
        features["rejected_input_ids"][0][features["rejected_response_mask"][0]])
    weights = features["rejected_weights"][0][: len(tokens)].tolist()
    assert [t for t, w in zip(tokens, weights) if w == 4.0] == ["car"]

    full = DPOCollator(adapter)([pair_dataset[0]])
    prompt_len = int((~full["chosen_response_mask"][0].bool()).sum())
    collator = DPOCollator(adapter, max_length=prompt_len + 2)
    cut = collator([pair_dataset[0]])
    assert cut["chosen_input_ids"].shape[1] == prompt_len + 2  # response tails cut first
    assert collator.stats.prompts_shortened == 0
    image_tokens = int((full["chosen_input_ids"] == adapter.base_model.config.image_token_id).sum())
    tight = DPOCollator(adapter, max_length=image_tokens + 9)  # forces words out of the prompt
    tight([pair_dataset[0], pair_dataset[1]])
    assert tight.stats.prompts_shortened >= 1 and tight.stats.dropped == 0
    impossible = DPOCollator(adapter, max_length=image_tokens)
    with pytest.raises(ValueError, match="every pair of a batch is longer than max_length"):
        impossible([pair_dataset[0]])
    assert impossible.stats.dropped == 1


def test_training_raises_margins_in_4bit(tiny_dirs, pair_dataset, tmp_path):
    adapter = make(tiny_dirs, perturb=False, quantized=True)
    args = DPOConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, per_device_train_batch_size=4,
                     max_steps=15, learning_rate=5e-3, logging_steps=5, beta=0.5, save_strategy="no",
                     loss_type="ddpo", gamma=2.0)
    trainer = DPOTrainer(adapter, args, train_dataset=pair_dataset)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"] + 0.5
    assert logs[-1]["rewards/accuracies"] == 1.0
    assert 0 < logs[-1]["ddpo/corrected_token_share"] < 0.5


def test_ddpo_on_pairs_without_spans_warns_and_logs_the_share(tiny_dirs, pair_dataset, tmp_path, caplog):
    """Dense DPO weights only corrected segments: a pair without any trains as plain DPO, which the
    user is told (warning with the share) and which the logs record (ddpo/pairs_with_spans)."""
    import logging

    half = pair_dataset.map(lambda row, i: {"chosen_spans": row["chosen_spans"] if i % 2 else [],
                                            "rejected_spans": row["rejected_spans"] if i % 2 else []},
                            with_indices=True)
    args = DPOConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, loss_type="ddpo", gamma=3.0,
                     per_device_train_batch_size=4, max_steps=1, logging_steps=1, save_strategy="no")
    with caplog.at_level(logging.WARNING, logger="mmalign.dpo.trainer"):
        trainer = DPOTrainer(make(tiny_dirs), args, train_dataset=half)
    assert "2 of 4 pairs (50.0%) carry corrected spans; the other 2 train as plain DPO" in caplog.text
    trainer.train()
    assert [e["ddpo/pairs_with_spans"] for e in trainer.state.log_history if "loss" in e] == [0.5]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmalign.dpo.trainer"):
        DPOTrainer(make(tiny_dirs), args, train_dataset=pair_dataset)
        DPOTrainer(make(tiny_dirs), args, train_dataset=pair_dataset.remove_columns(["chosen_spans", "rejected_spans"]))
    assert caplog.text.count("carry corrected spans") == 1 and "has no chosen_spans / rejected_spans columns" in caplog.text


def response_logps(adapter, images, rows, key, reference=False):
    """Summed response log-probs of ``rows[key]`` with ``images``, and the response lengths,
    through the adapter alone (the reference: its LoRA adapters off)."""
    batch = adapter.encode(images, [r["prompt"] for r in rows], [r[key] for r in rows])
    with torch.no_grad():
        if reference:
            with adapter.model.disable_adapter():
                logps, mask = adapter.response_logprobs(batch)
        else:
            logps, mask = adapter.response_logprobs(batch)
    return (logps * mask).sum(-1), mask.sum(-1)


def _by_hand(adapter, dataset, reference=False):
    """Summed and mean response log-probs of chosen and rejected through the adapter alone."""
    rows = [dataset[i] for i in range(len(dataset))]
    out = []
    for key in ("chosen", "rejected"):
        total, length = response_logps(adapter, [r["images"] for r in rows], rows, key, reference)
        out.append((total, total / length))
    return out


def loss_of(adapter, dataset, tmp_path, **kw):
    args = DPOConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True,
                     per_device_train_batch_size=len(dataset), **kw)
    trainer = DPOTrainer(adapter, args, train_dataset=dataset)
    adapter.model.train()  # the running bco_pair baseline counts training batches
    with torch.no_grad():
        return trainer.compute_loss(adapter.model, trainer.collator([dataset[i] for i in range(len(dataset))])).item()


def test_mpo_mix_is_the_weighted_sum_computed_by_hand(tiny_dirs, pair_dataset, tmp_path):
    import torch.nn.functional as F

    adapter = make(tiny_dirs)
    (pc, mean_c), (pr, mean_r) = _by_hand(adapter, pair_dataset)
    (rc, _), (rr, _) = _by_hand(adapter, pair_dataset, reference=True)
    beta = 0.5
    hc, hr = pc - rc, pr - rr
    sigmoid = -F.logsigmoid(beta * (hc - hr))
    delta = torch.cat([beta * hc, beta * hr]).mean()  # the first batch is the whole running mean
    bco = -F.logsigmoid(beta * hc - delta) - F.logsigmoid(-(beta * hr - delta))
    expected = (0.8 * sigmoid + 0.2 * bco - mean_c).mean()
    got = loss_of(adapter, pair_dataset, tmp_path, beta=beta, loss_type=["sigmoid", "bco_pair", "sft"],
                loss_weights=[0.8, 0.2, 1.0])
    assert got == pytest.approx(expected.item(), abs=1e-5)
    # the comma form is the same option
    assert loss_of(adapter, pair_dataset, tmp_path, beta=beta, loss_type="sigmoid,bco_pair,sft",
                 loss_weights=[0.8, 0.2, 1.0]) == pytest.approx(got, abs=1e-5)


def test_simpo_and_orpo_use_no_reference(tiny_dirs, pair_dataset, tmp_path, monkeypatch):
    import torch.nn.functional as F

    adapter = make(tiny_dirs)
    (_, mean_c), (_, mean_r) = _by_hand(adapter, pair_dataset)
    monkeypatch.setattr(DPOTrainer, "reference_logprobs", lambda *a, **k: pytest.fail("reference computed"))
    simpo = loss_of(adapter, pair_dataset, tmp_path, beta=2.0, loss_type="simpo", simpo_gamma=0.5)
    assert simpo == pytest.approx((-F.logsigmoid(2.0 * (mean_c - mean_r) - 0.5)).mean().item(), abs=1e-5)
    log_odds = (mean_c - mean_r) - (torch.log1p(-torch.exp(mean_c)) - torch.log1p(-torch.exp(mean_r)))
    orpo = loss_of(adapter, pair_dataset, tmp_path, beta=0.1, loss_type="orpo")
    assert orpo == pytest.approx((-mean_c - 0.1 * F.logsigmoid(log_odds)).mean().item(), abs=1e-5)


def test_loss_mix_options_are_checked():
    with pytest.raises(ValueError, match="loss_type must be one or more of"):
        DPOConfig(output_dir="x", loss_type=["sigmoid", "kto"])
    with pytest.raises(ValueError, match="loss_weights has 1 entries for 2 losses"):
        DPOConfig(output_dir="x", loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    assert DPOConfig(output_dir="x", loss_type="simpo").needs_reference is False
