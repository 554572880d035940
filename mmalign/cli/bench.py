"""``mmalign bench NAME | report``: one command per benchmark of :data:`mmalign.benchmarks.BENCHMARKS`,
and one per reward-model benchmark of :data:`mmalign.benchmarks.REWARD_BENCHMARKS`.

Each ``mmalign bench NAME`` is generated from the benchmark's config dataclass: every field
with ``metadata["help"]`` becomes a flag (``--field-name``, or ``metadata["flag"]``; type,
default and ``metadata["choices"]`` from the field, in the style of transformers'
``HfArgumentParser``). The flags shared by every benchmark (answers source, output,
generation, model loading) are added once, by :func:`add_source_flags`. A benchmark whose
config holds objects rather than values (MMHal's judge, the safety scorers) adds its own
flags for them in :data:`EXTRA_FLAGS`.

A command either generates answers with ``--model`` (resumable: rerun the same command after
an interruption) or scores an existing ``--answers`` file, and writes the reports to ``--out``.
A reward-model benchmark (``vl-rewardbench``, ``mm-rewardbench``) instead scores the
benchmark's preference pairs with ``--reward-model`` (:func:`~mmalign.benchmarks.run_reward_bench`).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from mmalign.benchmarks import (
    BENCHMARKS,
    REWARD_BENCHMARKS,
    GenerativeJudge,
    HTTPJudge,
    SceneJudge,
    compare_reports,
    load_reward_scorer,
    load_scorer,
    run_benchmark,
    run_reward_bench,
)
from mmalign.benchmarks.answers import ANSWER_FORMATS
from mmalign.benchmarks.mmhal import JUDGE_TEMPLATE
from mmalign.cli.common import add_model_flags, load_model, model_kwargs
from mmalign.cli.judging import add_judge_client_flags, judge_endpoint_settings
from mmalign.judge_client import JudgeClient, JudgeEndpoint
from mmalign.utils import format_table

EPILOG = "Reports go to OUT/report.json, OUT/report.md and OUT/details.jsonl; generated answers to OUT/answers.jsonl."

#: ``mmalign bench --help`` line and ``mmalign bench NAME --help`` description of each benchmark
#: (a benchmark missing here is listed with its config's docstring).
SUMMARIES: dict[str, tuple[str, str]] = {
    "pope": ("POPE yes/no object existence",
             "POPE: per-split accuracy, precision, recall, F1 and yes-ratio; headline = mean F1."),
    "chair": ("CHAIR caption hallucination",
              "CHAIR_s, CHAIR_i, recall and length of image captions against COCO-style ground truth."),
    "objhal": ("Object HalBench (RLHF-V)",
               "Response-level and object-level hallucination rates of detailed descriptions."),
    "amber": ("AMBER generative + discriminative",
              "AMBER CHAIR, Cover, Hal, Cog; accuracy and F1 with 'No' as positive; AMBER score."),
    "mmhal": ("MMHal-Bench with a judge",
              "MMHal-Bench: a judge rates each answer 0-6; mean score, hallucination rate, per type."),
    "safety": ("unsafe rate (cost model) and helpfulness (reward model)",
               "Score answers with saved cost / reward models: unsafe rate per harm category, mean cost, "
               "mean reward."),
    "image-reliance": ("does the model use the image? preference pairs with blank, shuffled, corrupted images",
                       "Score preference pairs with their true images and with blank, shuffled and corrupted ones: "
                       "preference accuracy, margins (and the DPO implicit reward with LoRA adapters) per condition, "
                       "and the image reliance log p(chosen | true) - log p(chosen | condition), 0 for a model that "
                       "ignores the image; optionally POPE with and without the image."),
}

#: (``--help`` line, description, the public file to give as ``--data``) of each reward benchmark.
REWARD_SUMMARIES: dict[str, tuple[str, str, str]] = {
    "vl-rewardbench": (
        "VL-RewardBench: reward-model accuracy on human-ranked pairs",
        "VL-RewardBench (CVPR 2025): score both responses of every pair with a reward model; a pair is right when "
        "the human-preferred response (human_ranking 0) scores strictly higher, a tie is wrong. Reports the overall "
        "accuracy, the macro average over the categories (general, hallucination, reasoning) and each category.",
        "the dataset's parquet file (image bytes inside), the GitHub data.jsonl (image_path relative to "
        "--image-folder), or JSON / JSON Lines in the same fields",
    ),
    "mm-rewardbench": (
        "Multimodal RewardBench: reward-model accuracy on chosen / rejected pairs",
        "Multimodal RewardBench (Yasunaga et al. 2025): score Output1 and Output2 of every record with a reward "
        "model; a pair is right when the output named by Better scores strictly higher, a tie is wrong. Reports the "
        "overall accuracy (all pairs pooled), each category and the official script's subcategories "
        "(safety/bias, safety/toxicity, reasoning/math, reasoning/coding).",
        "all_data.json from the benchmark's repository (a JSON list; JSON Lines too), Image paths relative to "
        "--image-folder (the data/ folder)",
    ),
}


# --------------------------------------------------------------------------- flags from a config


def split_paths(values: list[str], flag: str) -> str | dict[str, str]:
    """One path, or several ``split=path`` pairs (POPE)."""
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    pairs = {}
    for value in values:
        split, sep, path = value.partition("=")
        if not sep or not split or not path:
            raise ValueError(f"{flag}: expected PATH or SPLIT=PATH pairs, got {value!r}")
        pairs[split] = path
    return pairs


@dataclass(frozen=True)
class ConfigFlag:
    """One config field as a flag: its option string, the argparse keywords and how the
    parsed value becomes the field's value."""

    field: str
    flag: str
    kwargs: dict[str, Any]
    convert: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        return f"config_{self.field}"

    def value(self, args: argparse.Namespace) -> Any:
        value = getattr(args, self.dest)
        return self.convert(value) if self.convert is not None and value is not None else value


