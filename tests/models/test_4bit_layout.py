"""4-bit layers keep one weight layout: generation (eval, no grad) then training works alike."""

import torch
from PIL import Image

from mmalign.models import load_adapter
from mmalign.qlora import LoraSettings, QuantizationConfig


def test_generation_then_training_in_4bit(tiny_dirs):
    import bitsandbytes as bnb

    adapter = load_adapter(tiny_dirs["qwen2_vl"], quantization=QuantizationConfig(compute_dtype="float32"))
    layers = [m for m in adapter.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    adapter.add_lora(LoraSettings(r=4, dropout=0.0))
    images = [Image.new("RGB", (32, 32), "red")]
    batch = adapter.encode(images, ["what is it?"], ["a red square."])
    adapter.model.eval()
    with torch.no_grad():
        before, mask = adapter.response_logprobs(batch)
    adapter.generate(images, ["what is it?"], max_new_tokens=4)  # eval forwards without grad
    adapter.model.train()
    logps, mask = adapter.response_logprobs(batch)  # used to fail after the CPU repacking
    (-logps[mask].sum()).backward()
    assert all(w.quant_state is not None and not getattr(w.quant_state, "packing_format_for_cpu", False)
               for w in (m.weight for m in layers))
    torch.testing.assert_close(logps.detach(), before, atol=1e-6, rtol=0)
