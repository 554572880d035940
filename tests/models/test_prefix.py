"""The shared-prefix forward scores every branch exactly as its own sequence does, and
sampling from one prefill per prompt continues with the plain path's logits."""

import pytest
import torch
from PIL import Image

from mmalign.dpo.logprobs import pair_logprobs
from mmalign.models import ADAPTERS, LlavaAdapter, VLMAdapter, load_adapter
from mmalign.models.batch import ModelInputsSpec
from mmalign.models.prefix import group_logprobs

FAMILIES = sorted(family for family, cls in ADAPTERS.items() if cls.supports_shared_prefix())
# families with positions of their own (the Qwen M-RoPE ones): the tests also show 1-D ones fail
OWN_POSITIONS = [family for family in FAMILIES if ADAPTERS[family].position_ids is not VLMAdapter.position_ids]


class TypedLlava(LlavaAdapter):
    """A family whose forward reads per-token inputs but that keeps the default 1-D positions."""

    family = "typed_llava"
    inputs = ModelInputsSpec(image_keys=("pixel_values",), text_keys=("token_type_ids",))


def group_batch(adapter):
    # a small and a larger image: M-RoPE gives their tokens fewer positions than tokens
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (64, 48), "blue")]
    prompts = ["describe the image.", "is there a cat?"]
    answers = [["a red ball .", "red", "a ball and a cup on a table .", "no"],
               ["yes", "no , there is no cat .", "a cat", "yes ."]]
    return adapter.encode([img for img in images for _ in range(4)], [p for p in prompts for _ in range(4)],
                          [a for group in answers for a in group])


@pytest.mark.parametrize("family", FAMILIES)
def test_group_forward_equals_one_forward_per_answer(tiny_dirs, family, monkeypatch):
    adapter = load_adapter(tiny_dirs[family])
    batch = group_batch(adapter)
    features = adapter.image_features(batch)
    with torch.no_grad():
        plain, plain_mask = adapter.response_logprobs(batch, features)
        shared, shared_mask = group_logprobs(adapter.model, adapter, batch, 4, features)
        uncached, _ = group_logprobs(adapter.model, adapter, batch, 4)
    assert torch.equal(plain_mask, shared_mask)
    assert torch.allclose(plain[plain_mask], shared[shared_mask], atol=1e-5)
    assert torch.allclose(plain[plain_mask], uncached[shared_mask], atol=1e-5)
    if family in OWN_POSITIONS:  # the comparison sees positions: 1-D ones would not pass it
        monkeypatch.setattr(type(adapter), "position_ids", VLMAdapter.position_ids)
        with torch.no_grad():
            one_d, _ = group_logprobs(adapter.model, adapter, batch, 4, features)
        assert (plain[plain_mask] - one_d[shared_mask]).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_pair_forward_equals_two_rows_per_pair(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    images = [Image.new("RGB", (32, 32), "red"), None, Image.new("RGB", (64, 48), "blue")]  # one pair without image
    prompts = ["describe the image.", "is there a cat?", "what color is it?"]
    chosen = adapter.encode(images, prompts, ["a red ball .", "no", "blue ."])
    rejected = adapter.encode(images, prompts, ["a cat and a dog on a table .", "yes , a cat", "red"])
    features = adapter.image_features(chosen)
    with torch.no_grad():
        for f in (features, None):
            pc, mc, pr, mr = pair_logprobs(adapter.model, adapter, chosen, rejected, f)
            sc, sm_c, sr, sm_r = pair_logprobs(adapter.model, adapter, chosen, rejected, f, share_prefix=True)
            for plain, plain_mask, shared, shared_mask in ((pc, mc, sc, sm_c), (pr, mr, sr, sm_r)):
                assert torch.equal(plain_mask[:, : shared_mask.shape[1]], shared_mask)  # the plain one is wider
                torch.testing.assert_close(shared[shared_mask], plain[plain_mask], atol=1e-5, rtol=0)


def test_group_forward_refuses_rows_that_do_not_share_the_prompt(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    image = Image.new("RGB", (32, 32), "red")
    batch = adapter.encode([image, image], ["describe the image.", "is there a cat?"], ["a ball .", "no"])
    with pytest.raises(ValueError, match="row 1: does not share the prompt of row 0"):
        group_logprobs(adapter.model, adapter, batch, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_from_one_prefill_per_prompt_gives_the_plain_tokens(tiny_dirs, family, monkeypatch):
    adapter = load_adapter(tiny_dirs[family])
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (64, 48), "blue")]
    prompts = ["is there a cat?", "describe the image in detail please."]  # different lengths: left padding
    logits = []  # what generate computed at each step: the tokens alone hardly see a position error
    generate = adapter.model.generate

    def recording(**kwargs):
        out = generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        logits.append(torch.stack(out.logits, 1))
        return out.sequences

    monkeypatch.setattr(adapter.model, "generate", recording)

    def run(prefill_once):
        torch.manual_seed(3)
        return adapter.sample(images, prompts, num_samples=3, max_new_tokens=10, prefill_once=prefill_once)

    plain, once = run(False), run(True)
    assert len(once.texts) == 6 and len(set(once.texts)) > 1
    assert once.texts == plain.texts
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=0)
    for name in ("input_ids", "attention_mask", "response_mask"):
        assert torch.equal(getattr(once.batch, name), getattr(plain.batch, name)), name
    assert once.batch.text_inputs.keys() == plain.batch.text_inputs.keys()
    for name, values in plain.batch.text_inputs.items():
        assert torch.equal(once.batch.text_inputs[name], values), name
    assert torch.equal(once.lengths, plain.lengths) and torch.equal(once.ended, plain.ended)
    # the features computed once per prompt are those of every sampled row
    assert plain.image_features is None
    expected = adapter.image_features(plain.batch)["image"].pooler_output
    got = once.image_features["image"].pooler_output
    assert len(got) == len(expected) == 6
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected))
    if family in OWN_POSITIONS:  # continuing with 1-D positions would change the logits
        monkeypatch.setattr(type(adapter), "position_ids", VLMAdapter.position_ids)
        run(True)
        assert (logits[2] - logits[0]).abs().max() > 1e-4


