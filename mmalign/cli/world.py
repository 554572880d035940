"""``mmalign world make | sft-data | pretrain | measure | feedback | safety | prompts | counterfactual``: the built-in
synthetic scene world.

``feedback``, ``safety`` and ``prompts`` were ``mmalign data build scene-feedback |
scene-safety | scene-prompts``; those names still work for one release (hidden, with a note).
"""

from __future__ import annotations

import argparse
import json

from mmalign.cli.common import add_model_flags, add_output_flags, load_model, print_written
from mmalign.data_builders.storage import DATASET, save_preference_dataset, save_prompt_set
from mmalign.experiments.pretrain_scene_vlm import (
    STAGE2_MIX,
    PretrainConfig,
    pretrain_scene_vlm,
    read_pretrain_recipe,
)
from mmalign.io import check_output
from mmalign.scene.counterfactual import KINDS, SUMMARY_FILE, save_counterfactual_dataset
from mmalign.scene.exports import make_world
from mmalign.scene.feedback import (
    scene_feedback_records,
    scene_prompt_records,
    scene_safety_records,
)
from mmalign.scene.world import WorldConfig


def cmd_make(args: argparse.Namespace) -> int:
    out = make_world(args.out, seed=args.seed, size=args.size, split=args.split, overwrite=args.overwrite)
    print(f"wrote {args.size} {args.split} scenes with POPE, COCO (CHAIR), AMBER, MMHal and VL-RewardBench files "
          f"to {out}")
    return 0


def cmd_sft_data(args: argparse.Namespace) -> int:
    from mmalign.scene.sft import save_scene_sft_dataset  # imports datasets (0.5 s): not for --help

    save_scene_sft_dataset(args.out, WorldConfig(seed=args.seed), args.size, split=args.split,
                           turns=args.turns, seed=args.seed, overwrite=args.overwrite,
                           **{name: getattr(args, name) for name in MIX_SHARES})
    print(f"wrote {args.size} instruction conversations ({args.split} split) to {args.out}")
    return 0


#: PretrainConfig fields with a flag of their own (given flags override --config)
PRETRAIN_FLAGS = ("seed", "n_scenes", "epochs", "batch_size", "learning_rate", "vision_steps", "train_vision",
                  *STAGE2_MIX, "stage3_scenes")

#: the instruction mix of pretraining's second stage (``STAGE2_MIX``), one flag each
MIX_SHARES = {
    "describe_share": "description rows",
    "existence_share": "existence drills",
    "facts_share": "fact checking against the pictured scene's facts",
    "reading_share": "fact reading (facts of the pictured scene or another one, answered from the facts)",
}


def cmd_measure(args: argparse.Namespace) -> int:
    from mmalign.experiments.scene_vlm_card import measure_scene_vlm, measured_block, world_of
    from mmalign.utils import format_table

    world_of(args.world)  # a wrong folder is refused before the model loads
    measured = measure_scene_vlm(load_model(args), args.world, args.out, model_name=args.model,
                                 fact_reading_scenes=args.fact_reading_scenes, progress=not args.no_progress)
    print(format_table(["measure", "value"], [[k, f"{v:.2f}"] for k, v in measured.items()]))
    print(f"\nfor the model card ({args.out}/measured.json):\n")
    print(measured_block(measured))
    return 0


#: ``mmalign world sft-data``'s instruction mix: the defaults of ``scene_sft_dataset``
SFT_DATA_MIX = {"describe_share": 0.3, "existence_share": 0.0, "facts_share": 0.1, "reading_share": 0.0}


def cmd_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    config, world = read_pretrain_recipe(args.config) if args.config else (PretrainConfig(), None)
    flags = {name: getattr(args, name) for name in PRETRAIN_FLAGS}
    config = replace(config, **{name: value for name, value in flags.items() if value is not None})
    if world is not None and args.seed is not None:
        world = replace(world, seed=args.seed)
    out = pretrain_scene_vlm(args.out, config, world, overwrite=args.overwrite)
    print(f"pretrained scene VLM written to {out}")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    inputs = (args.model, args.adapter)
    check_output(args.out, replaces=DATASET, overwrite=args.overwrite, inputs=inputs)  # before loading the model
    adapter = load_model(args)
    records, stats = scene_feedback_records(adapter, WorldConfig(seed=args.seed), args.scenes, seed=args.seed,
                                            include_correct_answers=not args.wrong_only,
                                            replace_absent=not args.remove_absent)
    print_written(save_preference_dataset(records, args.out, overwrite=args.overwrite, inputs=inputs),
                  "preference (scene-world corrections)")
    print("  " + json.dumps(stats.__dict__))
    return 0


