"""``mmalign plan``: estimate peak GPU memory of a training run and whether it fits."""

from __future__ import annotations

import argparse
import json

from mmalign.plan import METHODS, PlanSettings, architecture_for, estimate_memory, parse_gpu


def cmd_plan(args: argparse.Namespace) -> int:
    name, arch = architecture_for(args.model)
    settings = PlanSettings(
        method=args.method, mode=args.mode, dtype=args.dtype, batch_size=args.batch_size, seq_len=args.seq_len,
        response_len=args.response_len, image_tokens=args.image_tokens, images_per_row=args.images,
        lora_r=args.lora_r, lora_dropout=args.lora_dropout, gradient_checkpointing=args.gradient_checkpointing,
        attention=args.attention, precomputed_ref=args.precomputed_ref, generation_batch=args.generation_batch,
        rollout_batch=args.rollout_batch, overhead_gib=args.overhead, num_generations=args.num_generations,
        shared_prefix=not args.no_shared_prefix, scorers=args.scorers,
    )
    plan = estimate_memory(arch, settings, model=name, gpu_gib=parse_gpu(args.gpu), headroom=args.headroom)
    print(json.dumps(plan.as_dict(), indent=2) if args.json else plan.table())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="estimate peak GPU memory of a training run and whether it fits a GPU",
        description="Add up base weights (4-bit or 16-bit), the vision tower, LoRA adapters, gradients, "
        "AdamW states, activations (with or without gradient checkpointing), logits at response "
        "positions, image tokens and, for PPO, the generation KV cache; print a table and whether the "
        "peak fits the GPU with headroom. See docs/plan.md for the formula and its validation.",
    )
    p.add_argument("--model", required=True, help="model card name (mmalign models) or a local model folder")
    p.add_argument("--method", required=True, choices=list(METHODS))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--qlora", dest="mode", action="store_const", const="qlora",
                      help="4-bit NF4 base + LoRA (default)")
    mode.add_argument("--lora", dest="mode", action="store_const", const="lora", help="16-bit base + LoRA")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="train every language-model weight")
    p.set_defaults(mode="qlora")
    p.add_argument("--batch-size", type=int, default=1,
                   help="per device: pairs for dpo / ddpo / rm / cost, rows for sft / ppo, completions for "
                        "grpo (per_device_train_batch_size; default 1)")
    p.add_argument("--seq-len", type=int, default=512, help="text tokens per sequence, images excluded (default 512)")
    p.add_argument("--response-len", type=int, help="response tokens (default: half of --seq-len)")
    p.add_argument("--image-tokens", type=int, help="tokens per image (default: the model's)")
    p.add_argument("--images", type=int, default=1, help="images per row (default 1)")
    p.add_argument("--lora-r", type=int, default=64, help="LoRA rank (default 64)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="keep only layer inputs, recompute in backward")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="compute dtype (default bfloat16)")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"],
                   help="sdpa: fused attention kernels, no probabilities kept (default); eager: probabilities kept")
    p.add_argument("--precomputed-ref", action="store_true", help="DPO with stored reference log-probs")
    p.add_argument("--generation-batch", type=int, default=4,
                   help="PPO / GRPO: rows generated and scored at a time (per_device_eval_batch_size, default 4)")
    p.add_argument("--rollout-batch", type=int, default=16,
                   help="PPO / GRPO: prompts per iteration (prompts_per_step for GRPO; default 16)")
    p.add_argument("--num-generations", type=int, default=8, help="GRPO: completions per prompt, G (default 8)")
    p.add_argument("--no-shared-prefix", action="store_true",
                   help="GRPO: one row per completion in the update (share_prefix false; default: one row per group)")
    p.add_argument("--scorers", type=int,
                   help="GRPO: reward / cost models in the loop, each a LoRA adapter on the base "
                        "(default 0 for grpo, 1 for safe-grpo)")
    p.add_argument("--gpu", default="24GB", help="GPU memory, e.g. 24GB, 48GB, 80GB (default 24GB)")
    p.add_argument("--headroom", type=float, default=0.1, help="fraction of the GPU kept free (default 0.1)")
    p.add_argument("--overhead", type=float, default=1.0,
                   help="GiB for the CUDA context and kernel workspaces (default 1.0)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=cmd_plan)
