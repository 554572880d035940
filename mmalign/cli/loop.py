"""``mmalign loop``: the on-policy feedback loop (:func:`mmalign.loop.run_loop`).

Settings come from ``--config FILE`` (YAML with :class:`~mmalign.loop.LoopConfig` fields, plus
``ai_feedback`` (AIFeedbackConfig fields) and ``judge_endpoint`` mappings for AI feedback);
flags override the file. Rerunning the same command resumes a stopped run, and continues a
studio round once its answers are labelled.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from mmalign.cli.common import add_model_flags, settings_file
from mmalign.cli.judging import add_judge_client_flags, claim_judge, judge_endpoint

#: flag destination -> LoopConfig field, for the flags that set one directly
_FLAGS = {"out": "output_dir", "rounds": "rounds", "prompts_per_round": "prompts_per_round",
          "feedback": "feedback", "recipe": "recipe", "model": "model", "eval_scenes": "eval_scenes",
          "seed": "seed", "prompts": "prompts_path", "studio_project": "studio_project",
          "studio_min_labelled": "studio_min_labelled", "max_new_tokens": "max_new_tokens"}


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """LoopConfig values, AI-feedback settings and the judge endpoint (or ``None``): file, then flags."""
    values = settings_file(args.config, "loop settings")
    ai_settings = values.pop("ai_feedback", None) or {}
    endpoint = values.pop("judge_endpoint", None)
    values.update({field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None})
    if args.opa_sft:
        values["opa_sft"] = True
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        values.setdefault("training", {})[key] = yaml.safe_load(raw)
    return values, ai_settings, judge_endpoint(args, endpoint)


def cmd_loop(args: argparse.Namespace) -> int:
    from mmalign.data_builders.ai_feedback import AIFeedbackConfig
    from mmalign.loop import LoopConfig, feedback_source, run_loop

    values, ai_settings, endpoint = _settings(args)
    config = LoopConfig.from_dict(values)
    judge = splitter = None
    if config.feedback == "ai":
        judge, splitter = claim_judge(args, endpoint, cache=str(Path(config.output_dir) / "judge-cache.jsonl"))
    source = feedback_source(config, judge, splitter, AIFeedbackConfig.from_dict(ai_settings))
    result = run_loop(config, source)
    if result.waiting:
        print(f"\nwaiting: {result.waiting}")
    else:
        print(f"\nreport: {result.report}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loop", help="on-policy rounds: sample -> feedback -> pairs -> DPO -> evaluate (resumable)",
        description="Rounds of: the current policy answers the round's prompts; a feedback source turns the "
                    "answers into preference pairs (scene: the scene world corrects them; ai: RLAIF-V claims "
                    "judged by a local model or an endpoint; studio: annotators correct them in the feedback "
                    "studio, and the round waits until they have); optional OPA-DPO SFT on the corrected answers; "
                    "DPO from the current policy with it as the reference; POPE and CHAIR on held-out scenes. "
                    "Rerun the same command to resume.",
        epilog="Example: mmalign loop --out runs/loop --rounds 3 --prompts-per-round 200 "
               "(the shipped scene VLM, scene-world feedback, the ddpo-scene-vlm recipe). "
               "Reports: OUT/report.md, OUT/report.json, OUT/rounds.png.")
    p.add_argument("--config", help="YAML with loop settings (LoopConfig fields; ai_feedback and judge_endpoint "
                                    "mappings for AI feedback)")
    p.add_argument("--out", help="run folder (one sub-folder per round, and the report)")
    p.add_argument("--rounds", type=int, help="rounds (default 3)")
    p.add_argument("--prompts-per-round", type=int, help="prompts (scene world: scenes) per round (default 200)")
    p.add_argument("--feedback", choices=["scene", "ai", "studio"], help="feedback source (default scene)")
    p.add_argument("--recipe", help="DPO training recipe, shipped name or YAML (default ddpo-scene-vlm)")
    p.add_argument("--model", help="base model (default: the recipe's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field of the recipe (model or DPOConfig), e.g. --set loss_type=mdpo; repeatable")
    p.add_argument("--opa-sft", action="store_true", help="OPA-DPO: SFT on the corrected answers before each DPO")
    p.add_argument("--eval-scenes", type=int, help="held-out scenes for POPE and CHAIR each round (0: none; "
                                                   "default 200)")
    p.add_argument("--max-new-tokens", type=int, help="longest answer sampled for feedback (default 128)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--prompts", help="ai / studio: prompt set; round K answers its K-th slice")
    p.add_argument("--studio-project", help="studio: project folder (created if missing)")
    p.add_argument("--studio-min-labelled", type=float,
                   help="studio: share of a round's answers labelled before it trains (default 1)")
    g = p.add_argument_group("AI feedback judge (--feedback ai)")
    g.add_argument("--judge", help="local judge model (folder, card name or hub id)")
    g.add_argument("--judge-url", help="OpenAI-compatible endpoint base URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--judge-model", help="model name to request from the endpoint")
    g.add_argument("--splitter", choices=["sentence", "judge"], default="sentence",
                   help="claim splitting: rule-based sentences (default) or ask the judge")
    add_judge_client_flags(p, cache_default="OUT/judge-cache.jsonl")
    add_model_flags(p, what="the local judge", title="local judge loading")
    p.set_defaults(func=cmd_loop)
