"""The memory planner's formula against numbers computed by hand."""

import json

import pytest

from mmalign.cli import main
from mmalign.models.cards import get_card, list_cards
from mmalign.plan import (
    NF4_DOUBLE_QUANT_BYTES,
    Architecture,
    PlanSettings,
    architecture_for,
    estimate_memory,
    layer_activation_bytes,
    logits_bytes,
    parse_gpu,
)

GiB = 1024**3
# A toy decoder: hidden 8, 2 layers, SwiGLU width 16, vocabulary 10, 2 heads of 4, 1 key/value head.
TOY = Architecture(hidden_size=8, num_layers=2, intermediate_size=16, vocab_size=10, num_heads=2,
                   num_kv_heads=1, vision_params=100, projector_params=20, image_tokens=3)


def part(plan, name):
    return next(p.bytes for p in plan.parts if p.name.startswith(name))


@pytest.mark.parametrize("card", [c.name for c in list_cards() if c.name != "scene-vlm"])
def test_card_architectures_add_up_to_the_published_sizes(card):
    arch = Architecture.from_card(get_card(card))
    assert arch.total_params / 1e9 == pytest.approx(get_card(card).params_b, abs=0.006)


def test_llava_7b_counts_by_hand():
    arch = Architecture.from_card(get_card("llava-1.5-7b"))
    # per layer: 4 x 4096^2 attention + 3 x 4096 x 11008 MLP = 202,375,168; x 32 layers
    assert arch.linear_params == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) == 6_476_005_376
    # LoRA r=64: q,k,v,o 4 x 64 x 8192, gate/up 2 x 64 x 15104, down 64 x 15104 = 4,997,120 per layer
    assert arch.lora_params(64) == 32 * 4_997_120 == 159_907_840
    assert NF4_DOUBLE_QUANT_BYTES == 0.5 + 1 / 64 + 4 / 16384


def test_toy_layer_activations_by_hand():
    s = PlanSettings(method="sft", mode="lora", dtype="float32", lora_r=2, lora_dropout=0.05, attention="eager")
    # per token, fp32: norm inputs 2x8, norm outputs 2x8, q, k (rotated), v, attention output
    # 8 + 4 + 4 + 8, SwiGLU 4 x 16; plus two fp32 rsqrt values
    base = (2 * 8 + 2 * 8 + (2 * 8 + 2 * 4) + 4 * 16) * 4 + 8  # 488
    attention = 2 * 2 * 3 * 4  # eager: probabilities and scores, 2 heads x seq 3, fp32
    lora = 2 * 7 * 4  # r=2 outputs of the seven targets, fp32
    dropout = (8 * 6 + 16) * 4 + 4 * 8 * 4  # every target's input (down: 16), and 4 x hidden more
    assert layer_activation_bytes(TOY, s, tokens=6, seq=3) == 6 * (base + attention + lora + dropout) == 6 * 976
    sdpa = PlanSettings(method="sft", mode="lora", dtype="float32", lora_r=2, lora_dropout=0.0)
    assert layer_activation_bytes(TOY, sdpa, tokens=6, seq=3) == 6 * (base + lora)
    full = PlanSettings(method="sft", mode="full", dtype="bfloat16")
    assert layer_activation_bytes(TOY, full, tokens=1, seq=3) == (2 * 8 + 2 * 8 + 24 + 64) * 2 + 8


def test_logits_only_at_response_positions():
    s = PlanSettings(mode="lora", dtype="bfloat16")
    assert logits_bytes(TOY, s, positions=5) == 5 * 10 * (2 + 4 + 4)  # bf16 head, fp32 copy, exp temp
    q = PlanSettings(mode="qlora", dtype="bfloat16")
    assert logits_bytes(TOY, q, positions=5) == 5 * 10 * (4 + 4)  # head upcast to fp32: no copy
    rm = estimate_memory(TOY, PlanSettings(method="rm", mode="lora"))
    assert not any(p.name == "logits" for p in rm.parts)  # a scalar head, no vocabulary


def test_toy_static_parts_by_hand():
    plan = estimate_memory(TOY, PlanSettings(method="sft", mode="lora", dtype="bfloat16", lora_r=2, overhead_gib=0))
    lora = 2 * 2 * (8 + 8 + 8 + 4 + 8 + 4 + 8 + 8 + 8 + 16 + 8 + 16 + 16 + 8)  # layers x r x (in + out)
    assert TOY.lora_params(2) == lora == 512
    assert part(plan, "base weights") == (TOY.linear_params + 2 * 10 * 8 + 5 * 8) * 2
    assert part(plan, "vision tower") == 120 * 2
    assert part(plan, "LoRA adapters x1") == lora * 4
    assert part(plan, "gradients x1") == lora * 4 and part(plan, "AdamW") == lora * 8