def _default_note(default: Any) -> str:
    if default is None or default is False or default == "":
        return ""
    return f" (default: {' '.join(default) if isinstance(default, list | tuple) else default})"


def config_flag(f: Field, hint: Any) -> ConfigFlag:
    """The flag of one dataclass field (which has ``metadata["help"]``)."""
    meta = f.metadata
    flag = meta.get("flag", "--" + f.name.replace("_", "-"))
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = [a for a in (typing.get_args(hint) if union else (hint,)) if a is not type(None)]
    origins = {typing.get_origin(a) for a in members}
    kwargs: dict[str, Any] = {}
    convert = None
    if Mapping in origins or dict in origins:  # one file, or SPLIT=FILE pairs
        kwargs["nargs"] = "+"
        convert = partial(split_paths, flag=flag)
    elif origins & {Sequence, list, tuple}:
        kwargs["nargs"] = "+"
    elif members == [bool]:
        kwargs["action"] = argparse.BooleanOptionalAction if f.default is True else "store_true"
    elif str not in members and int in members:
        kwargs["type"] = int
    elif str not in members and float in members:
        kwargs["type"] = float
    if "choices" in meta:
        kwargs["choices"] = list(meta["choices"])
    elif "action" not in kwargs:
        kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
    required = f.default is MISSING and f.default_factory is MISSING
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = f.default if f.default is not MISSING else f.default_factory()
    note = "" if required or kwargs.get("action") else _default_note(kwargs["default"])
    kwargs["help"] = meta["help"] + note
    return ConfigFlag(f.name, flag, kwargs, convert)


def config_flags(config: type) -> list[ConfigFlag]:
    """The flags of a config dataclass: one per field with ``metadata["help"]``, in field order."""
    hints = typing.get_type_hints(config)
    return [config_flag(f, hints[f.name]) for f in fields(config) if "help" in f.metadata]


