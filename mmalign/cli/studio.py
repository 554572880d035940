"""``mmalign studio``: the feedback studio (corrections and dual safety labels in a browser)."""

from __future__ import annotations

import argparse
import json

from mmalign.benchmarks.runner import GenerationConfig
from mmalign.cli.common import add_model_flags, load_model
from mmalign.data_builders.storage import open_dataset
from mmalign.studio import (
    StudioProject,
    export_project,
    load_preference_items,
    load_prompt_set,
    rank_by_disagreement,
    serve,
)


def cmd_init(args: argparse.Namespace) -> int:

    project = StudioProject.create(args.project)
    print(f"project ready in {project.path} (studio.sqlite, images/)")
    return 0


def cmd_add_annotator(args: argparse.Namespace) -> int:

    token = StudioProject(args.project).add_annotator(args.name)
    print(f"annotator {args.name!r} added; sign-in token (shown once, only its hash is stored):")
    print(token)
    return 0


def cmd_remove_annotator(args: argparse.Namespace) -> int:

    StudioProject(args.project).remove_annotator(args.name)
    print(f"annotator {args.name!r} removed: token and sessions no longer work; their submissions stay")
    return 0


def cmd_load(args: argparse.Namespace) -> int:

    project = StudioProject(args.project)
    if bool(args.prompts) == bool(args.from_dataset):
        raise ValueError("give either --prompts with --model, or --from-dataset")
    if args.prompts:
        if not args.model:
            raise ValueError("--prompts needs --model (a card name such as scene-vlm, or a folder)")
        adapter = load_model(args)
        generation = GenerationConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        model_name = args.model + (f" + {args.adapter}" if args.adapter else "")
        added = load_prompt_set(project, open_dataset(args.prompts, args.split), adapter, generation,
                                limit=args.limit, model_name=model_name)
        print(f"added {added} correction items with answers of {model_name}")
    else:
        added = load_preference_items(project, open_dataset(args.from_dataset, args.split), mode=args.as_,
                                      limit=args.limit)
        print(f"added {added} items ({args.as_}) from {args.from_dataset}")
    if project.annotators():
        report = project.assign(overlap=args.overlap, overlap_annotators=args.overlap_annotators, seed=args.seed)
        print(f"assigned {report['items']} items ({report['shared']} shared): {report['assignments']} assignments")
    return 0


def cmd_assign(args: argparse.Namespace) -> int:

    report = StudioProject(args.project).assign(overlap=args.overlap, overlap_annotators=args.overlap_annotators,
                                                seed=args.seed)
    print(f"assigned {report['items']} items ({report['shared']} shared): {report['assignments']} assignments")
    return 0


def cmd_status(args: argparse.Namespace) -> int:

    status = StudioProject(args.project).status()
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(status["items"].items())) or "none"
    print(f"items: {kinds}; unassigned: {status['unassigned']}")
    for name, (done, assigned) in status["annotators"].items():
        print(f"  {name}: {done} / {assigned} done")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:

    serve(StudioProject(args.project), host=args.host, port=args.port, threads=args.threads,
          secure_cookies=args.secure_cookies)
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    report = export_project(StudioProject(args.project), args.out, prefer=args.prefer)
    print(f"wrote {report.rows} rows to {report.path} ({report.corrections} corrections, {report.pairs} pairs; "
          f"{report.unchanged} answers marked correct were left out)")
    print("agreement: " + json.dumps(report.agreement["overall"]))
    return 0


def cmd_rank(args: argparse.Namespace) -> int:

    scores = rank_by_disagreement(StudioProject(args.project), args.reward_models, base=args.base,
                                  batch_size=args.batch_size)
    top = sorted(scores.items(), key=lambda kv: -kv[1])[:5]
    print(f"ranked {len(scores)} items by reward-model disagreement; highest: "
          + ", ".join(f"item {i} ({s:.3f})" for i, s in top))
    return 0


