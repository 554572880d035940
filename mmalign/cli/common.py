"""What several commands share: one set of model-loading flags and one way to load a model.

Every command that loads a checkpoint adds :func:`add_model_flags` and calls
:func:`load_model` (or :func:`model_kwargs` for loaders such as ``load_reward_model``), so
the flags are spelled as in :class:`mmalign.model_config.ModelConfig` (TRL's ``ModelConfig``
names, with dashes) everywhere:

``--dtype``, ``--load-in-4bit``, ``--bnb-4bit-compute-dtype``, ``--device-map``,
``--trust-remote-code`` and, where a command takes one, ``--adapter``.

Earlier spellings still parse but are hidden from ``--help``: ``--load-4bit`` (bench) and
``--compute-dtype`` (precompute-ref).

Every command that writes an output folder adds :func:`add_output_flags` (``--overwrite``)
and passes its input paths along, so an output never replaces anything but an earlier
output of the same command (see :func:`mmalign.io.check_output`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmalign.data_builders.schema import RowErrors


def add_model_flags(
    parser: argparse.ArgumentParser,
    *,
    what: str = "the model",
    dtype: str = "float32",
    compute_dtype: str | None = None,
    quantize: bool = True,
    device_map: bool = True,
    adapter: bool = False,
    title: str | None = "model loading",
) -> None:
    """Add the model-loading flags to ``parser`` (in an argument group named ``title``).

    ``compute_dtype``: default of ``--bnb-4bit-compute-dtype``; ``None`` means "the same as
    ``--dtype``". ``adapter`` adds ``--adapter`` (a PEFT adapter loaded on the model);
    ``quantize`` / ``device_map`` can leave out the 4-bit and placement flags for commands
    that never load in 4 bits or place the model (``export``).
    """
    g: Any = parser.add_argument_group(title) if title else parser
    g.add_argument("--dtype", default=dtype,
                   help=f"weight dtype of {what}: float32, bfloat16 or float16 (default: {dtype})")
    if quantize:
        g.add_argument("--load-in-4bit", action="store_true", help="load the language model in 4-bit NF4 (QLoRA)")
        g.add_argument("--load-4bit", dest="load_in_4bit", action="store_true", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
        same = "the same as --dtype" if compute_dtype is None else compute_dtype
        g.add_argument("--bnb-4bit-compute-dtype", default=compute_dtype, metavar="DTYPE",
                       help=f"dtype of the 4-bit matmuls: float32 on a CPU, bfloat16 on a GPU (default: {same})")
        g.add_argument("--compute-dtype", dest="bnb_4bit_compute_dtype", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    if device_map:
        g.add_argument("--device-map", default=None, help='where to place the model, e.g. "auto" or "cuda:0" '
                       "(default: the CPU)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the checkpoint")
    if adapter:
        g.add_argument("--adapter", default=None, help="a saved PEFT (LoRA) adapter folder to load on the model")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` to a command that writes the folder ``--out``.

    Without it, OUT may be missing, an empty folder or an earlier output of the same kind
    (replaced atomically); anything else is refused before any work. A file, or one of the
    command's inputs, is refused even with it.
    """
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT even if it is not an output of this command (never a file, never an input)")


def quantization(args: argparse.Namespace) -> Any:
    """The :class:`~mmalign.qlora.QuantizationConfig` the flags ask for, or ``None``."""
    if not getattr(args, "load_in_4bit", False):
        return None
    from mmalign.qlora import QuantizationConfig

    return QuantizationConfig(compute_dtype=args.bnb_4bit_compute_dtype or args.dtype)


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`mmalign.models.load_adapter` the flags ask for."""
    kwargs: dict[str, Any] = {"dtype": args.dtype, "quantization": quantization(args),
                              "trust_remote_code": args.trust_remote_code}
    if getattr(args, "device_map", None):
        kwargs["device_map"] = args.device_map
    return kwargs


def load_model(args: argparse.Namespace, path: str | None = None) -> Any:
    """Load ``path`` (default: ``args.model``) as the flags of :func:`add_model_flags` ask,
    in eval mode. ``args.adapter`` (if the command has ``--adapter``) is loaded on
    ``args.model`` only, never on another ``path`` such as a judge."""
    from mmalign.models import load_adapter

    model = load_adapter(path or args.model, **model_kwargs(args))
    if path is None and getattr(args, "adapter", None):
        model.load_adapter(args.adapter)
    model.model.eval()
    return model


def print_written(report: Any, what: str) -> None:
    """Say what a dataset writer wrote (a ``WriteReport``): rows, sources and skipped rows."""
    print(f"wrote {report.rows} {what} rows to {report.path}")
    if report.sources:
        print("  sources: " + ", ".join(f"{k}={v}" for k, v in sorted(report.sources.items())))
    if report.skipped:
        print("  " + RowErrors(lenient=True, skipped=report.skipped).summary())
        for err in report.skipped[:10]:
            print(f"    {err}")


def settings_file(path: str | None, what: str = "settings") -> dict[str, Any]:
    """A ``--config`` YAML file's mapping (empty without a file); anything else is refused."""
    import yaml

    if not path:
        return {}
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of {what}")
    return loaded
