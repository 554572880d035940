"""``mmalign train METHOD --config recipe.yaml [--option value ...]`` and ``mmalign export``."""

from __future__ import annotations

import argparse

TRAIN_HELP = """\
Train with a recipe. Every option is a YAML key of the recipe and a --flag; flags
override the recipe. `mmalign train METHOD --help` lists the options of a method.

methods:
  sft    supervised fine-tuning on conversations (loss on assistant tokens only)
"""


def _method_specs():
    from mmalign.model_config import ModelConfig
    from mmalign.sft import SFTConfig, run_sft

    return {"sft": ((ModelConfig, SFTConfig), run_sft)}


def cmd_train(args: argparse.Namespace) -> int:
    from mmalign.config_io import parse_recipe

    types, run = _method_specs()[args.method]
    configs = parse_recipe(types, args.options, prog=f"mmalign train {args.method}")
    out = run(*configs)
    print(f"training finished; final model in {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mmalign.export import merge_adapter

    if not args.merge:
        raise SystemExit("mmalign export: only --merge is supported (fold LoRA into the base weights)")
    out = merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype,
                        trust_remote_code=args.trust_remote_code)
    print(f"merged checkpoint written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with a recipe (sft)", description=TRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["sft"], help="training method")
    p.add_argument("options", nargs=argparse.REMAINDER, help="--config FILE and --option value pairs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="merge a LoRA adapter into its base for deployment",
                       description="Write a standard transformers checkpoint (safetensors) with the "
                       "adapter folded into the base weights; it loads with from_pretrained alone.")
    p.add_argument("--merge", action="store_true", help="fold the LoRA weights into the base")
    p.add_argument("--base", required=True, help="base model: card name, hub id or folder")
    p.add_argument("--adapter", required=True, help="PEFT adapter folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", help="dtype of the merged weights (float32, bfloat16, float16)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom code from the base checkpoint")
    p.set_defaults(func=cmd_export)
