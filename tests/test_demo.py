"""The main job end to end on a small budget: stages, report, resume."""

import json

import pytest

from mmalign.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path):
    config = DemoConfig(eval_scenes=4, feedback_scenes=4, epochs=1, batch_size=8, learning_rate=1e-3)
    messages: list[str] = []
    report = run_demo(tmp_path, config, progress=messages.append)
    assert [m[:5] for m in messages] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    results = json.loads((tmp_path / "results.json").read_text())
    pairs = json.loads((tmp_path / "pairs-stats.json").read_text())
    assert results["pairs"] == pairs and pairs["scenes"] == 4 and pairs["records"] > 0
    assert results["config"]["replace_absent"] is False and results["config"]["sft_weight"] == 1.0
    for side in ("before", "after"):
        assert {"F1 (mean of splits)", "CHAIR_s", "CHAIR_i"} <= set(results[side])
    table = report.read_text()
    assert f"{results['before']['CHAIR_s']:.3f}" in table and f"{results['after']['CHAIR_s']:.3f}" in table
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "before_after.png").stat().st_size > 0
    # a second run resumes: no stage is redone and the numbers are read back unchanged
    adapter_time = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    messages.clear()
    run_demo(tmp_path, config, progress=messages.append)
    assert [m[:5] for m in messages] == ["[2/5]", "[5/5]"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapter_time
    assert json.loads((tmp_path / "results.json").read_text())["after"] == results["after"]


def test_demo_policy_loads_each_precision_with_a_trainable_lora():
    import bitsandbytes as bnb
    import torch

    from mmalign.demo import demo_policy

    config = DemoConfig()
    for precision, base_dtype in (("nf4", None), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        policy = demo_policy(config, precision=precision)
        modules = dict(policy.model.named_modules())
        quantized = [m for m in modules.values() if isinstance(m, bnb.nn.Linear4bit)]
        assert bool(quantized) == (precision == "nf4")
        if base_dtype is not None:
            frozen = [p for n, p in policy.model.named_parameters() if "q_proj.base_layer" in n]
            assert frozen and all(p.dtype == base_dtype for p in frozen)
        trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        demo_policy(config, precision="int8")
