import re

import pytest
import torch

from mmalign.io import OutputKind, atomic_dir
from mmalign.qlora import QuantizationConfig, lora_target_regex, resolve_dtype


def test_lora_regex_matches_only_inside_scope():
    rx = lora_target_regex(["model.language_model"], ["q_proj", "down_proj"])
    assert re.fullmatch(rx, "model.language_model.layers.3.self_attn.q_proj")
    assert re.fullmatch(rx, "model.language_model.layers.0.mlp.down_proj")
    assert not re.fullmatch(rx, "model.vision_tower.encoder.layers.0.self_attn.q_proj")
    assert not re.fullmatch(rx, "model.language_model.layers.0.self_attn.q_proj_extra")
    with pytest.raises(ValueError):
        lora_target_regex(["x"], [])


def test_quantization_config_to_bitsandbytes():
    bnb = QuantizationConfig(compute_dtype="bf16").to_bitsandbytes(["model.vision_tower", "lm_head"])
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb.llm_int8_skip_modules == ["model.vision_tower", "lm_head"]
    with pytest.raises(ValueError, match="quant_type"):
        QuantizationConfig(quant_type="int3").to_bitsandbytes([])
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    kind = OutputKind("test output", ("a.txt",))
    with atomic_dir(target, replaces=kind) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(target, replaces=kind) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(target, replaces=kind) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
