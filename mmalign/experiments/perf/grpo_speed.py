"""GRPO training speed and peak memory: mmalign's GRPOTrainer against TRL's GRPOTrainer.

Usage::

    python -m mmalign.experiments.perf.grpo_speed               # full shape
    python -m mmalign.experiments.perf.grpo_speed --quick       # small shape, a smoke run
    python -m mmalign.experiments.perf.grpo_speed --steps 6 --warmup 1 --json speed.json

The model is the random LLaVA of the DPO benchmark (``dpo_speed.build_checkpoint``) at a
GRPO shape with LLaVA-1.5's token counts: a CLIP at 336 px / patch 14 (576 image tokens), a
Llama of 4 layers x 256, a 60-token question, ``max_new_tokens`` 32 sampled at temperature 1, G = 8 answers for each
of 2 prompts per step (16 answers, one optimiser step), LoRA r=8 on the language model,
β = 0 (no reference forward), the DAPO token-level loss, one pass (μ = 1). The reward is
the same cheap function for both (answer length), so the timing is the trainers' own
work: sampling, scoring, advantages and the update.

Every configuration runs in its own subprocess (peak RSS is its own); the first
``--warmup`` steps are not timed. Sampling dominates on a CPU with a random model that
rarely stops early, so both sides sample exactly ``max_new_tokens`` tokens (the end of
turn is never the most likely token of this model, and both sample from the full
distribution with the same settings).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mmalign.experiments.perf.dpo_speed import Shape as DPOShape
from mmalign.experiments.perf.dpo_speed import (
    _lora_settings,
    _rss_mb,
    _run_subprocess,
    _trl_lora_config,
    build_checkpoint,
    start_worker,
    step_clock,
)
from mmalign.utils import format_table

SEED = 42


@dataclass(frozen=True)
class Shape:
    image_size: int = 336  # 576 image tokens, as LLaVA-1.5
    patch_size: int = 14
    vision_hidden: int = 128
    vision_layers: int = 2
    text_hidden: int = 256
    text_layers: int = 4
    prompt_words: int = 59  # + "?" = 60 question tokens after the image
    prompts_per_step: int = 2
    num_generations: int = 8
    max_new_tokens: int = 32
    lora_r: int = 8

    def checkpoint_shape(self) -> DPOShape:
        return DPOShape(image_size=self.image_size, patch_size=self.patch_size, vision_hidden=self.vision_hidden,
                        vision_layers=self.vision_layers, text_hidden=self.text_hidden, text_layers=self.text_layers,
                        lora_r=self.lora_r)


FULL = Shape()
QUICK = replace(FULL, image_size=56, vision_hidden=32, text_hidden=64, text_layers=2, prompt_words=9,
                num_generations=4, max_new_tokens=8)

CONFIGURATIONS = {
    "trl": {"kind": "trl"},
    "mmalign": {"kind": "mmalign", "share_prefix": False},
    "mmalign shared prefix": {"kind": "mmalign", "share_prefix": True},
}


def length_reward(prompts, completions, **_: Any) -> list[float]:
    return [float(len(str(c).split())) for c in completions]


def prompt_rows(shape: Shape, n: int) -> list[dict[str, Any]]:
    """Conversational prompts with one image each (TRL's vision format, which mmalign reads too)."""
    from PIL import Image

    from mmalign.models.tiny import BASE_WORDS

    words = [w for w in BASE_WORDS if w.isalpha()]
    rows = []
    for i in range(n):
        text = " ".join(words[(i + k) % len(words)] for k in range(shape.prompt_words)) + " ?"
        image = Image.new("RGB", (shape.image_size, shape.image_size), ((37 * i) % 256, (91 * i) % 256, 128))
        rows.append({"images": [image],
                     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]})
    return rows