# --------------------------------------------------------------------------- shared flags


def add_source_flags(p: argparse.ArgumentParser, *, answers_nargs: str | None = None, answers: bool = True) -> None:
    """Answers source, output, generation and model-loading flags: the same for every benchmark
    (without ``--answers`` for one that measures the model itself)."""
    if answers:
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--model", help="checkpoint folder, model card or hub id to generate answers with")
        source.add_argument("--answers", nargs=answers_nargs, help="score this answers file (JSON or JSON Lines) "
                            "instead" + (", several files, or SPLIT=FILE pairs" if answers_nargs else ""))
        p.add_argument("--format", dest="answers_format", choices=ANSWER_FORMATS, default="auto",
                       help="layout of --answers: mmalign's answers.jsonl, LLaVA's answer or caption files "
                       "(model_vqa_loader), lmms-eval's --log_samples records; auto: told apart by their fields "
                       "(default: auto)")
    else:
        p.add_argument("--model", required=True, help="checkpoint folder, model card or hub id to score")
    p.add_argument("--out", required=True, help="output folder for answers and reports")
    p.add_argument("--name", help="checkpoint label in the report (default: the model or answers file name)")
    g = p.add_argument_group("generation (with --model)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="prompts per generation batch, or pairs per scoring batch (default: 8)")
    g.add_argument("--max-new-tokens", type=int, help="default: the benchmark's (128 for POPE, else 512)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="(default: 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="(default: 1.0)")
    g.add_argument("--seed", type=int, default=0, help="seed of sampled decoding (default: 0)")
    add_model_flags(p, what="the models", adapter=True,
                    title="model loading (--model and any judge or scoring model)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# --------------------------------------------------------------------------- flags of config objects


def _add_judge_flags(p: argparse.ArgumentParser) -> None:
    judge = p.add_mutually_exclusive_group(required=True)
    judge.add_argument("--judge-url", help="base URL of an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    judge.add_argument("--judge-local", help="checkpoint of a local model to judge with")
    judge.add_argument("--judge-scene", metavar="WORLD",
                       help="rate by the ground truth of a scene world folder (mmalign world make), no model")
    p.add_argument("--judge-model", help="model name sent to the endpoint")
    p.add_argument("--judge-max-new-tokens", type=int, default=512,
                   help="judgement length for --judge-local (default: 512)")
    p.add_argument("--judge-template", help="file with another judge prompt template")
    add_judge_client_flags(p, cache_default="OUT/judge_cache.jsonl")


def _judge_fields(args: argparse.Namespace) -> dict[str, Any]:
    if args.judge_url and not args.judge_model:
        raise ValueError("--judge-url needs --judge-model")
    template = Path(args.judge_template).read_text(encoding="utf-8") if args.judge_template else JUDGE_TEMPLATE
    named = {"judge_template": template,
             "judge_template_name": f"file {Path(args.judge_template).name}" if args.judge_template else None}
    settings = judge_endpoint_settings(args, endpoint=bool(args.judge_url))
    if args.judge_scene:
        judge: Any = SceneJudge.from_world(args.judge_scene)
    elif args.judge_url:
        endpoint = JudgeEndpoint(**{"base_url": args.judge_url, "model": args.judge_model,
                                    "cache": Path(args.out) / "judge_cache.jsonl", **settings})
        # Batches of a few prompts per worker keep every one of the N requests busy.
        return {"judge": HTTPJudge(JudgeClient(endpoint, progress=not args.no_progress)),
                "judge_batch_size": 4 * endpoint.concurrency, **named}
    else:
        judge = GenerativeJudge(load_model(args, args.judge_local), name=f"local:{Path(args.judge_local).name}",
                             max_new_tokens=args.judge_max_new_tokens)
    return {"judge": judge, **named}


def _add_scorer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cost-model", help="saved cost model (ScalarHeadModel folder)")
    p.add_argument("--reward-model", help="saved reward model (ScalarHeadModel folder)")
    p.add_argument("--scorer-base", help="base checkpoint of the scoring models (default: the one they were trained on)")


def _scorer_fields(args: argparse.Namespace) -> dict[str, Any]:
    if not (args.cost_model or args.reward_model):
        raise ValueError("give --cost-model, --reward-model, or both")
    kwargs = model_kwargs(args)  # the base defaults to the one each model records in its adapter config
    return {
        "cost_scorer": load_scorer(args.cost_model, args.scorer_base, **kwargs) if args.cost_model else None,
        "reward_scorer": load_scorer(args.reward_model, args.scorer_base, **kwargs) if args.reward_model else None,
    }


#: Benchmarks whose config holds objects built from flags of their own: (add the flags, build the fields).
EXTRA_FLAGS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], dict[str, Any]]]] = {
    "mmhal": (_add_judge_flags, _judge_fields),
    "safety": (_add_scorer_flags, _scorer_fields),
}


