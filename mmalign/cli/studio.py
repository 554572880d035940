"""``mmalign studio``: the feedback studio (corrections and dual safety labels in a browser)."""

from __future__ import annotations

import argparse
import json

from mmalign.benchmarks.runner import GenerationConfig
from mmalign.cli.common import add_model_flags, add_output_flags, load_model
from mmalign.studio import (
    StudioProject,
    Submission,
    export_project,
    load_preference_items,
    load_prompt_set,
    open_items_source,
    rank_by_disagreement,
    serve,
)


def cmd_init(args: argparse.Namespace) -> int:

    project = StudioProject.create(args.project)
    if args.allow_ties is not None:
        project.set_allow_ties(args.allow_ties)
    ties = "pairs may be tied (\"both equally\")" if project.allow_ties else "pairs must pick an answer"
    print(f"project ready in {project.path} (studio.sqlite, images/); {ties}")
    return 0


def cmd_add_annotator(args: argparse.Namespace) -> int:

    token = StudioProject(args.project).add_annotator(args.name, owner=args.owner)
    role = "owner" if args.owner else "annotator"
    print(f"{role} {args.name!r} added; sign-in token (shown once, only its hash is stored):")
    print(token)
    return 0


def cmd_set_owner(args: argparse.Namespace) -> int:

    StudioProject(args.project).set_owner(args.name, not args.revoke)
    print(f"annotator {args.name!r} {'no longer sees' if args.revoke else 'now sees'} the agreement page")
    return 0


def cmd_remove_annotator(args: argparse.Namespace) -> int:

    StudioProject(args.project).remove_annotator(args.name)
    print(f"annotator {args.name!r} removed: token and sessions no longer work; their submissions stay")
    return 0


def cmd_load(args: argparse.Namespace) -> int:

    # Every option is checked, and the source opened (a .json / .jsonl file read and checked
    # whole), before the model loads and before anything is added.
    project = StudioProject(args.project)
    if bool(args.prompts) == bool(args.from_dataset):
        raise ValueError("give either --prompts with --model, or --from-dataset")
    if args.prompts and not args.model:
        raise ValueError("--prompts needs --model (a card name such as scene-vlm, or a folder)")
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit must be 0 or more, got {args.limit}")
    if bool(args.by_disagreement) != (args.top is not None) or (args.by_disagreement and not args.from_dataset):
        raise ValueError("--by-disagreement (reward models or an ensemble) and --top N go together, with "
                         "--from-dataset")
    project.check_assignment(overlap=args.overlap, overlap_annotators=args.overlap_annotators)
    if args.prompts:
        generation = GenerationConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        source = open_items_source(args.prompts, args.split, kind="prompts")
        adapter = load_model(args)
        model_name = args.model + (f" + {args.adapter}" if args.adapter else "")
        loaded = load_prompt_set(project, source, adapter, generation, limit=args.limit, model_name=model_name)
        print(f"added {loaded.added} correction items with answers of {model_name}" + _already(loaded.skipped))
    else:
        source = open_items_source(args.from_dataset, args.split, kind="preference")
        loaded = load_preference_items(project, source, mode=args.as_, limit=args.limit,
                                       by_disagreement=args.by_disagreement or (), top=args.top, base=args.reward_base,
                                       batch_size=args.batch_size)
        chosen = f", the {args.top} rows the reward models disagree on most," if args.by_disagreement else ""
        print(f"added {loaded.added} items ({args.as_}){chosen} from {args.from_dataset}" + _already(loaded.skipped))
    if project.annotators():
        report = project.assign(overlap=args.overlap, overlap_annotators=args.overlap_annotators, seed=args.seed)
        print(f"assigned {report['items']} items ({report['shared']} shared): {report['assignments']} assignments")
    return 0