def _trl_trainer(spec: dict[str, Any], shape: Shape, dataset, out: str):
    import torch
    import trl
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(spec["checkpoint"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(spec["checkpoint"])
    completions = shape.prompts_per_step * shape.num_generations
    args = trl.GRPOConfig(
        output_dir=out, per_device_train_batch_size=completions, num_generations=shape.num_generations,
        max_completion_length=shape.max_new_tokens, steps_per_generation=1, num_iterations=1, beta=0.0,
        loss_type="dapo", temperature=1.0, top_p=1.0, learning_rate=1e-4, lr_scheduler_type="constant",
        max_steps=spec["max_steps"], logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, seed=SEED, dataloader_num_workers=0, disable_tqdm=True, shuffle_dataset=False,
    )
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=dataset,
                              processing_class=processor,
                              peft_config=_trl_lora_config(shape.checkpoint_shape()))
    return trainer


def _mmalign_trainer(spec: dict[str, Any], shape: Shape, dataset, out: str):
    from transformers import set_seed

    from mmalign.grpo import GRPOConfig, GRPOTrainer
    from mmalign.models import load_adapter

    adapter = load_adapter(spec["checkpoint"], dtype="float32")
    set_seed(SEED)
    adapter.add_lora(_lora_settings(shape.checkpoint_shape()))
    completions = shape.prompts_per_step * shape.num_generations
    args = GRPOConfig(
        output_dir=out, prompts_per_step=shape.prompts_per_step, num_generations=shape.num_generations,
        per_device_train_batch_size=completions, per_device_eval_batch_size=completions,
        max_new_tokens=shape.max_new_tokens, num_iterations=1, beta=0.0, loss_aggregation="token_mean",
        temperature=1.0, top_p=1.0, learning_rate=1e-4, lr_scheduler_type="constant", max_steps=spec["max_steps"],
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=SEED, disable_tqdm=True,
        share_prefix=spec["share_prefix"], reward_funcs=["length"],
    )
    return GRPOTrainer(adapter, args, dataset, reward_funcs=[length_reward])


def run_configuration(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration in this process; timings exclude the warm-up steps."""
    import torch
    from datasets import Dataset

    shape, warmup, steps, spec = start_worker(spec, Shape)
    dataset = Dataset.from_list(prompt_rows(shape, shape.prompts_per_step * (warmup + steps)))
    clock = step_clock()
    with tempfile.TemporaryDirectory() as out:
        build = _trl_trainer if spec["kind"] == "trl" else _mmalign_trainer
        trainer = build(spec, shape, dataset, out)
        rss_before = _rss_mb()
        lengths: list[float] = []
        if spec["kind"] == "trl":
            trainer.add_callback(clock)
            trainer.train()
            lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
        else:  # mmalign's loop logs once per iteration: time the iterations
            trainer.create_optimizer_and_scheduler(num_training_steps=warmup + steps)
            for _ in range(warmup + steps):
                rollout, log = trainer.make_rollout()
                trainer.grpo_update(rollout)
                trainer.iteration += 1
                clock.ends.append(time.perf_counter())
                lengths.append(log["completion_length"])
    timed = clock.ends[warmup - 1 :]
    elapsed = timed[-1] - timed[0]
    completions = shape.prompts_per_step * shape.num_generations
    return {"name": spec["name"], "s_per_step": elapsed / steps, "answers_per_s": steps * completions / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_train_mb": rss_before, "threads": torch.get_num_threads(),
            "completion_length": statistics.mean(lengths) if lengths else float("nan")}


def speed_table(rows: list[dict[str, Any]]) -> str:
    base = next(r for r in rows if r["name"] == "trl")
    return format_table(
        ["configuration", "s / step", "answers / s", "x TRL", "tokens / answer", "peak RSS (MB)", "x TRL memory"],
        [[r["name"], f"{r['s_per_step']:.2f}", f"{r['answers_per_s']:.1f}",
          f"{base['s_per_step'] / r['s_per_step']:.2f}", f"{r['completion_length']:.1f}", f"{r['peak_rss_mb']:.0f}",
          f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}"] for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmalign.experiments.perf.grpo_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shape: a smoke run in seconds")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration (default: 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps (default: 1)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the configurations; the median counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGURATIONS), help="run only these configurations")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_configuration(json.loads(args.worker))), flush=True)
        return 0
    shape = QUICK if args.quick else FULL
    names = args.only or list(CONFIGURATIONS)
    if "trl" not in names:
        names = ["trl", *names]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(shape.checkpoint_shape(), Path(tmp) / "llava")
        for _ in range(args.repeats):
            for name in names:
                spec = {"name": name, **CONFIGURATIONS[name], "checkpoint": str(checkpoint), "shape": asdict(shape),
                        "steps": args.steps, "warmup": args.warmup, "threads": args.threads}
                runs[name].append(_run_subprocess(spec, __spec__.name))
                print(f"{name}: {runs[name][-1]['s_per_step']:.2f} s/step", flush=True)
    rows = [min(r, key=lambda x: abs(x["s_per_step"] - statistics.median(y["s_per_step"] for y in r)))
            for r in runs.values()]
    print(speed_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": asdict(shape), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
