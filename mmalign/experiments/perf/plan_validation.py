"""Check the memory planner against measured peaks of tiny models on this machine.

Each configuration builds a tiny LLaVA (CLIP + MLP projector + Llama, real transformers
classes) of a given width, saves it, loads it through mmalign with LoRA (optionally 4-bit
NF4 and gradient checkpointing) and runs one training step of mmalign's supervised path:
image features once, response log-probs (logits only at response positions), backward,
AdamW. A warm-up step first creates the optimizer states, as in any step after the first.

The measured peak is torch's ``MemTracker`` (torch.distributed._tools.mem_tracker): a
dispatch mode that sees every tensor storage created or freed during the step and records
the largest total of live bytes, split into parameters, gradients, optimizer states,
activations and temporaries. It counts tensors, not the allocator's cache, so it is the
CPU analogue of ``torch.cuda.max_memory_allocated``. The planner is run with
the models' SDPA attention (on CPU too it keeps no attention probabilities) and no CUDA
allowance.

    python -m mmalign.experiments.perf.plan_validation [--out results.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Case:
    hidden: int
    layers: int
    batch: int
    prompt_words: int
    response_words: int
    checkpointing: bool
    mode: str = "lora"  # lora (fp32 base) or qlora (4-bit base, fp32 compute)
    vocab: int = 4096
    lora_r: int = 8


CASES = [
    Case(256, 4, 2, 60, 60, False),
    Case(256, 4, 2, 60, 60, True),
    Case(512, 4, 2, 120, 120, False),
    Case(512, 4, 2, 120, 120, True),
    Case(256, 6, 4, 200, 150, False),
    Case(512, 4, 2, 120, 120, False, mode="qlora"),
    Case(512, 4, 2, 120, 120, True, mode="qlora"),
]
QUICK = [CASES[0], CASES[1]]


def build_model(case: Case, folder: Path) -> Path:
    """Save a tiny LLaVA of the case's width, depth and vocabulary (64 image tokens)."""
    from mmalign.models.tiny import tiny_llava

    torch.manual_seed(0)
    model, processor = tiny_llava(image_size=64, patch_size=8, hidden=case.hidden, layers=case.layers)
    model.resize_token_embeddings(case.vocab)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tracker():
    """torch's MemTracker, taught that frozen parameters (the LoRA base) get no gradient hooks."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class LoraMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            memory = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            for param in module.parameters():
                if install_grad_hooks and param.requires_grad and param not in self._param_to_grad_hook_handles:
                    def grad_hook(grad):
                        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                    )
            return memory

    return LoraMemTracker()


def measure(case: Case, folder: Path) -> dict:
    """Peak bytes of one training step, by category, and the step's real shapes."""
    from PIL import Image

    from mmalign import LoraSettings, QuantizationConfig, load_adapter

    quantization = QuantizationConfig(compute_dtype="float32") if case.mode == "qlora" else None
    adapter = load_adapter(folder, dtype="float32", quantization=quantization)
    adapter.add_lora(LoraSettings(r=case.lora_r, alpha=16, dropout=0.05), gradient_checkpointing=case.checkpointing)
    if case.checkpointing and not adapter.quantized:
        adapter.model.enable_input_require_grads()
    adapter.model.train()
    images = [[Image.new("RGB", (64, 64), "red")] for _ in range(case.batch)]
    prompts = [" ".join(["red"] * case.prompt_words)] * case.batch
    responses = [" ".join(["blue"] * case.response_words)] * case.batch
    batch = adapter.encode(images, prompts, responses)
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        features = adapter.image_features(batch)
        logps, mask = adapter.response_logprobs(batch, features)
        loss = -(logps * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer states now exist, as in every later step
    memory = tracker()
    memory.track_external(adapter.model, optimizer)
    with memory:
        step()
    peak = memory.get_tracker_snapshot("peak")[torch.device("cpu")]
    categories = {str(k).split(".")[-1].lower(): v for k, v in peak.items()}
    image_id = adapter.base_model.config.image_token_id
    seq = batch.input_ids.shape[1]
    image_tokens = int((batch.input_ids[0] == image_id).sum())
    return {
        "peak": categories.pop("total"), "by_category": categories, "seq": seq,
        "image_tokens": image_tokens, "text_tokens": seq - image_tokens,
        "response_tokens": int(batch.response_mask[0].sum()),
    }


def predict(case: Case, folder: Path, shapes: dict):
    from mmalign.plan import Architecture, PlanSettings, estimate_memory

    arch = Architecture.from_folder(folder)
    settings = PlanSettings(
        method="sft", mode=case.mode, dtype="float32", batch_size=case.batch, seq_len=shapes["text_tokens"],
        response_len=shapes["response_tokens"], image_tokens=shapes["image_tokens"], lora_r=case.lora_r,
        lora_dropout=0.05, gradient_checkpointing=case.checkpointing, overhead_gib=0.0,
    )
    return estimate_memory(arch, settings, model=folder.name)


def run(cases: list[Case]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, case in enumerate(cases):
            start = time.time()
            folder = build_model(case, Path(tmp) / f"case{n}")
            measured = measure(case, folder)
            plan = predict(case, folder, measured)
            static = plan.total("static")
            result = {
                "case": asdict(case), **measured, "predicted": plan.peak_bytes,
                "predicted_static": static, "predicted_step": plan.total("train"),
                "measured_step": measured["peak"] - static,
                "ratio": plan.peak_bytes / measured["peak"], "seconds": round(time.time() - start, 1),
            }
            result["step_ratio"] = result["predicted_step"] / result["measured_step"]
            results.append(result)
            print(row(result), flush=True)
    return results


HEADER = ("| hidden x layers | mode | batch x tokens (image + text) | checkpointing | measured MB | "
          "predicted MB | ratio | step part: measured / predicted MB | ratio |\n"
          "|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    c = r["case"]
    mb = 1e6
    return (f"| {c['hidden']} x {c['layers']} | {c['mode']} | {c['batch']} x ({r['image_tokens']} + "
            f"{r['text_tokens']}) | {'on' if c['checkpointing'] else 'off'} | {r['peak'] / mb:.1f} | "
            f"{r['predicted'] / mb:.1f} | {r['ratio']:.2f} | {r['measured_step'] / mb:.1f} / "
            f"{r['predicted_step'] / mb:.1f} | {r['step_ratio']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="only the two smallest configurations")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(HEADER)
    results = run(QUICK if args.quick else CASES)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
