"""An installation self-test: the whole QLoRA path on tiny models of every family.

For each family it builds a tiny random checkpoint, loads it back in 4-bit NF4 through
the adapter, attaches LoRA, takes a few optimizer steps on the response log-likelihood,
saves the PEFT adapter, reloads it and checks the log-probs are identical, and generates.
It needs no downloads, runs in seconds on a CPU, and is the quickest way to see that
torch, transformers, peft and bitsandbytes agree on a new machine.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from mmalign.models import load_adapter
from mmalign.models.tiny import TINY_BUILDERS, save_tiny
from mmalign.qlora import LoraSettings, QuantizationConfig


@dataclass
class SelftestResult:
    family: str
    quantized: bool
    trainable_params: int
    loss_first: float
    loss_last: float
    reload_max_diff: float
    sample: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.loss_last < self.loss_first and self.reload_max_diff < 1e-5


def _scene(colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> Image.Image:
    img = Image.new("RGB", (48, 48), (235, 235, 235))
    ImageDraw.Draw(img).ellipse(box, fill=colour)
    return img


def _examples():
    images = [_scene((220, 30, 30), (4, 4, 24, 24)), _scene((30, 30, 220), (20, 20, 44, 44))]
    prompts = ["what is in the image?", "what is in the image?"]
    responses = ["a red circle on the left.", "a blue circle on the right."]
    return images, prompts, responses


def run_family(family: str, workdir: Path, *, steps: int = 8, quantized: bool = True, seed: int = 0) -> SelftestResult:
    start = time.perf_counter()
    torch.manual_seed(seed)
    path = save_tiny(family, workdir / family, seed=seed)
    quant = QuantizationConfig(compute_dtype="float32") if quantized else None
    adapter = load_adapter(path, quantization=quant)
    adapter.add_lora(LoraSettings(r=8, alpha=16, dropout=0.0))
    images, prompts, responses = _examples()
    batch = adapter.encode(images, prompts, responses).to(adapter.device)
    features = adapter.image_features(batch)  # vision tower is frozen: encode once
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    adapter.model.train()
    losses = []
    for _ in range(steps):
        logps, mask = adapter.response_logprobs(batch, features)
        loss = -logps[mask].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    adapter.model.eval()
    with torch.no_grad():
        trained, _ = adapter.response_logprobs(batch, features)
    saved = adapter.save_adapter(workdir / f"{family}-adapter")
    fresh = load_adapter(path, quantization=quant)
    fresh.load_adapter(saved)
    with torch.no_grad():
        reloaded, _ = fresh.response_logprobs(batch)
    sample = fresh.generate(images[:1], prompts[:1], max_new_tokens=8)[0]
    return SelftestResult(
        family=family,
        quantized=quantized,
        trainable_params=sum(p.numel() for p in params),
        loss_first=losses[0],
        loss_last=losses[-1],
        reload_max_diff=float((reloaded - trained).abs().max()),
        sample=sample,
        seconds=time.perf_counter() - start,
    )


def run_selftest(
    families: Sequence[str] | None = None,
    *,
    steps: int = 8,
    quantized: bool = True,
    workdir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[SelftestResult]:
    """Run :func:`run_family` for each family (all by default)."""
    families = list(families or TINY_BUILDERS)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir) if workdir else Path(tmp)
        for family in families:
            if progress:
                progress(f"{family}: build tiny model, load {'4-bit' if quantized else 'fp32'}, QLoRA {steps} steps")
            results.append(run_family(family, root, steps=steps, quantized=quantized))
    return results


def format_results(results: Sequence[SelftestResult]) -> str:
    from mmalign.utils import format_table

    rows = [
        [r.family, "nf4" if r.quantized else "fp32", f"{r.trainable_params:,}", f"{r.loss_first:.3f}",
         f"{r.loss_last:.3f}", f"{r.reload_max_diff:.1e}", f"{r.seconds:.1f}", "ok" if r.ok else "FAIL"]
        for r in results
    ]
    header = ["family", "weights", "LoRA params", "loss start", "loss end", "reload diff", "sec", "status"]
    return format_table(header, rows)
