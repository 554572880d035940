"""``mmalign data import | build | validate | inspect | export``: preference-dataset builders.

Each command is a thin layer over :mod:`mmalign.data_builders`; see docs/data.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mmalign.cli.common import (
    add_model_flags,
    add_output_flags,
    load_model,
    print_written,
    settings_file,
)
from mmalign.cli.judging import (
    add_judge_client_flags,
    check_judge_choice,
    claim_judge,
    judge_endpoint,
)
from mmalign.cli.world import BUILDERS as WORLD_BUILDERS
from mmalign.data_builders.corrections import CorrectionStats, read_corrections
from mmalign.data_builders.importers import IMPORTERS, import_dataset
from mmalign.data_builders.safety import label_disagreements, save_oriented
from mmalign.data_builders.schema import RecordError, RowErrors
from mmalign.data_builders.storage import (
    DATASET,
    iter_records,
    open_dataset,
    read_manifest,
    validate_dataset,
    write_dataset,
)
from mmalign.io import check_output

SCHEMA_HINT = "canonical schema: docs/data.md (images, prompt, chosen, rejected + optional columns)"


# ---------------------------------------------------------------------------- import
def cmd_import(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {}
    if args.images:
        options["image_root"] = args.images
    if args.max_pixels is not None:
        options["max_pixels"] = args.max_pixels or None
    passed = {"facts": args.facts, "prefer": args.prefer, "split": args.split, "turns": args.turns}
    accepted = {
        "llava-rlhf": {"facts"}, "beavertails-v": {"prefer", "split"}, "pku-saferlhf": {"prefer", "split"},
        "trl": {"split"}, "llava-conversations": {"turns"},
    }.get(args.format, set())
    for name, value in passed.items():
        if value is not None:
            if name not in accepted:
                raise ValueError(f"--{name} does not apply to format {args.format}")
            options[name] = value
    report = import_dataset(args.format, args.path, args.out, lenient=args.lenient, overwrite=args.overwrite,
                            **options)
    print_written(report, IMPORTERS[args.format].kind)
    return 0


# ---------------------------------------------------------------------------- build
def cmd_build_corrections(args: argparse.Namespace) -> int:
    errors, stats = RowErrors(lenient=args.lenient), CorrectionStats()
    records = read_corrections(args.input, image_root=args.images, errors=errors, min_match=args.min_match,
                               stats=stats)
    print_written(write_dataset(records, args.out, errors=errors, overwrite=args.overwrite,
                                inputs=(args.input, args.images)), "preference")
    print(stats.summary())
    return 0


def _ai_feedback_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """The sampling config and the judge endpoint settings: YAML file first, flags override."""
    from mmalign.data_builders.ai_feedback import AIFeedbackConfig

    values = settings_file(args.config)
    endpoint: dict[str, Any] | None = values.pop("judge_endpoint", None)
    flags = {"num_samples": args.samples, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
             "min_gap": args.min_gap, "max_pairs_per_prompt": args.max_pairs, "seed": args.seed,
             "prompts_per_batch": args.prompts_per_batch}
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.no_length_balance:
        values["balance_lengths"] = False
    return AIFeedbackConfig.from_dict(values), judge_endpoint(args, endpoint)


def cmd_build_ai_feedback(args: argparse.Namespace) -> int:
    from mmalign.data_builders.ai_feedback import AIFeedbackBuilder, build_ai_feedback

    config, endpoint_settings = _ai_feedback_settings(args)
    inputs = (args.prompts, args.policy, args.judge, args.images, args.config)
    check_judge_choice(args, endpoint_settings)
    check_output(args.out, replaces=DATASET, overwrite=args.overwrite, inputs=inputs)  # before loading models
    # The cache lives beside the output folder, which is replaced when the build ends.
    judge, splitter = claim_judge(args, endpoint_settings, cache=f"{str(args.out).rstrip('/')}.judge-cache.jsonl")
    builder = AIFeedbackBuilder(load_model(args, args.policy), judge, splitter, config)
    report = build_ai_feedback(args.prompts, args.out, builder, image_root=args.images, lenient=args.lenient,
                               overwrite=args.overwrite, inputs=inputs)
    print_written(report, "preference")
    print(f"  {builder.stats.summary()}")
    return 0


def cmd_build_safety_pairs(args: argparse.Namespace) -> int:
    report = save_oriented(open_dataset(args.input, args.split), args.out, args.by, lenient=args.lenient,
                           overwrite=args.overwrite, inputs=[args.input])
    print_written(report, f"preference (ordered by {args.by})")
    return 0


# ---------------------------------------------------------------------------- validate / inspect
def cmd_validate(args: argparse.Namespace) -> int:
    ds = open_dataset(args.path, args.split)
    try:
        report = validate_dataset(ds, lenient=True, check_images=not args.no_image_check)
    except RecordError as err:  # the dataset as a whole (a missing column), not one row
        raise err.located(None, file=args.path) from None
    manifest = read_manifest(args.path)
    print(f"{args.path}: {report.kind} dataset, {report.rows} rows"
          + (f", schema v{manifest.get('schema_version', '?')}" if manifest else " (no mmalign manifest)"))
    if report.kind == "preference" and "chosen_is_safe" in ds.column_names:
        disagreements = label_disagreements(iter_records(ds.select_columns(
            [c for c in ds.column_names if "_is_safe" in c or "_harmless_rate" in c])))
        if disagreements:
            print(f"  note: {disagreements} response(s) whose harmless rating sign disagrees with is_safe")
    if report.ok:
        print(f"ok: all {report.rows} rows are valid")
        return 0
    for err in report.errors[: args.max_errors]:
        print(f"  {err}")
    if len(report.errors) > args.max_errors:
        print(f"  ... and {len(report.errors) - args.max_errors} more")
    print(f"INVALID: {len(report.errors)} of {report.rows} rows fail ({SCHEMA_HINT})")
    return 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from mmalign.data_builders.preview import inspect_dataset, write_html_preview

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(inspect_dataset(args.path, start=args.start, rows=args.rows, color=color, diff=args.diff))
    if args.html:
        out = write_html_preview(args.path, args.html, start=args.start, rows=args.rows, diff=args.diff)
        print(f"\nwrote an HTML preview to {out}")
    return 0


# ---------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from mmalign.data_builders.export import DATA_FILES, export_dataset

    report = export_dataset(args.path, args.out, args.format, split=args.split, overwrite=args.overwrite)
    where = report.path / DATA_FILES[report.format] if report.format in DATA_FILES else report.path
    print(f"wrote {report.rows} rows in the {report.format} format to {where}"
          + (f" (images in {report.path / 'images'}: {report.images})" if report.images else ""))
    return 0


# ---------------------------------------------------------------------------- parser
def _help(parser: argparse.ArgumentParser):
    """A handler for a command group called without a subcommand: print its help."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return show