def cmd_safety(args: argparse.Namespace) -> int:
    records = scene_safety_records(WorldConfig(seed=args.seed), args.scenes, hazardous_only=args.hazardous_only)
    print_written(save_preference_dataset(records, args.out, overwrite=args.overwrite),
                  "dual preference (scene-world safety)")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    records = scene_prompt_records(WorldConfig(seed=args.seed), args.scenes, split=args.split, start=args.start,
                                   kinds=args.kinds, seed=args.seed)
    print_written(save_prompt_set(records, args.out, overwrite=args.overwrite), "prompt set (scene world, for PPO)")
    return 0


def cmd_counterfactual(args: argparse.Namespace) -> int:
    report, summary = save_counterfactual_dataset(
        args.out, WorldConfig(seed=args.seed), args.scenes, split=args.split, start=args.start,
        kinds=KINDS if args.kind == "both" else (args.kind,), seed=args.seed, with_questions=args.questions,
        overwrite=args.overwrite, progress=not args.no_progress)
    print_written(report, "image-contrast (scene-world counterfactual)")
    print(f"  pairs by edit: {json.dumps(summary.pairs_by_kind)}; scenes skipped: {json.dumps(summary.skipped)}")
    print(f"  summary: {report.path / SUMMARY_FILE}")
    return 0


# ---------------------------------------------------------------------------- parsers
FEEDBACK = ("Dense-DPO pairs: a model's answers on scenes, corrected by the world",
            "Describe held-out scenes and answer existence questions with a model, then correct every absent "
            "object, wrong colour and wrong yes/no against the scene annotations (RLHF-V-style corrected spans).")
SAFETY = ("dual-preference safety pairs (helpful / safer, graded) from the world",
          "BeaverTails-V-style records from the scene world's safety prompts: chosen = more helpful, with safer "
          "side, safe flags, harmlessness −3…3 and helpfulness 0…3.")
PROMPTS = ("scene-world prompt set for PPO (describe, yes/no, safety)",
           "Prompts with the scene's facts (for a Fact-RM) and, for yes/no questions, the answer as reference "
           "(Fact-RLHF's symbolic reward); safety prompts cover harmful requests, hazard questions and benign "
           "questions.")

COUNTERFACTUAL = ("image-contrast pairs: each scene against itself with one object removed or recoloured",
                  "mDPO / ImageDPO-style pairs whose two sides hold the same answer (the true scene's detailed "
                  "description) with two images: the true scene (chosen) and the same scene with one object "
                  "removed or recoloured (rejected), rendered from exact annotations, so the preference can only "
                  "be learnt by looking. Scenes without a visible edit are skipped and counted in "
                  f"OUT/{SUMMARY_FILE}.")


def add_feedback_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="scene-vlm", help="model card, hub id or folder (default: scene-vlm)")
    p.add_argument("--scenes", type=int, default=600, help="number of scenes (default: 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wrong-only", action="store_true", help="only pair answers the model got wrong")
    p.add_argument("--remove-absent", action="store_true",
                   help="correct a named absent object by removing its clause instead of naming a present "
                   "object the caption left out (the demo's choice: replacements teach a weakly grounded model "
                   "to name objects it cannot see)")
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)
    add_model_flags(p, adapter=True)


def add_safety_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=2000, help="number of training scenes (default: 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hazardous-only", action="store_true", help="only scenes holding a hazardous object")
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)