def _already(skipped: int) -> str:
    return f"; {skipped} already in the project were skipped" if skipped else ""


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
    subs = status["submissions"]
    print(f"submissions: {subs['valid']} valid, {subs['invalid']} invalid, {subs['dropped']} dropped"
          + (" (review the invalid ones with `mmalign studio submissions list --state invalid`)"
             if subs["invalid"] else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:

    serve(StudioProject(args.project), host=args.host, port=args.port, threads=args.threads,
          secure_cookies=args.secure_cookies)
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    report = export_project(StudioProject(args.project), args.out, prefer=args.prefer, overwrite=args.overwrite)
    print(f"wrote {report.rows} rows to {report.path} ({report.corrections} corrections, {report.pairs} pairs; "
          f"{report.unchanged} answers marked correct were left out)")
    if report.dropped:
        print(f"{report.dropped} dropped submissions were left out")
    if report.ties:
        print(f"{report.ties} tied pairs were left out (no preference to learn; they count in the agreement)")
    if report.skipped:
        print(f"skipped {len(report.skipped)} submissions that cannot become a valid record "
              "(drop or reopen them with `mmalign studio submissions drop`):")
        for skipped in report.skipped:
            print(f"  {skipped}")
    print("agreement: " + json.dumps(report.agreement["overall"]))
    return 0


def _summary(sub: Submission) -> str:
    """One line of what a submission says."""
    payload = sub.payload
    try:
        if sub.kind == "correction":
            marks = payload["corrections"]
            if not marks:
                return "answer marked correct"
            text = "; ".join(f"[{c['start']}, {c['end']}) → {c['text']!r}" for c in marks[:3])
            return text + (f"; … {len(marks) - 3} more" if len(marks) > 3 else "")
        return (f"more helpful {payload['more_helpful']}, safer {payload['safer']}, harmless "
                f"{payload['a_harmless']}/{payload['b_harmless']}, helpful {payload['a_helpful']}/{payload['b_helpful']}")
    except (KeyError, TypeError, IndexError):
        return json.dumps(payload)[:120]


def cmd_submissions_list(args: argparse.Namespace) -> int:

    state = None if args.state == "all" else args.state
    subs = StudioProject(args.project).submissions(state=state, item=args.item, annotator=args.annotator)
    for sub in subs:
        line = f"{sub.id:>6}  item {sub.item_id:<5} {sub.kind:<10} {sub.annotator:<16} {sub.created}  {sub.state}"
        if sub.dropped:
            drop = sub.dropped
            line += f" {drop.at} by {drop.by}{' (reopened)' if drop.reopened else ''}: {drop.reason}"
        elif sub.problem:
            line += f": {sub.problem}"
        print(line)
        print(f"{'':8}{_summary(sub)}")
    counts = {s: sum(sub.state == s for sub in subs) for s in ("valid", "invalid", "dropped")}
    print(f"{len(subs)} submissions: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def cmd_submissions_drop(args: argparse.Namespace) -> int:

    project = StudioProject(args.project)
    if bool(args.id) == args.all_invalid:
        raise ValueError("give --id ID [ID ...] or --all-invalid")
    ids = args.id or [sub.id for sub in project.submissions(state="invalid")]
    if not ids:
        print("no invalid submissions: nothing dropped")
        return 0
    for result in project.drop_submissions(ids, args.reason, by=args.by, reopen=args.reopen):
        where = (f"reopened in {result['annotator']}'s queue" if result["reopened"]
                 else f"the item has {result['other_submissions']} other submission(s)" if result["other_submissions"]
                 else f"the item is queued for {result['queued_for']}" if result["queued_for"]
                 else "the item is unassigned (no other active annotator; `mmalign studio assign` gives it out)")
        print(f"dropped submission {result['submission']} (item {result['item']}, {result['annotator']}): {where}")
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

    p = cmds.add_parser("init", help="create a project folder (or change an existing one's rubric setting)")
    _project(p)
    p.add_argument("--allow-ties", action=argparse.BooleanOptionalAction, default=None,
                   help="let annotators answer \"both equally\" on pairs (tied pairs are left out of the export; "
                        "default: leave the setting as it is, off for a new project)")
    p.set_defaults(func=cmd_init)

    p = cmds.add_parser("add-annotator", help="register an annotator and print their token once")
    _project(p)
    p.add_argument("--name", required=True, help="annotator name (unique in the project)")
    p.add_argument("--owner", action="store_true", help="the project owner: may also open the agreement page")
    p.set_defaults(func=cmd_add_annotator)

    p = cmds.add_parser("set-owner", help="let an annotator see the agreement page (or, with --revoke, no longer)")
    _project(p)
    p.add_argument("--name", required=True, help="annotator name")
    p.add_argument("--revoke", action="store_true", help="take the owner's view back")
    p.set_defaults(func=cmd_set_owner)

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
    p.add_argument("--by-disagreement", nargs="+", metavar="REWARD_MODEL",
                   help="--from-dataset: load only the --top rows whose chosen-rejected margin these reward models "
                        "(or one ensemble's members) disagree on most, with that disagreement as priority")
    p.add_argument("--top", type=int, help="with --by-disagreement: how many rows to load")
    p.add_argument("--reward-base", help="base checkpoint of the reward models (default: the one each records)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation (or scoring) batch (default: 8)")
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
    add_output_flags(p)
    p.add_argument("--prefer", choices=["helpful", "safer"], default="helpful",
                   help="pair items: chosen is the more helpful (default) or the safer answer")
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("submissions", help="review submissions; drop or reopen bad ones",
                        description="List submissions with today's verdict on each (valid, invalid: stored before "
                        "the current checks and skipped by the export, or dropped), and drop them: a dropped "
                        "submission is kept with who dropped it, when and why, and leaves the export.")
    subs = p.add_subparsers(dest="submissions_command", metavar="ACTION", required=True)
    q = subs.add_parser("list", help="list submissions (id, item, kind, annotator, time, state, what it says)")
    _project(q)
    q.add_argument("--state", choices=["all", "valid", "invalid", "dropped"], default="all",
                   help="only submissions in this state (default: all)")
    q.add_argument("--item", type=int, help="only this item's submissions")
    q.add_argument("--annotator", help="only this annotator's submissions")
    q.set_defaults(func=cmd_submissions_list)
    q = subs.add_parser("drop", help="drop submissions (recorded, never deleted); optionally reopen the item",
                        description="Without --reopen the annotator's assignment ends and an item left with no "
                        "submission goes to the least-loaded other annotator; with --reopen it goes back into the "
                        "same annotator's queue for a new submission.")
    _project(q)
    q.add_argument("--id", type=int, nargs="+", help="submission ids (from `submissions list`)")
    q.add_argument("--all-invalid", action="store_true", help="drop every submission in state invalid")
    q.add_argument("--reason", required=True, help="why (recorded with the submission)")
    q.add_argument("--reopen", action="store_true", help="give the item back to the same annotator")
    q.add_argument("--by", help="who drops (recorded; default: the user running the command)")
    q.set_defaults(func=cmd_submissions_drop)

    p = cmds.add_parser("rank", help="order queues by the disagreement of several reward models or an ensemble",
                        description="Score every item with each reward model or ensemble member (a pair item: answer A "
                        "minus answer B); the standard deviation of their standardised scores becomes the item's "
                        "priority (highest first).")
    _project(p)
    p.add_argument("--reward-models", nargs="+", required=True,
                   help="two or more reward-model folders, or an ensemble (train rm --ensemble_size K)")
    p.add_argument("--base", help="base checkpoint (default: the one recorded in each model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_rank)