def _moved(old: str, new: str, run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The handler of a command's former name: a note on stderr, then the command."""

    def moved(args: argparse.Namespace) -> int:
        print(f"note: 'mmalign data build {old}' is now 'mmalign world {new}'; the old name goes in the next "
              "release", file=sys.stderr)
        return run(args)

    return moved


def register(sub: argparse._SubParsersAction) -> None:
    """Dataset commands: import public formats, build pairs, validate, inspect."""
    data = sub.add_parser("data", help="import, build, validate and inspect preference datasets",
                          description="Multimodal preference datasets in one canonical, TRL-compatible "
                          "form. " + SCHEMA_HINT + ".")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    data.set_defaults(func=_help(data))

    formats = "\n".join(f"  {name:<20} {imp.description}" for name, imp in IMPORTERS.items())
    p = dsub.add_parser("import", help="convert a public dataset (local files) to the canonical form",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Read local files in a public format, validate every row and write a "
                        "canonical dataset atomically.\n\nformats:\n" + formats)
    p.add_argument("format", choices=list(IMPORTERS), metavar="FORMAT", help="one of: " + ", ".join(IMPORTERS))
    p.add_argument("path", help="data file or folder (parquet / json / jsonl, or a datasets folder for trl)")
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)
    p.add_argument("--images", help="folder that relative image paths resolve in (default: the data's folder)")
    p.add_argument("--facts", help="llava-rlhf: caption map JSON (image file name → captions)")
    p.add_argument("--prefer", choices=["helpful", "safer"],
                   help="beavertails-v / pku-saferlhf: preference that orders chosen/rejected (default helpful)")
    p.add_argument("--split", help="split to read (a file-name prefix, or a DatasetDict split for trl)")
    p.add_argument("--turns", choices=["first", "all"], help="llava-conversations: first turn or every turn")
    p.add_argument("--max-pixels", type=int, help="refuse larger images (0 = no limit; default: PIL's limit)")
    p.add_argument("--lenient", action="store_true", help="skip bad rows (counted and listed) instead of failing")
    p.set_defaults(func=cmd_import)

    build = dsub.add_parser("build", help="build datasets (corrections, ai-feedback, safety-pairs)",
                            description="Build preference datasets. The scene world's builders are "
                            "'mmalign world feedback | safety | prompts'.")
    bsub = build.add_subparsers(dest="build_command", metavar="BUILDER")
    build.set_defaults(func=_help(build))

    p = bsub.add_parser("corrections", help="answers + human corrections → pairs with corrected spans",
                        description="Rows with original, corrected, question/prompt and image/images "
                        "(JSON, JSON Lines or parquet) become chosen = corrected, rejected = original, with "
                        "RLHF-V corrected spans on both sides.")
    p.add_argument("input", help="file of corrections")
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)
    p.add_argument("--images", help="image folder (default: the input file's folder)")
    p.add_argument("--min-match", type=int, default=3, help="shortest matching block kept by the diff (default 3)")
    p.add_argument("--lenient", action="store_true", help="skip bad rows instead of failing")
    p.set_defaults(func=cmd_build_corrections)

    p = bsub.add_parser("ai-feedback", help="RLAIF-V divide-and-conquer pairs from a policy and a judge",
                        description="Sample responses per prompt, split them into claims, ask a judge VLM "
                        "yes/no per claim (P(yes) > P(no)), score = -(failed claims), pair with a gap >= 1, "
                        "at most 2 pairs per prompt, balancing lengths. An endpoint's API key is read only "
                        "from the environment variable named by --api-key-env.")
    p.add_argument("--prompts", required=True,
                   help="prompt set or dataset folder, LLaVA conversation JSON, or JSON(L)/parquet with image + question")
    p.add_argument("--policy", required=True, help="policy model: folder, card name or hub id")
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)
    p.add_argument("--judge", help="local judge model (folder, card name or hub id)")
    p.add_argument("--judge-url", help="OpenAI-compatible endpoint base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", help="model name to request from the endpoint")
    p.add_argument("--splitter", choices=["sentence", "judge"], default="sentence",
                   help="claim splitting: rule-based sentences (default) or ask the judge")
    p.add_argument("--config", help="YAML with AIFeedbackConfig fields and an optional judge_endpoint mapping")
    add_judge_client_flags(p, cache_default="OUT.judge-cache.jsonl, beside the output folder")
    p.add_argument("--samples", type=int, help="responses sampled per prompt (default 10)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.7)")
    p.add_argument("--max-new-tokens", type=int, help="longest sampled response (default 256)")
    p.add_argument("--min-gap", type=float, help="smallest score gap for a pair (default 1)")
    p.add_argument("--max-pairs", type=int, help="pairs per prompt at most (default 2)")
    p.add_argument("--no-length-balance", action="store_true", help="do not balance chosen/rejected lengths")
    p.add_argument("--prompts-per-batch", type=int, help="prompts per generate call (default 4)")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--images", help="image folder for file prompt sources")
    p.add_argument("--lenient", action="store_true", help="skip bad prompt rows instead of failing")
    add_model_flags(p, what="the policy and the judge")
    p.set_defaults(func=cmd_build_ai_feedback)

    p = bsub.add_parser("safety-pairs", help="order dual-preference pairs for the reward or the cost model",
                        description="From a dual-preference dataset (e.g. imported beavertails-v), write pairs "
                        "with chosen = more helpful (--by helpful, reward model) or chosen = safer "
                        "(--by safer, cost model); per-response labels follow their response.")
    p.add_argument("input", help="dual-preference dataset folder")
    p.add_argument("--by", required=True, choices=["helpful", "safer"])
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)
    p.add_argument("--split", help="split, if the folder holds several")
    p.add_argument("--lenient", action="store_true", help="skip rows without the needed label")
    p.set_defaults(func=cmd_build_safety_pairs)

    for new, (_, description, add_flags, run) in WORLD_BUILDERS.items():  # former names, hidden from --help
        old = f"scene-{new}"
        p = bsub.add_parser(old, description=f"Former name of 'mmalign world {new}'. {description}")
        add_flags(p)
        p.set_defaults(func=_moved(old, new, run))

    p = dsub.add_parser("validate", help="check every row of a dataset folder against the canonical schema",
                        description="Check every row (types, spans, labels, images fully decoded) and list "
                        "errors naming the row and field. Exit code 1 if any row is invalid.")
    p.add_argument("path", help="dataset folder")
    p.add_argument("--split", help="split, if the folder holds several")
    p.add_argument("--no-image-check", action="store_true", help="skip full image decoding (faster)")
    p.add_argument("--max-errors", type=int, default=20, help="errors to list (default 20)")
    p.set_defaults(func=cmd_validate)

    p = dsub.add_parser("inspect", help="show rows with corrected spans highlighted",
                        description="Print rows readably: corrected spans coloured in a terminal (or "
                        "[[bracketed]] without colour); --html writes a preview page with images.")
    p.add_argument("path", help="dataset folder")
    p.add_argument("--start", type=int, default=0, help="first row (default 0)")
    p.add_argument("--rows", type=int, default=5, help="number of rows (default 5)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--diff", action="store_true", help="also mark word-level differences between the responses")
    p.add_argument("--html", help="also write an HTML preview with image thumbnails to this file")
    p.set_defaults(func=cmd_inspect)

    p = dsub.add_parser("export", help="write a dataset for TRL, LLaVA or ms-swift",
                        description="Validate every row of a dataset folder and write it, atomically, in a "
                        "format another trainer reads as it is: trl (save_to_disk folder, conversational prompt "
                        "and responses, for TRL's DPOTrainer), llava (llava.json in LLaVA-RLHF's preference "
                        "layout + images/), ms-swift (train.jsonl with messages / rejected_response / images + "
                        "images/). See docs/data.md.")
    p.add_argument("path", help="dataset folder (canonical, or TRL)")
    p.add_argument("--format", required=True, choices=["trl", "llava", "ms-swift"], help="output format")
    p.add_argument("--out", required=True, help="output folder (replaces an earlier export)")
    add_output_flags(p)
    p.add_argument("--split", help="split, if the folder holds several")
    p.set_defaults(func=cmd_export)