def add_prompts_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=500, help="number of scenes (default: 500)")
    p.add_argument("--split", default="train", help="world split (default: train)")
    p.add_argument("--start", type=int, default=1, help="first scene number (default: 1)")
    p.add_argument("--kinds", nargs="+", default=["describe", "exist", "safety"],
                   choices=["describe", "exist", "safety"], help="prompt kinds (default: all three)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)


def add_counterfactual_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)
    p.add_argument("--scenes", type=int, default=1000, help="number of scenes (default: 1000)")
    p.add_argument("--split", default="train", choices=["train", "eval"],
                   help="world split (default: train; its scenes start at the scene VLM's training scenes, the "
                   "eval split's at the demo's feedback scenes, never at the benchmark scenes)")
    p.add_argument("--start", type=int, default=None, help="first scene number (default: see --split)")
    p.add_argument("--kind", default="both", choices=[*KINDS, "both"],
                   help="remove one object instance, recolour one object with a colour no other instance of "
                   "its category has, or both (one pair each per scene; default: both)")
    p.add_argument("--questions", action="store_true",
                   help="also pair the world's question about the edited object whose answer the edit changes "
                   "(existence, count or colour)")
    p.add_argument("--seed", type=int, default=0, help="world seed and seed of the edits (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


#: The dataset builders that were ``mmalign data build scene-NAME`` (still accepted there, hidden), by their
#: ``mmalign world`` name: (help, description, add the flags, run).
BUILDERS = {
    "feedback": (*FEEDBACK, add_feedback_flags, cmd_feedback),
    "safety": (*SAFETY, add_safety_flags, cmd_safety),
    "prompts": (*PROMPTS, add_prompts_flags, cmd_prompts),
}


def register(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the synthetic scene world: data, benchmarks, tiny VLM",
                           description="Seeded synthetic scenes with exact annotations and a controllable "
                           "co-occurrence bias, so object hallucination can be induced and measured.")
    cmds = world.add_subparsers(dest="world_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("make", help="write scenes and benchmark files (POPE, COCO, AMBER, MMHal)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    add_output_flags(p)
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p.add_argument("--size", type=int, default=500, help="number of scenes (default: 500)")
    p.add_argument("--split", default="eval", help="world split: eval (co-occurrence 0.35) or train (0.9)")
    p.set_defaults(func=cmd_make)

    p = cmds.add_parser("sft-data", help="write instruction conversations as a datasets folder")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    add_output_flags(p)
    p.add_argument("--size", type=int, default=2000, help="number of scenes / rows (default: 2000)")
    p.add_argument("--split", default="train", help="world split (default: train)")
    p.add_argument("--turns", type=int, default=3, help="question/answer turns per row (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    for name, rows in MIX_SHARES.items():
        default = SFT_DATA_MIX[name]
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=default,
                       help=f"share of the rows that are {rows} (default: {default}); the rows no share "
                       "claims are mixed questions")
    p.set_defaults(func=cmd_sft_data)

    p = cmds.add_parser("pretrain", help="pretrain a tiny scene VLM from scratch (how the shipped one was made)",
                        description="Build a fresh LLaVA over the world's vocabulary and train all of it with "
                        "the SFT trainer on the training split. Defaults reproduce the shipped weights; "
                        "--config models/scene-vlm/pretrain_recipe.yaml repeats any recorded recipe. Progress "
                        "is kept in OUT.pretraining: the same command after a crash resumes from there.")
    p.add_argument("--out", required=True, help="output folder")
    add_output_flags(p)
    p.add_argument("--config", help="a pretrain_recipe.yaml (pretraining, world and model settings); "
                   "flags given as well override it")
    d = PretrainConfig()
    p.add_argument("--seed", type=int, help=f"(default: {d.seed})")
    p.add_argument("--n-scenes", type=int, help=f"training scenes (default: {d.n_scenes})")
    p.add_argument("--epochs", type=float, help=f"passes over the scenes (default: {d.epochs})")
    p.add_argument("--vision-steps", type=int,
                   help=f"stage-1 patch-classification steps of the vision tower (default: {d.vision_steps})")
    p.add_argument("--batch-size", type=int, help=f"(default: {d.batch_size})")
    p.add_argument("--learning-rate", type=float, help=f"(default: {d.learning_rate})")
    p.add_argument("--train-vision", action="store_true", default=None,
                   help="also train the vision tower in stage 2 (default: keep the stage-1 tower frozen)")
    for name, rows in MIX_SHARES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float,
                       help=f"share of stage 2's rows that are {rows} (default: {getattr(d, name)}); "
                       "the rows no share claims are mixed questions")
    p.add_argument("--stage3-scenes", type=int,
                   help=f"rows of stage 3, one pass of the stage-3 mix ({d.stage3_mix}) from the stage-2 model "
                   f"(default: {d.stage3_scenes}; 0: no stage 3)")
    p.set_defaults(func=cmd_pretrain)

    p = cmds.add_parser("measure", help="every number of a scene VLM's model card, on a world folder",
                        description="Run POPE, CHAIR (with the share of hallucinated objects that are "
                        "co-occurrence partners), Object HalBench, AMBER, MMHal-Bench (judged by the scene's "
                        "ground truth) and fact reading on a world written by 'mmalign world make', greedy, "
                        "and print the card's [measured] block. Reports go to OUT/<benchmark>; answers are "
                        "cached there, so a stopped run goes on.")
    p.add_argument("--model", default="scene-vlm", help="the scene VLM (default: the shipped scene-vlm)")
    p.add_argument("--world", required=True, help="a world folder (mmalign world make --out WORLD --size 500)")
    p.add_argument("--out", required=True, help="folder for the benchmark reports and measured.json")
    p.add_argument("--fact-reading-scenes", type=int, default=200,
                   help="held-out scenes for fact reading, two questions each per kind of facts (default: 200)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_model_flags(p)
    p.set_defaults(func=cmd_measure)

    for name, (help_text, description, add_flags, run) in BUILDERS.items():
        p = cmds.add_parser(name, help=help_text, description=description)
        add_flags(p)
        p.set_defaults(func=run)

    help_text, description = COUNTERFACTUAL
    p = cmds.add_parser("counterfactual", help=help_text, description=description)
    add_counterfactual_flags(p)
    p.set_defaults(func=cmd_counterfactual)
