"""The ``mmalign`` command. Each subcommand is a thin layer over a public Python API.

Command groups live in their own modules, each exposing ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmalign.cli import bench, core, data, plan, score, studio, train, world

DESCRIPTION = """\
mmalign aligns LLaVA-style vision-language models with human and AI feedback:
segment-level Dense DPO (RLHF-V), factual reward models and PPO (LLaVA-RLHF),
Safe RLHF-V, all trainable with 4-bit QLoRA, plus hallucination benchmarks.
"""

COMMAND_MODULES = [core, train, score, data, bench, world, studio, plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmalign", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