def test_qlora_upcasts_what_is_not_quantized():
    plan = estimate_memory(TOY, PlanSettings(method="sft", mode="qlora", overhead_gib=0))
    assert part(plan, "base weights, 4-bit") == TOY.linear_params * NF4_DOUBLE_QUANT_BYTES
    assert part(plan, "embeddings, LM head, norms (fp32)") == (2 * 10 * 8 + 5 * 8) * 4
    assert part(plan, "vision tower") == 120 * 4


def test_ppo_roles_share_one_base_and_kv_cache_matches_the_ppo_docs():
    arch = Architecture.from_card(get_card("llava-1.5-7b"))
    s = PlanSettings(method="safe-ppo", seq_len=624, generation_batch=4, gradient_checkpointing=True)
    plan = estimate_memory(arch, s)
    lora = 159_907_840
    assert part(plan, "LoRA adapters x5") == 5 * lora * 4
    assert part(plan, "gradients x3") == 3 * lora * 4 and part(plan, "AdamW states x3") == 3 * lora * 8
    # docs/ppo.md: 4 rows x 1,200 tokens (576 image) x 32 layers x (K and V) x 4096 x bf16
    assert part(plan, "KV cache") == 4 * 1200 * 32 * 2 * 4096 * 2 == 2_516_582_400
    assert sum(p.name.startswith("base weights") for p in plan.parts) == 1  # no second copy of the base
    ppo = estimate_memory(arch, PlanSettings(method="ppo", seq_len=624, gradient_checkpointing=True))
    assert plan.peak_bytes - ppo.peak_bytes == pytest.approx(2 * lora * 4 + lora * (4 + 8))  # cost model + cost critic adapters; the critic trains


def test_dpo_reference_costs_a_copy_only_in_full_training():
    assert not any("reference" in p.name for p in estimate_memory(TOY, PlanSettings(method="dpo")).parts)
    full = estimate_memory(TOY, PlanSettings(method="dpo", mode="full", dtype="bfloat16"))
    assert part(full, "reference model copy") == TOY.language_params * 2
    pre = estimate_memory(TOY, PlanSettings(method="dpo", mode="full", precomputed_ref=True))
    assert not any("reference" in p.name for p in pre.parts)


def test_checkpointing_keeps_layer_inputs_and_one_layer():
    arch = Architecture.from_card(get_card("llava-1.5-7b"))
    off = estimate_memory(arch, PlanSettings(method="ddpo", batch_size=2))
    on = estimate_memory(arch, PlanSettings(method="ddpo", batch_size=2, gradient_checkpointing=True))
    tokens = 4 * (512 + 576)  # chosen + rejected of two pairs
    assert part(on, "layer inputs") == 32 * tokens * 4096 * 2 + tokens * 4096 * (2 + 4)
    assert part(on, "one layer recomputed") == part(off, "activations") / 32 - tokens * 4096 * 6 / 32
    assert on.peak_bytes < off.peak_bytes


def test_fits_uses_headroom():
    s = PlanSettings(method="sft", mode="lora", overhead_gib=0)
    plan = estimate_memory(TOY, s, gpu_gib=1.0, headroom=0.1)
    assert plan.fits and plan.budget_gib == pytest.approx(0.9)
    big = estimate_memory(Architecture.from_card(get_card("llava-1.5-13b")),
                          PlanSettings(method="safe-ppo", batch_size=8), gpu_gib=24)
    assert big.fits is False and "does NOT fit" in big.table()


def test_parse_gpu():
    assert parse_gpu("24GB") == parse_gpu("24") == parse_gpu("24 GiB") == 24.0
    with pytest.raises(ValueError, match="24GB"):
        parse_gpu("lots")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown method 'orpo'"):
        PlanSettings(method="orpo")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        PlanSettings(batch_size=0)
    with pytest.raises(ValueError, match="use --qlora or --lora"):
        estimate_memory(TOY, PlanSettings(method="ppo", mode="full"))
    with pytest.raises(ValueError, match="use --qlora or --lora"):
        estimate_memory(TOY, PlanSettings(method="grpo", mode="full"))


