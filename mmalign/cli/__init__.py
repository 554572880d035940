"""The ``mmalign`` command. Each subcommand is a thin layer over a public Python API.

Command groups live in their own modules, each exposing ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mmalign.cli import bench, core, data, experiments, plan, score, studio, train, world

DESCRIPTION = """\
mmalign aligns LLaVA-style vision-language models with human and AI feedback:
segment-level Dense DPO (RLHF-V), factual reward models and PPO (LLaVA-RLHF),
Safe RLHF-V, all trainable with 4-bit QLoRA, plus hallucination benchmarks.
"""

COMMAND_MODULES = [core, train, score, data, bench, world, studio, plan, experiments]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmalign", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def quiet_known_noise() -> None:
    """Hide three messages that tell a user nothing: peft asks every model for a deprecated
    transformers attribute, the Trainer asks for pinned memory on machines without a GPU,
    and bitsandbytes on AVX512-BF16 CPUs reports that an optional hub kernel is absent (the
    built-in CPU kernel is used). Everything else still shows."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator",
                            category=UserWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in record.getMessage())


#: Exit code of a command refused for bad input (a missing file, a bad record, an unsupported model).
BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Bad input ends in one ``error: ...`` line on stderr and exit code 2, not a
    traceback: the library's errors (``RecordError``, ``ImageError``... are ``ValueError``s,
    missing files are ``OSError``s) already name the file, row and field.
    ``MMALIGN_DEBUG=1`` re-raises them with the traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_known_noise()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError) as exc:
        if os.environ.get("MMALIGN_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