# --------------------------------------------------------------------------- commands


def cmd_benchmark(name: str, flags: list[ConfigFlag], args: argparse.Namespace) -> int:
    """Build benchmark ``name``'s config from the flags, then generate or score and report."""
    benchmark_type, config_type = BENCHMARKS[name]
    values = {flag.field: flag.value(args) for flag in flags}
    if name in EXTRA_FLAGS:
        values.update(EXTRA_FLAGS[name][1](args))
    benchmark = benchmark_type(config_type(**values))
    if args.model:
        defaults = benchmark.default_generation()
        generation = replace(
            defaults, batch_size=args.batch_size, do_sample=args.do_sample, temperature=args.temperature,
            top_p=args.top_p, seed=args.seed, max_new_tokens=args.max_new_tokens or defaults.max_new_tokens,
        )
        source: dict[str, Any] = {"adapter": load_model(args), "generation": generation}
    else:
        source = {"answers": _answers_source(args.answers), "answers_format": args.answers_format}
    result = run_benchmark(
        benchmark, out=args.out, model_name=args.name or (Path(args.model).name if args.model else None),
        progress=not args.no_progress, **source,
    )
    rows = [[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in result.headline.items()]
    print(f"{result.benchmark} — {result.model}")
    print(format_table(["metric", "value"], rows))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def _answers_source(values: str | list[str]) -> str | list[str] | dict[str, str]:
    """One file, several files (e.g. lmms-eval's samples of pope_adv, pope_pop, pope_random),
    or SPLIT=FILE pairs."""
    if isinstance(values, str):
        return values
    if len(values) > 1 and not any("=" in v for v in values):
        return values
    return split_paths(values, "--answers")


def cmd_report(args: argparse.Namespace) -> int:
    summary = compare_reports(args.runs, args.out, labels=args.labels)
    for benchmark, entry in summary.items():
        differing = entry["protocol_differences"]
        note = f"  (protocols differ: {', '.join(differing)})" if differing else ""
        print(f"{benchmark}: {len(entry['runs'])} runs{note}")
        if entry["card_differences"]:
            print(f"  warning: protocol cards differ in: {', '.join(entry['card_differences'])}")
    print(f"\nwrote {Path(args.out) / 'comparison.md'}, comparison.json and comparison.png")
    return 0


def cmd_reward_benchmark(name: str, args: argparse.Namespace) -> int:
    """Read the pairs (a bad record fails before any model loads), load the reward model,
    score the pairs and report."""
    REWARD_BENCHMARKS[name](args.data, args.image_folder)
    scorer = load_reward_scorer(args.reward_model, args.reward_base, batch_size=args.batch_size,
                                aggregation=args.aggregation, uncertainty_weight=args.uncertainty_weight,
                                **model_kwargs(args))
    result = run_reward_bench(name, args.data, scorer, image_dir=args.image_folder, out=args.out,
                              batch_size=args.batch_size, model_name=args.name, progress=not args.no_progress)
    rows = [[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in result.headline.items()]
    print(f"{result.benchmark} — {result.model}")
    print(format_table(["metric", "value"], rows))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def add_reward_bench_parser(bsub: argparse._SubParsersAction, name: str) -> None:
    """``mmalign bench NAME`` for a reward-model benchmark."""
    help_text, description, data = REWARD_SUMMARIES[name]
    p = bsub.add_parser(name, help=help_text, description=description,
                        epilog="Reports go to OUT/report.json, OUT/report.md and OUT/details.jsonl (each pair's "
                        "scores); scores are cached in OUT/scores.jsonl, so rerunning an interrupted command resumes.")
    p.add_argument("--data", required=True, help=data)
    p.add_argument("--image-folder", help="folder the records' image paths are relative to (not needed when the "
                   "images are inside the data file)")
    p.add_argument("--reward-model", required=True, help="saved reward model or ensemble folder")
    p.add_argument("--aggregation", choices=["mean", "worst_case", "uncertainty_weighted"], default=None,
                   help="an ensemble's score (default: its own): mean, worst_case or uncertainty_weighted")
    p.add_argument("--uncertainty-weight", type=float, default=None,
                   help="λ of uncertainty_weighted (default: the ensemble's own)")
    p.add_argument("--reward-base", help="base checkpoint of the reward model (default: the one it was trained on)")
    p.add_argument("--out", required=True, help="output folder for the scores and reports")
    p.add_argument("--name", help="label of the reward model in the report (default: its folder name)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per scoring batch (default: 8)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_flags(p, what="the reward model", title="model loading (--reward-model)")
    p.set_defaults(func=partial(cmd_reward_benchmark, name))


def register(sub: argparse._SubParsersAction) -> None:
    """``mmalign bench NAME`` for every registered benchmark, and ``mmalign bench report``."""
    bench = sub.add_parser(
        "bench", help="hallucination, safety and reward-model benchmarks ("
        + ", ".join([*BENCHMARKS, *REWARD_BENCHMARKS]) + ", report)",
        description="Generate answers with a model and score them with the official protocols, or score an "
        "answers file produced elsewhere; score a reward model on preference pairs (vl-rewardbench, "
        "mm-rewardbench); compare several checkpoints with 'bench report'.",
    )
    bench.set_defaults(func=lambda args: bench.print_help() or 0)
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")

    for name, (benchmark_type, config_type) in BENCHMARKS.items():
        fallback = (config_type.__doc__ or name).strip().split("\n\n")[0]
        help_text, description = SUMMARIES.get(name, (fallback.split(".")[0], fallback))
        p = bsub.add_parser(name, help=help_text, description=description, epilog=EPILOG)
        flags = config_flags(config_type)
        for flag in flags:
            p.add_argument(flag.flag, dest=flag.dest, **flag.kwargs)
        if name in EXTRA_FLAGS:
            EXTRA_FLAGS[name][0](p)
        split_answers = any(flag.convert is not None for flag in flags)  # SPLIT=FILE questions: answers alike
        add_source_flags(p, answers_nargs="+" if split_answers else None, answers=benchmark_type.scores_answers)
        p.set_defaults(func=partial(cmd_benchmark, name, flags))
    for name in REWARD_BENCHMARKS:
        add_reward_bench_parser(bsub, name)

    p = bsub.add_parser("report", help="compare several runs side by side (markdown, JSON, PNG chart)",
                        description="Read the report.json of each run folder and write comparison.md, "
                        "comparison.json and comparison.png to --out.")
    p.add_argument("runs", nargs="+", help="run folders (each with a report.json)")
    p.add_argument("--out", required=True, help="output folder of the comparison")
    p.add_argument("--labels", nargs="+", help="checkpoint labels, one per run")
    p.set_defaults(func=cmd_report)
