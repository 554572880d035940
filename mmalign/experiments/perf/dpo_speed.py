"""DPO training speed and peak memory: mmalign's trainer paths against TRL's DPOTrainer.

Usage::

    python -m mmalign.experiments.perf.dpo_speed                 # full shape, every configuration
    python -m mmalign.experiments.perf.dpo_speed --quick         # small shape, a smoke run in seconds
    python -m mmalign.experiments.perf.dpo_speed --steps 8 --warmup 2 --repeats 2 --json speed.json
    python -m mmalign.experiments.perf.dpo_speed --vocab 32000   # LLaVA-1.5's vocabulary size

The model is a randomly initialised LLaVA built offline with a realistic token budget
(as TRL's VLM DPO examples use): a Llama of 8 layers x 512 wide, a CLIP of 2 layers
x 128 wide at 336 px / patch 14 (576 image tokens), a 60-token question and 100-token
answers (+ end of turn), LoRA r=8 on every linear layer of the language model, reference =
the base with adapters off, fp32, 2 pairs per step, AdamW at a constant learning rate,
sequential batches. The vocabulary is the tiny word-level one (136 tokens) of models/tiny.py;
``--vocab`` widens it with filler words to a real size. That matters for TRL on
CPU: without Triton its fused LM head scores every position of every row, not only the
response positions, so a large vocabulary costs TRL far more there than on a GPU.

Both trainers load the same saved checkpoint and train on the same rows (TRL's
conversational vision format, which mmalign reads too); TRL's chat template gets the BOS
mmalign adds (see tests/dpo/test_trl_parity.py), so both score identical token sequences.
LoRA matrices start from the same seed, so every configuration follows the same loss
trajectory; the table shows the largest per-step loss difference from TRL as a check that
all of them do the same work.

Every configuration runs in its own fresh subprocess, so the peak resident set size
(``ru_maxrss``) is that configuration's alone (model, data, optimiser and activations).
The first ``--warmup`` steps are excluded from the timing. On a shared machine use
``--repeats`` > 1: the configurations then run interleaved, round after round, and the
table reports the median throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mmalign.utils import format_table

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SEED = 42


@dataclass(frozen=True)
class Shape:
    """Model and data sizes. The defaults are the full benchmark shape."""

    image_size: int = 336
    patch_size: int = 14
    vision_hidden: int = 128
    vision_layers: int = 2
    text_hidden: int = 512
    text_layers: int = 8
    vocab_size: int = 0  # 0: the word-level vocabulary as it is; more pads it with filler words
    prompt_words: int = 59  # + "?" = 60 prompt tokens after the image
    response_words: int = 99  # + "." = 100 tokens, + end of turn
    pairs_per_step: int = 2
    lora_r: int = 8

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


FULL = Shape()
QUICK = replace(FULL, image_size=56, vision_hidden=32, text_hidden=64, text_layers=2, prompt_words=11,
                response_words=19)

#: name -> how to train. "trl" is the baseline of the ratios: TRL with the same settings as
#: mmalign (no activation checkpointing); "trl-checkpointing" is TRL's default config.
CONFIGS: dict[str, dict[str, Any]] = {
    "trl": {"kind": "trl", "checkpointing": False},
    "trl-checkpointing": {"kind": "trl", "checkpointing": True},
    "mmalign-plain": {"kind": "mmalign", "cache_image_features": False, "share_prefix": False},
    "mmalign-cached": {"kind": "mmalign", "cache_image_features": True, "share_prefix": False},
    "mmalign-cached-shared": {"kind": "mmalign", "cache_image_features": True, "share_prefix": True},
    "mmalign-cached-shared-precomputed": {
        "kind": "mmalign", "cache_image_features": True, "share_prefix": True, "precompute": True,
    },
}


# ---------------------------------------------------------------------------- model and data
def build_checkpoint(shape: Shape, folder: Path) -> Path:
    """Save a random LLaVA of ``shape`` with a word-level tokenizer and LLaVA-1.5's template."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from mmalign.models.cards import get_card
    from mmalign.models.tiny import BASE_WORDS, build_word_tokenizer

    base = build_word_tokenizer(["<image>"])
    filler = [f"w{i}" for i in range(max(0, shape.vocab_size - len(base)))]  # widen to a real vocabulary
    tokenizer = build_word_tokenizer(["<image>"], [*BASE_WORDS, *filler])
    heads = max(2, shape.text_hidden // 64)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.text_hidden, intermediate_size=shape.text_hidden * 43 // 16,
        num_hidden_layers=shape.text_layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers, num_attention_heads=max(2, shape.vision_hidden // 64),
        image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=shape.vision_hidden,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-2, tie_word_embeddings=False,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": shape.image_size},
            crop_size={"height": shape.image_size, "width": shape.image_size},
        ),
        tokenizer=tokenizer, patch_size=shape.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=get_card("llava-1.5-7b").chat_template,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def preference_rows(shape: Shape, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct pairs: a noise image, a question, two different answers (fixed lengths)."""
    import random

    import numpy as np
    from PIL import Image

    from mmalign.models.tiny import BASE_WORDS

    words = sorted({w for w in BASE_WORDS if w not in ("user", "assistant", "system")})
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)

    def sentence(k: int, end: str) -> str:
        return " ".join(rng.choices(words, k=k)) + end

    rows = []
    for _ in range(n):
        image = Image.fromarray(pixels.integers(0, 256, (shape.image_size, shape.image_size, 3), dtype=np.uint8))
        rows.append({
            "images": [image],
            "prompt": [{"role": "user", "content": [{"type": "image"},
                                                    {"type": "text", "text": sentence(shape.prompt_words, "?")}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": sentence(shape.response_words, ".")}]}],
            "rejected": [{"role": "assistant",
                          "content": [{"type": "text", "text": sentence(shape.response_words, ".")}]}],
        })
    return rows


# ---------------------------------------------------------------------------- one configuration
def _training_arguments(shape: Shape, steps: int, out: str) -> dict[str, Any]:
    """Settings both trainers share."""
    return dict(
        output_dir=out, per_device_train_batch_size=shape.pairs_per_step, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-4, lr_scheduler_type="constant", weight_decay=0.0, optim="adamw_torch",
        train_sampling_strategy="sequential", logging_steps=steps, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, seed=SEED, dataloader_num_workers=0, disable_tqdm=True, beta=0.1, max_length=None,
    )


def _recording(trainer_cls: type) -> type:
    """``trainer_cls`` whose ``compute_loss`` keeps every loss value (full precision, unlike the logs)."""

    class Recording(trainer_cls):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.recorded_losses: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            loss = out[0] if isinstance(out, tuple) else out
            self.recorded_losses.append(float(loss.detach()))
            return out

    return Recording


def _lora_settings(shape: Shape):
    from mmalign.qlora import LoraSettings

    return LoraSettings(r=shape.lora_r, alpha=2 * shape.lora_r, dropout=0.0, target_modules=list(LORA_TARGETS))


def _trl_lora_config(shape: Shape):
    """The ``LoraConfig`` mmalign's LLaVA adapter builds from ``_lora_settings`` (language model only)."""
    from peft import LoraConfig

    from mmalign.models.llava import LlavaAdapter
    from mmalign.qlora import lora_target_regex

    settings = _lora_settings(shape)
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias=settings.bias,
                      target_modules=lora_target_regex([LlavaAdapter.language_scope], list(LORA_TARGETS)))


def _trl_trainer(spec: dict[str, Any], shape: Shape, dataset, out: str):
    import torch
    import trl
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(spec["checkpoint"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(spec["checkpoint"])
    processor.chat_template = "{{ bos_token }}" + processor.chat_template  # mmalign's BOS, same tokens
    args = trl.DPOConfig(**_training_arguments(shape, spec["max_steps"], out), loss_type=["sigmoid"],
                         activation_checkpointing=spec["checkpointing"])
    # TRL seeds the RNG with args.seed right before creating the LoRA matrices.
    trainer = _recording(trl.DPOTrainer)(model=model, args=args, train_dataset=dataset,
                                         processing_class=processor, peft_config=_trl_lora_config(shape))
    return trainer, {}


def _mmalign_trainer(spec: dict[str, Any], shape: Shape, dataset, out: str):
    from transformers import set_seed

    from mmalign.dpo import DPOConfig, DPOTrainer
    from mmalign.dpo.reference import precompute_reference_logps
    from mmalign.models import load_adapter

    adapter = load_adapter(spec["checkpoint"], dtype="float32")
    set_seed(SEED)  # as TRL does, so the LoRA matrices start identical
    adapter.add_lora(_lora_settings(shape))
    extra: dict[str, Any] = {}
    if spec.get("precompute"):
        start = time.perf_counter()
        dataset = precompute_reference_logps(adapter, dataset, max_length=None, batch_size=shape.pairs_per_step,
                                             share_prefix=spec["share_prefix"], progress=False)
        extra["precompute_s"] = time.perf_counter() - start
    args = DPOConfig(**_training_arguments(shape, spec["max_steps"], out), loss_type="sigmoid",
                     activation_checkpointing=False, cache_image_features=spec["cache_image_features"],
                     share_prefix=spec["share_prefix"], precompute_ref_logps=bool(spec.get("precompute")))
    return _recording(DPOTrainer)(adapter, args, train_dataset=dataset), extra


def _row_tokens(trainer, row: dict[str, Any], kind: str) -> int:
    """Tokens of the chosen sequence of one pair, as the trainer's own collator builds it."""
    batch = trainer.data_collator([row])
    mask = batch["attention_mask"][0] if kind == "trl" else batch["chosen_attention_mask"][0]
    return int(mask.sum())


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_worker(spec: dict[str, Any], shape_type: type) -> tuple[Any, int, int, dict[str, Any]]:
    """A configuration run's torch threads, shape, warm-up and timed steps, and its spec with
    ``max_steps`` (warm-up + timed) set."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    warmup, steps = spec["warmup"], spec["steps"]
    return shape_type(**spec["shape"]), warmup, steps, dict(spec, max_steps=warmup + steps)


def step_clock():
    """A ``TrainerCallback`` whose ``ends`` lists the time each optimiser step ended."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepClock()


def run_configuration(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration in this process; timings exclude the warm-up steps."""
    import torch
    from datasets import Dataset

    shape, warmup, steps, spec = start_worker(spec, Shape)
    dataset = Dataset.from_list(preference_rows(shape, shape.pairs_per_step * (warmup + steps)))
    with tempfile.TemporaryDirectory() as out:
        build = _trl_trainer if spec["kind"] == "trl" else _mmalign_trainer
        trainer, extra = build(spec, shape, dataset, out)
        row_tokens = _row_tokens(trainer, dataset[0], spec["kind"])
        clock = step_clock()
        trainer.add_callback(clock)
        rss_before = _rss_mb()
        trainer.train()
    timed = clock.ends[warmup - 1 :]
    elapsed = timed[-1] - timed[0]
    return {
        "name": spec["name"],
        "pairs_per_s": steps * shape.pairs_per_step / elapsed,
        "s_per_step": elapsed / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_train_mb": rss_before,
        "losses": trainer.recorded_losses,
        "row_tokens": row_tokens,
        "threads": torch.get_num_threads(),
        **extra,
    }


# ---------------------------------------------------------------------------- driver
def _run_subprocess(spec: dict[str, Any], module: str = __spec__.name if __spec__ else __name__) -> dict[str, Any]:
    """Run one configuration in a fresh ``python -m module --worker SPEC`` and read its result line."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error")
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    proc = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"configuration {spec['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per configuration: median throughput, largest peak RSS, ratios to TRL."""
    rows = []
    for name, results in runs.items():
        rows.append({
            "name": name,
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in results),
            "all_pairs_per_s": [r["pairs_per_s"] for r in results],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "rss_before_train_mb": max(r["rss_before_train_mb"] for r in results),
            "losses": results[0]["losses"],
            "precompute_s": statistics.median(r["precompute_s"] for r in results) if "precompute_s" in results[0]
            else None,
        })
    base = next((r for r in rows if r["name"] == "trl"), None)
    for row in rows:
        if base is not None:
            row["speed_vs_trl"] = row["pairs_per_s"] / base["pairs_per_s"]
            row["memory_vs_trl"] = row["peak_rss_mb"] / base["peak_rss_mb"]
            row["max_loss_diff_vs_trl"] = max(abs(a - b) for a, b in zip(row["losses"], base["losses"]))
    return rows


def speed_table(rows: list[dict[str, Any]]) -> str:
    """One line per configuration: throughput, peak memory and ratios to TRL."""
    def value(row: dict[str, Any], key: str, fmt: str, suffix: str = "") -> str:
        return format(row[key], fmt) + suffix if row.get(key) is not None else "-"

    header = ["configuration", "pairs/s", "peak RSS MB", "+train MB", "speed/TRL", "mem/TRL", "max|dloss|", "notes"]
    lines = [[r["name"], f"{r['pairs_per_s']:.3f}", f"{r['peak_rss_mb']:.0f}",
              f"{r['peak_rss_mb'] - r['rss_before_train_mb']:.0f}", value(r, "speed_vs_trl", ".2f", "x"),
              value(r, "memory_vs_trl", ".2f", "x"), value(r, "max_loss_diff_vs_trl", ".1e"),
              f"reference precomputed once in {r['precompute_s']:.1f} s" if r["precompute_s"] is not None else ""]
             for r in rows]
    return format_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--quick", action="store_true", help="small shape for a smoke run")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all configurations, interleaved")
    parser.add_argument("--vocab", type=int, default=0,
                        help="vocabulary size (0: the 136-token word-level vocabulary; 32000 is LLaVA-1.5's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per configuration (0: torch's default). One thread keeps timings "
                             "steady on a machine shared with other jobs")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print("RESULT " + json.dumps(run_configuration(json.loads(args.worker))), flush=True)
        return 0
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    shape = replace(QUICK if args.quick else FULL, vocab_size=args.vocab)
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(shape, Path(tmp) / "llava")
        for round_ in range(args.repeats):
            for name in args.configs:
                spec = {"name": name, **CONFIGS[name], "shape": asdict(shape), "checkpoint": str(checkpoint),
                        "steps": args.steps, "warmup": args.warmup, "threads": args.threads}
                result = _run_subprocess(spec)
                runs[name].append(result)
                print(f"[round {round_ + 1}/{args.repeats}] {name}: {result['pairs_per_s']:.3f} pairs/s, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    rows = summarise(runs)
    first = next(iter(runs.values()))[0]
    row_tokens, threads = first["row_tokens"], first["threads"]
    if any(r["row_tokens"] != row_tokens for results in runs.values() for r in results):
        raise RuntimeError("the configurations built rows of different lengths")
    print(f"shape: {'quick' if args.quick else 'full'} {asdict(shape)}; rows of {row_tokens} tokens; "
          f"{args.warmup} warm-up + {args.steps} timed steps; {args.repeats} round(s); torch threads {threads}")
    print(speed_table(rows))
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"shape": asdict(shape), "rows": rows, "runs": runs,
                                         "load_before": load_before, "load_after": load_after}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
