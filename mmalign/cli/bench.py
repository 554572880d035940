"""``mmalign bench pope | chair | objhal | amber | mmhal | safety | report``.

Each command is a thin layer over :mod:`mmalign.benchmarks`: build the benchmark's config
from the flags, then either generate answers with ``--model`` (resumable: rerun the same
command after an interruption) or score an existing ``--answers`` file, and write the
reports to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

EPILOG = "Reports go to OUT/report.json, OUT/report.md and OUT/details.jsonl; generated answers to OUT/answers.jsonl."


# --------------------------------------------------------------------------- shared flags


def _split_paths(values: list[str], flag: str) -> str | dict[str, str]:
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


def _add_source(p: argparse.ArgumentParser, *, answers_nargs: str | None = None) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint folder, model card or hub id to generate answers with")
    source.add_argument("--answers", nargs=answers_nargs, help="score this answers file (JSON or JSON Lines) instead")
    p.add_argument("--out", required=True, help="output folder for answers and reports")
    p.add_argument("--name", help="checkpoint label in the report (default: the model or answers file name)")
    g = p.add_argument_group("generation (with --model)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, help="default: the benchmark's (128 for POPE, else 512)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0, help="seed of sampled decoding")
    g.add_argument("--dtype", default="float32", help="dtype of the model (float32, bfloat16, float16)")
    g.add_argument("--load-4bit", action="store_true", help="load the language model in 4-bit NF4")
    g.add_argument("--device-map", help='e.g. "auto" to place the model on the GPU(s)')
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _load_model(path: str, args: argparse.Namespace) -> Any:
    from mmalign.models import load_adapter
    from mmalign.qlora import QuantizationConfig

    quantization = QuantizationConfig(compute_dtype=args.dtype) if args.load_4bit else None
    adapter = load_adapter(path, dtype=args.dtype, quantization=quantization, device_map=args.device_map)
    adapter.model.eval()
    return adapter


def _run(benchmark: Any, args: argparse.Namespace) -> int:
    from mmalign.benchmarks import run_benchmark
    from mmalign.utils import format_table

    generation = None
    adapter = None
    answers = None
    if args.model:
        defaults = benchmark.default_generation()
        generation = replace(
            defaults, batch_size=args.batch_size, do_sample=args.do_sample, temperature=args.temperature,
            top_p=args.top_p, seed=args.seed, max_new_tokens=args.max_new_tokens or defaults.max_new_tokens,
        )
        adapter = _load_model(args.model, args)
    else:
        answers = args.answers if not isinstance(args.answers, list) else _split_paths(args.answers, "--answers")
    name = args.name or (Path(args.model).name if args.model else None)
    result = run_benchmark(
        benchmark, adapter=adapter, answers=answers, out=args.out, generation=generation,
        model_name=name, progress=not args.no_progress,
    )
    rows = [[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in result.headline.items()]
    print(f"{result.benchmark} — {result.model}")
    print(format_table(["metric", "value"], rows))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input is reported as one clear line, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


# --------------------------------------------------------------------------- commands


def cmd_pope(args: argparse.Namespace) -> int:
    from mmalign.benchmarks import PopeBenchmark, PopeConfig

    config = PopeConfig(
        questions=_split_paths(args.questions, "--questions"), image_dir=args.images, splits=args.splits,
        parsing=args.parsing, data_version=args.data_version,
    )
    return _run(PopeBenchmark(config), args)


def cmd_chair(args: argparse.Namespace) -> int:
    from mmalign.benchmarks import ChairBenchmark, ChairConfig

    config = ChairConfig(
        instances=args.instances, captions=args.captions, image_dir=args.images, image_ids=args.image_ids,
        num_images=args.num_images, seed=args.sample_seed, prompt=args.prompt, vocabulary=args.vocabulary,
    )
    return _run(ChairBenchmark(config), args)


def cmd_objhal(args: argparse.Namespace) -> int:
    from mmalign.benchmarks import ObjHalBenchmark, ObjHalConfig

    config = ObjHalConfig(
        questions=args.questions, instances=args.instances, captions=args.captions, image_dir=args.images,
        vocabulary=args.vocabulary,
    )
    return _run(ObjHalBenchmark(config), args)


def cmd_amber(args: argparse.Namespace) -> int:
    from mmalign.benchmarks import AmberBenchmark, AmberConfig

    config = AmberConfig(
        data_dir=args.data, query_file=args.query_file, image_dir=args.images, kinds=args.kinds,
        parsing=args.parsing, discriminative_suffix=args.discriminative_suffix,
    )
    return _run(AmberBenchmark(config), args)


def cmd_mmhal(args: argparse.Namespace) -> int:
    from mmalign.benchmarks import (
        AdapterJudge,
        HTTPJudge,
        HTTPJudgeConfig,
        MMHalBenchmark,
        MMHalConfig,
        SceneJudge,
    )
    from mmalign.benchmarks.mmhal import JUDGE_TEMPLATE

    if args.judge_scene:
        judge: Any = SceneJudge.from_world(args.judge_scene)
    elif args.judge_url:
        if not args.judge_model:
            raise ValueError("--judge-url needs --judge-model")
        judge = HTTPJudge(HTTPJudgeConfig(base_url=args.judge_url, model=args.judge_model,
                                               api_key_env=args.judge_key_env))
    else:
        judge = AdapterJudge(_load_model(args.judge_local, args), name=f"local:{Path(args.judge_local).name}",
                             max_new_tokens=args.judge_max_new_tokens)
    template = Path(args.judge_template).read_text(encoding="utf-8") if args.judge_template else JUDGE_TEMPLATE
    config = MMHalConfig(template=args.template, image_dir=args.images, judge=judge, judge_template=template)
    return _run(MMHalBenchmark(config), args)


def cmd_safety(args: argparse.Namespace) -> int:
    from mmalign.benchmarks import SafetyBenchmark, SafetyConfig, load_scorer

    if not (args.cost_model or args.reward_model):
        raise ValueError("give --cost-model, --reward-model, or both")
    base = args.scorer_base  # default: the base each model records in its adapter config
    from mmalign.qlora import QuantizationConfig

    quantization = QuantizationConfig(compute_dtype=args.dtype) if args.load_4bit else None
    kwargs = dict(dtype=args.dtype, device_map=args.device_map, quantization=quantization)
    config = SafetyConfig(
        questions=args.questions, image_dir=args.images,
        cost_scorer=load_scorer(args.cost_model, base, **kwargs) if args.cost_model else None,
        reward_scorer=load_scorer(args.reward_model, base, **kwargs) if args.reward_model else None,
        cost_threshold=args.cost_threshold, category_field=args.category_field,
    )
    return _run(SafetyBenchmark(config), args)


def cmd_report(args: argparse.Namespace) -> int:
    from mmalign.benchmarks import compare_reports

    summary = compare_reports(args.runs, args.out, labels=args.labels)
    for benchmark, entry in summary.items():
        differing = entry["protocol_differences"]
        note = f"  (protocols differ: {', '.join(differing)})" if differing else ""
        print(f"{benchmark}: {len(entry['runs'])} runs{note}")
    print(f"\nwrote {Path(args.out) / 'comparison.md'}, comparison.json and comparison.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Benchmark commands: pope, chair, objhal, amber, mmhal, safety, report."""
    bench = sub.add_parser(
        "bench", help="hallucination and safety benchmarks (POPE, CHAIR, Object HalBench, AMBER, MMHal, safety)",
        description="Generate answers with a model and score them with the official protocols, or score an "
        "answers file produced elsewhere; compare several checkpoints with 'bench report'.",
    )
    bench.set_defaults(func=lambda args: bench.print_help() or 0)
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")

    p = bsub.add_parser("pope", help="POPE yes/no object existence", epilog=EPILOG,
                        description="POPE: per-split accuracy, precision, recall, F1 and yes-ratio; "
                        "headline = mean F1.")
    p.add_argument("--questions", nargs="+", required=True,
                   help="folder of coco_pope_{random,popular,adversarial}.json files, one file, or SPLIT=FILE pairs")
    p.add_argument("--images", help="image folder (needed with --model)")
    p.add_argument("--splits", nargs="+", help="evaluate only these splits")
    p.add_argument("--parsing", choices=["official", "strict"], default="official")
    p.add_argument("--data-version", default="auto", choices=["auto", "llava-1.5", "current", "custom"])
    _add_source(p, answers_nargs="+")
    p.set_defaults(func=_guarded(cmd_pope))

    p = bsub.add_parser("chair", help="CHAIR caption hallucination", epilog=EPILOG,
                        description="CHAIR_s, CHAIR_i, recall and length of image captions against "
                        "COCO-style ground truth.")
    _add_ground_truth(p)
    p.add_argument("--images", help="image folder (needed with --model)")
    p.add_argument("--image-ids", nargs="+", help="caption exactly these images")
    p.add_argument("--num-images", type=int, help="caption a seeded random sample of this many images")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--prompt", default="Please describe this image in detail.")
    _add_source(p)
    p.set_defaults(func=_guarded(cmd_chair))

    p = bsub.add_parser("objhal", help="Object HalBench (RLHF-V)", epilog=EPILOG,
                        description="Response-level and object-level hallucination rates of detailed descriptions.")
    p.add_argument("--questions", required=True, help="Object HalBench questions (JSON or JSON Lines)")
    _add_ground_truth(p)
    p.add_argument("--images", help="image folder (needed with --model unless images are inline)")
    _add_source(p)
    p.set_defaults(func=_guarded(cmd_objhal))

    p = bsub.add_parser("amber", help="AMBER generative + discriminative", epilog=EPILOG,
                        description="AMBER CHAIR, Cover, Hal, Cog; accuracy and F1 with 'No' as positive; AMBER score.")
    p.add_argument("--data", required=True,
                   help="folder with query_all.json, annotations.json, relation.json, safe_words.txt")
    p.add_argument("--query-file", help="another query file (e.g. query_generative.json)")
    p.add_argument("--images", help="image folder (needed with --model)")
    p.add_argument("--kinds", default="all",
                   choices=["all", "generative", "discriminative", "existence", "attribute", "relation"])
    p.add_argument("--parsing", choices=["first-word", "exact"], default="first-word",
                   help="yes/no parsing of discriminative answers")
    p.add_argument("--discriminative-suffix", default="", help="text appended to discriminative queries")
    _add_source(p)
    p.set_defaults(func=_guarded(cmd_amber))

    p = bsub.add_parser("mmhal", help="MMHal-Bench with a judge", epilog=EPILOG,
                        description="MMHal-Bench: a judge rates each answer 0-6; mean score, hallucination "
                        "rate, per type.")
    p.add_argument("--template", required=True, help="MMHal-Bench response_template.json")
    p.add_argument("--images", help="image folder (needed with --model)")
    judge = p.add_mutually_exclusive_group(required=True)
    judge.add_argument("--judge-url", help="base URL of an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    judge.add_argument("--judge-local", help="checkpoint of a local model to judge with")
    judge.add_argument("--judge-scene", metavar="WORLD",
                       help="rate by the ground truth of a scene world folder (mmalign world make), no model")
    p.add_argument("--judge-model", help="model name sent to the endpoint")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--judge-max-new-tokens", type=int, default=512, help="judgement length for --judge-local")
    p.add_argument("--judge-template", help="file with another judge prompt template")
    _add_source(p)
    p.set_defaults(func=_guarded(cmd_mmhal))

    p = bsub.add_parser("safety", help="unsafe rate (cost model) and helpfulness (reward model)", epilog=EPILOG,
                        description="Score answers with saved cost / reward models: unsafe rate per harm category, "
                        "mean cost, mean reward.")
    p.add_argument("--questions", required=True, help="safety prompts (JSON or JSON Lines)")
    p.add_argument("--images", help="image folder")
    p.add_argument("--cost-model", help="saved cost model (ScalarHeadModel folder)")
    p.add_argument("--reward-model", help="saved reward model (ScalarHeadModel folder)")
    p.add_argument("--scorer-base", help="base checkpoint of the scoring models (default: the one they were trained on)")
    p.add_argument("--cost-threshold", type=float, default=0.0, help="cost above this is unsafe (default 0)")
    p.add_argument("--category-field", help="field holding the harm category")
    _add_source(p)
    p.set_defaults(func=_guarded(cmd_safety))

    p = bsub.add_parser("report", help="compare several runs side by side (markdown, JSON, PNG chart)",
                        description="Read the report.json of each run folder and write comparison.md, "
                        "comparison.json and comparison.png to --out.")
    p.add_argument("runs", nargs="+", help="run folders (each with a report.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--labels", nargs="+", help="checkpoint labels, one per run")
    p.set_defaults(func=_guarded(cmd_report))


def _add_ground_truth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", help="COCO instances JSON")
    p.add_argument("--captions", help="COCO captions JSON")
    p.add_argument("--vocabulary", default="auto", choices=["auto", "coco", "instances"],
                   help="object words: mmalign's COCO table, or the instance category names")
