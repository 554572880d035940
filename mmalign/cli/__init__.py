"""The ``mmalign`` command. Each subcommand is a thin layer over a public Python API.

Command groups live in their own modules, each exposing ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from mmalign.cli import bench, core, data, experiments, loop, plan, score, studio, train, world
from mmalign.data_builders.schema import terminal_safe

DESCRIPTION = """\
mmalign aligns LLaVA-style vision-language models with human and AI feedback:
segment-level Dense DPO (RLHF-V), factual reward models and PPO (LLaVA-RLHF),
Safe RLHF-V, all trainable with 4-bit QLoRA, plus hallucination benchmarks.
"""

COMMAND_MODULES = [core, train, loop, score, data, bench, world, studio, plan, experiments]


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
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator",
                            category=UserWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in record.getMessage())


#: Exit code of a command refused for bad input (a missing file, a bad record, an unsupported
#: model, flags that do not go together): one ``error: ...`` line on stderr.
BAD_INPUT = 2
#: Exit code of a command that could not finish for a reason other than its input (a judge
#: endpoint that failed, a GPU out of memory: ``RuntimeError``), also one ``error: ...`` line.
#: ``data validate`` (invalid rows) and ``selftest`` (a failed family) report their findings
#: with the same code.
FAILED = 1


def _one_line(message: object) -> str:
    """The message on one line, control characters from the data shown as visible escapes."""
    return " ".join(terminal_safe(str(message)).split())


def _end_progress_bars() -> None:
    """Close the progress bars an error cut short (a PPO run stopped by the non-finite guard),
    so the ``error:`` line starts a line of its own instead of trailing a half-drawn bar."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar of a stream already gone: nothing to tidy
            pass


def _error(message: object) -> None:
    _end_progress_bars()
    print(f"error: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Bad input ends in one ``error: ...`` line on stderr and exit code 2
    (:data:`BAD_INPUT`), not a traceback: the library's errors (``RecordError``,
    ``ImageError``... are ``ValueError``s, missing files are ``OSError``s) already name the
    file, row and field, and commands raise ``ValueError`` for flags that do not go together.
    A ``RuntimeError`` (a failing judge endpoint, a training run stopped by the non-finite
    guard, whose line names the checkpoint to resume from...) ends in one ``error: ...`` line
    and exit code 1 (:data:`FAILED`). ``MMALIGN_DEBUG=1`` re-raises both with the traceback."""
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
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _error(message)
        return BAD_INPUT
    except RuntimeError as exc:  # NonFiniteTrainingError too: not the input's fault; it names the checkpoint
        if os.environ.get("MMALIGN_DEBUG"):
            raise
        _error(f"{exc} (MMALIGN_DEBUG=1 shows the traceback)")
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