def test_per_token_inputs_without_their_own_positions_are_refused(tiny_dirs):
    assert {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl"} <= set(FAMILIES)
    assert {"qwen2_vl", "qwen2_5_vl"} <= set(OWN_POSITIONS)
    assert not TypedLlava.supports_shared_prefix()
    llava = load_adapter(tiny_dirs["llava"])
    typed = TypedLlava(llava.model, llava.processor, llava.card)
    with pytest.raises(ValueError, match=r"prefill_once is not available for typed_llava: .*\(token_type_ids\)"):
        typed.sample([Image.new("RGB", (32, 32))], ["hi"], num_samples=2, prefill_once=True)


@pytest.mark.parametrize("window", [4, 9, 1024])
def test_gemma3_branch_masks_keep_image_blocks_and_the_sliding_window(tiny_dirs, window, monkeypatch):
    """Gemma 3's image tokens see each other both ways and its local layers see ``sliding_window``
    positions back; the packed branch masks keep both, for the tiny model's local and global layer
    (a window of 4 or 9 cuts into the prompt, and a packed row is longer than any of its branches'
    own sequences)."""
    adapter = load_adapter(tiny_dirs["gemma3"])
    adapter.base_model.config.get_text_config().sliding_window = window
    gen = torch.Generator().manual_seed(0)  # textured images: a solid one gives identical image tokens
    images = [Image.fromarray((torch.rand(32, 32, 3, generator=gen) * 255).byte().numpy()) for _ in range(2)]
    answers = ["a red ball .", "red", "a ball and a cup on a table .", "no", "yes", "no , there is no cat .", "a cat", "yes ."]
    batch = adapter.encode([img for img in images for _ in range(4)],
                           [p for p in ("describe the image.", "is there a cat?") for _ in range(4)], answers)
    with torch.no_grad():
        plain, plain_mask = adapter.response_logprobs(batch)
        shared, shared_mask = group_logprobs(adapter.model, adapter, batch, 4)
        assert torch.allclose(plain[plain_mask], shared[shared_mask], atol=1e-5)
        # each rule is needed: without the image blocks, or (for short windows) without the window
        full_only = adapter.branch_attention_mask
        # (with 2 layers and a short window the responses cannot reach the image, so only the window shows)
        for drop in ("window",) if window < 1024 else ("blocks",):
            def masks(allowed, positions, per_token, dtype, drop=drop):
                if drop == "blocks":
                    per_token = {**per_token, "token_type_ids": torch.zeros_like(per_token["token_type_ids"])}
                out = full_only(allowed, positions, per_token, dtype)
                return {**out, "sliding_attention": out["full_attention"]} if drop == "window" else out
            monkeypatch.setattr(adapter, "branch_attention_mask", masks)
            broken, _ = group_logprobs(adapter.model, adapter, batch, 4)
            assert (plain[plain_mask] - broken[shared_mask]).abs().max() > 1e-4, drop