def _project(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, help="project folder (holds studio.sqlite and images/)")


def _overlap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overlap", type=float, default=0.0,
                   help="share of new items given to several annotators, for agreement (default: 0)")
    p.add_argument("--overlap-annotators", type=int, default=2,
                   help="annotators per shared item (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="which items are shared (default: 0)")


def register(sub: argparse._SubParsersAction) -> None:
    studio = sub.add_parser("studio", help="web app to correct answers and label pairs, then export a dataset",
                            description="The feedback studio: annotators mark wrong spans of a model's answer "
                            "and type corrections, or judge two answers for helpfulness and safety, in a "
                            "browser; the export is a canonical preference dataset for Dense DPO.")
    cmds = studio.add_subparsers(dest="studio_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("init", help="create a project folder")
    _project(p)
    p.set_defaults(func=cmd_init)

    p = cmds.add_parser("add-annotator", help="register an annotator and print their token once")
    _project(p)
    p.add_argument("--name", required=True, help="annotator name (unique in the project)")
    p.set_defaults(func=cmd_add_annotator)

    p = cmds.add_parser("remove-annotator", help="revoke an annotator's token and sessions")
    _project(p)
    p.add_argument("--name", required=True, help="annotator name")
    p.set_defaults(func=cmd_remove_annotator)

    p = cmds.add_parser("load", help="add items: a model's answers to a prompt set, or a preference dataset",
                        description="Either --prompts PROMPT_SET --model MODEL (answers generated in batches "
                        "through the adapter API become correction items) or --from-dataset DATASET (a canonical "
                        "preference dataset: rejected answers become correction items and/or chosen vs "
                        "rejected become pair items). New items are assigned when annotators exist.")
    _project(p)
    p.add_argument("--prompts", help="prompt-set folder (e.g. from `mmalign world prompts`)")
    p.add_argument("--model", help="model card name (e.g. scene-vlm), hub id or folder that answers the prompts")
    p.add_argument("--from-dataset", help="canonical preference dataset folder")
    p.add_argument("--as", dest="as_", choices=["corrections", "pairs", "both"], default="corrections",
                   help="--from-dataset: what the rows become (default: corrections of rejected)")
    p.add_argument("--split", help="split, if the folder holds several")
    p.add_argument("--limit", type=int, help="use only the first N rows")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest generated answer (default: 128)")
    add_model_flags(p, adapter=True, title="model loading (with --prompts)")
    _overlap(p)
    p.set_defaults(func=cmd_load)

    p = cmds.add_parser("assign", help="give unassigned items to annotators (with an overlap share)")
    _project(p)
    _overlap(p)
    p.set_defaults(func=cmd_assign)

    p = cmds.add_parser("status", help="items and each annotator's progress")
    _project(p)
    p.set_defaults(func=cmd_status)

    p = cmds.add_parser("serve", help="run the web app")
    _project(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.add_argument("--threads", type=int, default=8, help="request threads (default: 8)")
    p.add_argument("--secure-cookies", action="store_true", help="HTTPS-only cookies (when served behind TLS)")
    p.set_defaults(func=cmd_serve)

    p = cmds.add_parser("export", help="write the canonical preference dataset and agreement.json")
    _project(p)
    p.add_argument("--out", required=True, help="output dataset folder (written atomically)")
    p.add_argument("--prefer", choices=["helpful", "safer"], default="helpful",
                   help="pair items: chosen is the more helpful (default) or the safer answer")
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("rank", help="order queues by the disagreement of several reward models",
                        description="Score every item with each reward model (a pair item: answer A minus answer B); the standard "
                        "deviation of their standardised scores becomes the item's priority (highest first).")
    _project(p)
    p.add_argument("--reward-models", nargs="+", required=True, help="two or more reward-model folders")
    p.add_argument("--base", help="base checkpoint (default: the one recorded in each model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_rank)
