"""``mmalign version | models | selftest | demo | tiny``."""

from __future__ import annotations

import argparse

from mmalign import __version__
from mmalign.cli.common import add_output_flags
from mmalign.demo import DemoConfig, run_demo
from mmalign.utils import format_table


def cmd_version(args: argparse.Namespace) -> int:
    from mmalign.qlora import import_bitsandbytes

    bitsandbytes = import_bitsandbytes()  # first, before peft imports it: no hub kernel lookup

    import datasets
    import peft
    import torch
    import transformers

    print(f"mmalign {__version__}")
    for mod in (torch, transformers, peft, bitsandbytes, datasets):
        print(f"  {mod.__name__:<13} {mod.__version__}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"  device        {device}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from mmalign.models import list_cards

    cards = list_cards()
    if args.verbose:
        for card in cards:
            print(f"{card.name}  ({card.family})\n  hub id:       {card.hub_id}\n  {card.description}")
            print(f"  image token:  {card.image_token}   end of turn: {card.end_of_turn}")
            lora, quant = card.lora, card.quantization
            print(f"  LoRA:         r={lora.r} alpha={lora.alpha} dropout={lora.dropout} "
                  f"targets={','.join(lora.target_modules)}")
            print(f"  4-bit:        {quant.quant_type}, double quant={quant.double_quant}, "
                  f"compute={quant.compute_dtype}\n")
        return 0
    rows = [[c.name, c.family, c.hub_id, f"{c.params_b:.1f}B" if c.params_b else "-",
             f"{c.quantization.quant_type}/{c.quantization.compute_dtype}"] for c in cards]
    print(format_table(["card", "family", "hub id", "params", "4-bit"], rows))
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from mmalign.selftest import format_results, run_selftest

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    results = run_selftest(
        args.families, steps=args.steps, quantized=not args.no_4bit,
        progress=lambda msg: print(f"==> {msg}", flush=True),
    )
    print()
    print(format_results(results))
    failed = [r.family for r in results if not r.ok]
    if failed:
        print(f"\nselftest FAILED for: {', '.join(failed)}")
        return 1
    print(f"\nselftest passed: {len(results)} families loaded, trained with LoRA, saved, reloaded and generated.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    config = DemoConfig(method=args.method, eval_scenes=args.eval_scenes, feedback_scenes=args.feedback_scenes,
                        seed=args.seed, model=args.model, epochs=args.epochs, replace_absent=args.replace_absent,
                        grpo_steps=args.grpo_steps,
                        **({} if args.learning_rate is None else
                           {"grpo_learning_rate" if args.method == "grpo" else "learning_rate": args.learning_rate}))
    report = run_demo(args.out, config)
    print(f"\nreport: {report}")
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from mmalign.models.tiny import save_tiny

    out = save_tiny(args.family, args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote a tiny random {args.family} checkpoint to {out}")
    return 0


#: The families with tiny builders, spelled out so ``--help`` needs no torch (a test keeps it
#: equal to ``mmalign.models.tiny.TINY_BUILDERS``).
FAMILY_NAMES = ("llava, llava_next, llava_onevision, qwen2_vl, qwen2_5_vl, qwen3_vl, gemma3, internvl, "
                "smolvlm, idefics3")


def tiny_family(name: str) -> str:
    """argparse type: a family with a tiny builder (checked when used, so --help stays fast)."""
    from mmalign.models.tiny import TINY_BUILDERS

    if name not in TINY_BUILDERS:
        raise argparse.ArgumentTypeError(f"unknown family {name!r}; choose from {', '.join(sorted(TINY_BUILDERS))}")
    return name


def register(sub: argparse._SubParsersAction) -> None:
    """Installation and model commands: version, models, selftest, tiny."""
    p = sub.add_parser("version", help="print mmalign and key dependency versions")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("models", help="list the model cards (supported checkpoints)",
                       description="List the shipped model cards. A card describes a checkpoint: "
                       "family, hub id, chat template, LoRA targets and 4-bit settings.")
    p.add_argument("-v", "--verbose", action="store_true", help="show every field of every card")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "selftest", help="check the QLoRA path end to end on tiny models (no downloads)",
        description="Build a tiny random model of each family, load it in 4-bit NF4, train LoRA "
        "for a few steps, save and reload the adapter, and generate. Exits 1 if any step fails.",
    )
    p.add_argument("--families", nargs="+", type=tiny_family, metavar="FAMILY",
                   help=f"families to test: {FAMILY_NAMES} (default: all)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per family (default: 8)")
    p.add_argument("--no-4bit", action="store_true", help="load in fp32 instead of 4-bit NF4")
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser(
        "demo", help="the main job: alignment against the scene VLM's hallucination, before/after report (CPU, minutes)",
        description="Evaluate the shipped scene VLM (POPE, CHAIR) on held-out scenes; with --method ddpo build "
        "Dense-DPO pairs from its own answers corrected against the scene ground truth, with --method grpo "
        "train on-policy with an object-grounding reward checked against the annotations; train a 4-bit QLoRA "
        "adapter, evaluate again and write a before/after report with example answers. Re-running resumes "
        "finished stages.",
    )
    demo = DemoConfig  # the defaults live in one place: the config the Python API uses
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--method", choices=["ddpo", "grpo"], default=demo.method,
                   help=f"ddpo (Dense DPO on corrections) or grpo (on-policy, object F1 reward) (default: {demo.method})")
    p.add_argument("--grpo-steps", type=int, default=demo.grpo_steps,
                   help=f"GRPO iterations of 8 prompts x 4 answers (default: {demo.grpo_steps})")
    p.add_argument("--model", default=demo.model, help=f"base model (default: the shipped {demo.model})")
    p.add_argument("--eval-scenes", type=int, default=demo.eval_scenes,
                   help=f"held-out scenes for evaluation (default: {demo.eval_scenes})")
    p.add_argument("--feedback-scenes", type=int, default=demo.feedback_scenes,
                   help=f"scenes for feedback pairs (default: {demo.feedback_scenes})")
    p.add_argument("--epochs", type=float, default=demo.epochs, help=f"Dense DPO epochs (default: {demo.epochs:g})")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"LoRA learning rate of the chosen method (default: {demo.grpo_learning_rate:g} for grpo, "
                   f"{demo.learning_rate:g} for ddpo)")
    p.add_argument("--replace-absent", action="store_true",
                   help="correct a hallucinated object by naming a present one instead of removing its clause")
    p.add_argument("--seed", type=int, default=demo.seed)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tiny", help="write a tiny random checkpoint of a family (for debugging pipelines)",
                       description="Save a tiny randomly initialised model and processor that load with "
                       "from_pretrained exactly like a hub checkpoint of that family.")
    p.add_argument("--family", required=True, type=tiny_family,
                   help=FAMILY_NAMES)
    p.add_argument("--out", required=True, help="output folder")
    add_output_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)