def test_local_folder_reads_config_and_safetensors_headers(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mmalign.models.tiny import save_tiny

    folder = save_tiny("llava", tmp_path / "tiny")
    name, arch = architecture_for(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert name == "tiny"
    assert arch.vision_params == count(model.model.vision_tower)
    assert arch.projector_params == count(model.model.multi_modal_projector)
    assert arch.total_params == count(model)
    assert arch.image_tokens == 16 and arch.hidden_size == 64  # 32 px / patch 8, squared


def test_unknown_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"config.json: model_type 'bert' is not supported"):
        architecture_for(tmp_path)


def test_cli_prints_table_and_verdict(capsys):
    assert main(["plan", "--model", "llava-1.5-7b", "--method", "ddpo", "--qlora", "--batch-size", "2",
                 "--gradient-checkpointing", "--gpu", "24GB"]) == 0
    out = capsys.readouterr().out
    assert "base weights, 4-bit NF4" in out and "fits a 24 GiB GPU" in out
    assert main(["plan", "--model", "qwen2-vl-7b-instruct", "--method", "ppo", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "qwen2-vl-7b-instruct" and any(p["name"] == "KV cache" for p in data["parts"])


def test_llava_next_folder_plans_its_largest_tiling(tmp_path):
    from PIL import Image

    from mmalign.models import load_adapter
    from mmalign.models.tiny import save_tiny

    folder = save_tiny("llava_next", tmp_path / "next")
    _, arch = architecture_for(folder)
    assert arch.image_tokens == 4 * 4 + 8 * 8 + 8  # base view + 2x2 grid of 4x4 patches + a newline per row
    adapter = load_adapter(folder)
    batch = adapter.encode([[Image.new("RGB", (64, 64))]], ["what"], ["a"])
    assert int((batch.input_ids == adapter.base_model.config.image_token_id).sum()) == arch.image_tokens


def test_grpo_plans_one_row_per_group_and_the_group_kv_cache():
    arch = Architecture.from_card(get_card("llava-1.5-7b"))
    s = PlanSettings(method="grpo", batch_size=16, seq_len=160, response_len=128, num_generations=8,
                     generation_batch=16, rollout_batch=2, gradient_checkpointing=True)
    plan = estimate_memory(arch, s)
    # the update: 2 groups, each one row of 32 prompt + 8 x 128 completion + 576 image tokens
    assert part(plan, "layer inputs") == pytest.approx(32 * 2 * (32 + 8 * 128 + 576) * 4096 * 2
                                                       + 2 * 1632 * 4096 * (2 + 4))
    # logits at every completion's positions all the same: 16 x 128
    plain = estimate_memory(arch, PlanSettings(**{**s.__dict__, "shared_prefix": False}))
    assert part(plain, "layer inputs") == pytest.approx(32 * 16 * (160 + 576) * 4096 * 2 + 16 * 736 * 4096 * 6)
    assert plan.total("train") < plain.total("train")
    # rollouts: the 16 sampled rows' cache of prompt + completion + image, K and V, bf16
    assert part(plan, "KV cache") == 16 * 736 * 32 * 2 * 4096 * 2
    lora = 159_907_840
    assert part(plan, "LoRA adapters x1") == lora * 4 and part(plan, "gradients x1") == lora * 4
    safe = estimate_memory(arch, PlanSettings(**{**s.__dict__, "method": "safe-grpo"}))
    assert part(safe, "LoRA adapters x2") == 2 * lora * 4 and part(safe, "gradients x1") == lora * 4
    with_rm = estimate_memory(arch, PlanSettings(**{**s.__dict__, "scorers": 2}))
    assert part(with_rm, "LoRA adapters x3") == 3 * lora * 4


def test_cli_plans_grpo(capsys):
    assert main(["plan", "--model", "llava-1.5-7b", "--method", "safe-grpo", "--batch-size", "16",
                 "--num-generations", "8", "--json"]) == 0
    parts = {p["name"]: p for p in json.loads(capsys.readouterr().out)["parts"]}
    assert "LoRA adapters x2 (fp32)" in parts and "KV cache" in parts


@pytest.mark.parametrize("family", ["qwen3_vl", "gemma3", "internvl", "llava_onevision", "smolvlm", "idefics3"])
def test_folders_of_the_newer_families_split_tower_projector_and_language_model(tiny_dirs, family):
    from mmalign.models import load_adapter

    _, arch = architecture_for(tiny_dirs[family])
    adapter = load_adapter(tiny_dirs[family])
    count = lambda named: sum(p.numel() for _, p in named)  # noqa: E731
    assert arch.vision_params == count(adapter.vision_parameters())
    assert arch.projector_params == count(adapter.projector_parameters())
    language = sum(p.numel() for n, p in adapter.base_model.named_parameters()
                   if adapter._is_under(n, [adapter.language_scope, "lm_head"]))
    # the planner counts linear layers, embeddings and two norms per layer (no per-head q/k norms)
    assert arch.language_params == pytest.approx(language, rel=0.02)
