"""``mmalign world make | sft-data | pretrain``: the built-in synthetic scene world."""

from __future__ import annotations

import argparse


def cmd_make(args: argparse.Namespace) -> int:
    from mmalign.scene.exports import make_world

    out = make_world(args.out, seed=args.seed, size=args.size, split=args.split)
    print(f"wrote {args.size} {args.split} scenes with POPE, COCO (CHAIR), AMBER and MMHal files to {out}")
    return 0


def cmd_sft_data(args: argparse.Namespace) -> int:
    from mmalign.scene.sft import save_scene_sft_dataset
    from mmalign.scene.world import WorldConfig

    save_scene_sft_dataset(args.out, WorldConfig(seed=args.seed), args.size, split=args.split,
                           turns=args.turns, seed=args.seed)
    print(f"wrote {args.size} instruction conversations ({args.split} split) to {args.out}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mmalign.experiments.pretrain_scene_vlm import PretrainConfig, pretrain_scene_vlm

    config = PretrainConfig(seed=args.seed, n_scenes=args.n_scenes, epochs=args.epochs,
                            batch_size=args.batch_size, learning_rate=args.learning_rate,
                            vision_steps=args.vision_steps, train_vision=args.train_vision)
    out = pretrain_scene_vlm(args.out, config)
    print(f"pretrained scene VLM written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the synthetic scene world: data, benchmarks, tiny VLM",
                           description="Seeded synthetic scenes with exact annotations and a controllable "
                           "co-occurrence bias, so object hallucination can be induced and measured.")
    cmds = world.add_subparsers(dest="world_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("make", help="write scenes and benchmark files (POPE, COCO, AMBER, MMHal)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p.add_argument("--size", type=int, default=500, help="number of scenes (default: 500)")
    p.add_argument("--split", default="eval", help="world split: eval (co-occurrence 0.5) or train (0.9)")
    p.set_defaults(func=cmd_make)

    p = cmds.add_parser("sft-data", help="write instruction conversations as a datasets folder")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument("--size", type=int, default=2000, help="number of scenes / rows (default: 2000)")
    p.add_argument("--split", default="train", help="world split (default: train)")
    p.add_argument("--turns", type=int, default=3, help="question/answer turns per row (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sft_data)

    p = cmds.add_parser("pretrain", help="pretrain a tiny scene VLM from scratch (how the shipped one was made)",
                        description="Build a fresh LLaVA over the world's vocabulary and train all of it with "
                        "the SFT trainer on the training split. Defaults reproduce the shipped weights.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    from mmalign.experiments.pretrain_scene_vlm import PretrainConfig

    d = PretrainConfig()
    p.add_argument("--n-scenes", type=int, default=d.n_scenes, help=f"training scenes (default: {d.n_scenes})")
    p.add_argument("--epochs", type=float, default=d.epochs, help=f"passes over the scenes (default: {d.epochs})")
    p.add_argument("--vision-steps", type=int, default=d.vision_steps,
                   help=f"stage-1 patch-classification steps of the vision tower (default: {d.vision_steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default: {d.batch_size})")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help=f"(default: {d.learning_rate})")
    p.add_argument("--train-vision", action="store_true",
                   help="also train the vision tower in stage 2 (default: keep the stage-1 tower frozen)")
    p.set_defaults(func=cmd_pretrain)
