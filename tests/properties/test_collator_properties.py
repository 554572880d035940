"""Property tests: image-aware truncation, response masks, span weights (DPO collator, adapter)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmalign.dpo.collator import DPOCollator, span_token_weights
from mmalign.models.cards import get_card
from mmalign.models.llava import LlavaAdapter
from mmalign.models.tiny import tiny_llava

WORDS = ["red", "blue", "cup", "cat", "dog", "tree", "on", "the", "a", "left", "is", "there", "big", "."]
IMAGE_TOKENS = 16  # tiny LLaVA: 32 px images, patch 8
GAMMA = 0.25
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=25).map(" ".join)


@pytest.fixture(scope="module")
def adapter():
    torch.manual_seed(0)
    model, processor = tiny_llava()
    return LlavaAdapter(model, processor, get_card("llava-1.5-7b"))


def image():
    return Image.new("RGB", (32, 32), "red")


def n_image(adapter, ids):
    return int((ids == adapter.base_model.config.image_token_id).sum())


@st.composite
def spans_in(draw, text):
    n = draw(st.integers(0, 3))
    out = []
    for _ in range(n):
        start = draw(st.integers(0, max(len(text) - 1, 0)))
        end = draw(st.integers(start + 1, len(text) + 0)) if len(text) > start else start + 1
        out.append([start, end])
    return out


@st.composite
def pairs(draw):
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        chosen, rejected = draw(words), draw(words)
        rows.append({"images": [image()], "prompt": draw(words), "chosen": chosen, "rejected": rejected,
                     "chosen_spans": draw(spans_in(chosen)), "rejected_spans": draw(spans_in(rejected))})
    return rows


# ---------------------------------------------------------------------------- span -> token weights
offsets_strategy = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 8)), max_size=20).map(
    lambda pairs: [(a, a + w) for a, w in pairs])


@PROPERTY
@given(offsets=offsets_strategy, spans=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 10)), max_size=4))
def test_span_weights_mark_exactly_the_overlapping_tokens(offsets, spans):
    spans = [(a, a + w) for a, w in spans]
    weights = span_token_weights(offsets, spans, GAMMA)
    assert len(weights) == len(offsets)
    for (s, e), w in zip(offsets, weights):
        overlaps = any(max(s, a) < min(e, b) for a, b in spans)
        assert w == (GAMMA if overlaps else 1.0)
        if s == e:  # zero-width tokens (end of turn) are never corrected
            assert w == 1.0
    assert span_token_weights(offsets, spans, 1.0) == [1.0] * len(offsets)
    assert span_token_weights(offsets, [], GAMMA) == [1.0] * len(offsets)
    more = span_token_weights(offsets, [*spans, (0, 5)], GAMMA)  # adding a span only adds weight γ
    assert all(m == GAMMA for m, w in zip(more, weights) if w == GAMMA)


@PROPERTY
@given(text=words, data=st.data())
def test_adapter_offsets_carry_character_spans_to_tokens(adapter, text, data):
    batch = adapter.encode([[image()]], ["describe"], [text])
    offsets = batch.response_offsets[0]
    assert len(offsets) == int(batch.response_mask[0].sum())
    ends = [e for _, e in offsets]
    assert ends == sorted(ends) and offsets[-1] == (len(text), len(text))  # end-of-turn is zero-width
    for s, e in offsets[:-1]:  # each token is a word or punctuation mark of the text
        assert text[s:e].strip() and text[s:e] in WORDS
    spans = data.draw(spans_in(text))
    weights = span_token_weights(offsets, spans, GAMMA)
    for a, b in spans:  # every visible corrected character lies in a token with weight γ
        for c in range(a, min(b, len(text))):
            if not text[c].isspace():
                token = next(j for j, (s, e) in enumerate(offsets) if s <= c < e)
                assert weights[token] == GAMMA
    for (s, e), w in zip(offsets, weights):  # and every γ token touches a corrected character
        if w == GAMMA:
            assert any(max(s, a) < min(e, b) for a, b in spans)


# ---------------------------------------------------------------------------- truncation
@PROPERTY
@given(prompt=words, response=words, max_length=st.integers(10, 70))
def test_truncation_cuts_the_response_tail_never_image_tokens(adapter, prompt, response, max_length):
    full = adapter.encode([[image()]], [prompt], [response])
    n_resp = int(full.response_mask[0].sum())
    prefix = full.input_ids.shape[1] - n_resp
    try:
        cut = adapter.encode([[image()]], [prompt], [response], max_length=max_length)
    except ValueError as err:
        assert str(err).startswith("row 0: ") and "image tokens are never truncated" in str(err)
        assert prefix + 1 > max_length  # not even one response token fits after prompt and image
        return
    ids = cut.input_ids[0]
    assert len(ids) == min(max_length, full.input_ids.shape[1])
    assert n_image(adapter, ids) == IMAGE_TOKENS
    kept = int(cut.response_mask[0].sum())
    assert kept == min(n_resp, max_length - prefix) >= 1
    assert torch.equal(ids[cut.response_mask[0]], full.input_ids[0][full.response_mask[0]][:kept])
    assert cut.response_offsets[0] == full.response_offsets[0][:kept]


@PROPERTY
@given(rows=pairs(), max_length=st.one_of(st.none(), st.integers(8, 60)))
def test_dpo_collator_keeps_images_and_aligns_masks_and_weights(adapter, rows, max_length):
    collator = DPOCollator(adapter, max_length=max_length, gamma=GAMMA)
    try:
        out = collator([dict(r) for r in rows])
    except ValueError as err:
        assert "every pair of a batch is longer than max_length" in str(err)
        assert collator.stats.dropped == len(rows)
        return
    kept = out["pair_index"].tolist()
    assert kept == sorted(kept) and len(kept) == len(rows) - collator.stats.dropped
    for side in ("chosen", "rejected"):
        ids, mask, weights = out[f"{side}_input_ids"], out[f"{side}_response_mask"], out[f"{side}_weights"]
        assert ids.shape == mask.shape and weights.shape[0] == len(kept)
        if max_length is not None:
            assert ids.shape[1] <= max_length
        for j, i in enumerate(kept):
            real = out[f"{side}_attention_mask"][j].bool()
            assert n_image(adapter, ids[j][real]) == IMAGE_TOKENS  # image tokens never cut
            n = int(mask[j].sum())
            assert n >= 1 and not mask[j][~real].any()
            assert set(weights[j, :n].tolist()) <= {1.0, GAMMA} and not weights[j, n:].any()
            if max_length is None:  # untouched rows: weights are the spans' own mapping
                offsets = adapter.encode([[image()]], [rows[i]["prompt"]], [rows[i][side]]).response_offsets[0]
                assert weights[j, :n].tolist() == span_token_weights(offsets, rows[i][f"{side}_spans"], GAMMA)
    for i in set(range(len(rows))) - set(kept):  # a pair is dropped only when images alone do not fit
        last = rows[i]["prompt"].split()[-1]
        shortest = min(len(adapter.encode([[image()]], [last], [rows[i][s].split()[0]]).input_ids[0])
                       for s in ("chosen", "rejected"))
        assert shortest > max_length or len(rows[i]["prompt"].split()) == 1


@PROPERTY
@given(prompt=st.lists(st.sampled_from(WORDS), min_size=1, max_size=12), at=st.integers(0, 12),
       extra=st.integers(1, 2))
def test_image_placeholder_in_a_text_prompt_marks_the_image(adapter, prompt, at, extra):
    at = min(at, len(prompt))
    plain = adapter.encode([[image()]], [" ".join(prompt)], ["a cup."])
    marked = " ".join([*prompt[:at], "<image>", *prompt[at:]])
    placed = adapter.encode([[image()]], [marked], ["a cup."])
    assert n_image(adapter, placed.input_ids[0]) == IMAGE_TOKENS  # the placeholder is the image, not a second one
    assert torch.equal(placed.input_ids, plain.input_ids)  # LLaVA's template puts images first either way
    with pytest.raises(ValueError, match=f"has {1 + extra} <image> placeholder"):
        adapter.encode([[image()]], [" ".join([marked, *["<image>"] * extra])], ["a cup."])
