"""``mmalign train METHOD``, ``mmalign precompute-ref`` and ``mmalign export``."""

from __future__ import annotations

import argparse

from mmalign.cli.common import add_model_flags, add_output_flags, load_model
from mmalign.data_builders.storage import open_dataset
from mmalign.export import merge_adapter
from mmalign.io import DATASETS_FOLDER, atomic_dir, check_output

TRAIN_HELP = """\
Train with a recipe. Every option is a YAML key of the recipe and a --flag; flags
override the recipe. `mmalign train METHOD --help` lists the options of a method.

methods:
  sft    supervised fine-tuning on conversations (loss on assistant tokens only)
  dpo    preference optimisation: --loss_type sigmoid | ipo | hinge | robust | ddpo (RLHF-V Dense DPO)
  rm     Bradley-Terry reward model on helpfulness pairs; --use_facts for Fact-RLHF's factual RM
  cost   Safe RLHF cost model on safety pairs (cost > 0 = unsafe); --cost_signs label | graded
  ppo    PPO with a reward model (--reward_model_path), Fact-RLHF shaping with --shaping;
         a --cost_model_path is only scored and logged (unsafe rate), not constrained
  safe-ppo  Safe RLHF-V PPO-Lagrangian: also --cost_model_path and --cost_threshold (the budget)
  grpo   on-policy group RL (GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++) with reward functions:
         --reward_funcs object_f1 answer_match ... (verifiable visual rewards, reward_model, your own)
  safe-grpo  GRPO with a cost constrained by λ: also --cost_funcs cost_model --cost_model_path
"""


def _method_specs():
    from mmalign.dpo import DPOConfig, run_dpo
    from mmalign.grpo import GRPOConfig, run_grpo
    from mmalign.model_config import ModelConfig
    from mmalign.ppo import PPOConfig, run_ppo
    from mmalign.reward import RewardConfig, run_reward_model
    from mmalign.sft import SFTConfig, run_sft

    return {
        "sft": ((ModelConfig, SFTConfig), run_sft),
        "dpo": ((ModelConfig, DPOConfig), run_dpo),
        "rm": ((ModelConfig, RewardConfig), run_reward_model),
        "cost": ((ModelConfig, RewardConfig), run_reward_model),
        "ppo": ((ModelConfig, PPOConfig), run_ppo),
        "safe-ppo": ((ModelConfig, PPOConfig), run_ppo),
        "grpo": ((ModelConfig, GRPOConfig), run_grpo),
        "safe-grpo": ((ModelConfig, GRPOConfig), run_grpo),
    }


def cmd_train(args: argparse.Namespace) -> int:
    # imports transformers (0.5 s): not for --help
    from mmalign.config_io import parse_recipe
    from mmalign.online_rl import plot_rl_run

    types, run = _method_specs()[args.method]
    forced = {"cost": ["--kind", "cost"], "ppo": ["--lagrangian", "false"], "safe-ppo": ["--lagrangian", "true"],
              "safe-grpo": ["--lagrangian", "true"]}
    options = [*forced.get(args.method, []), *args.options]
    configs = parse_recipe(types, options, prog=f"mmalign train {args.method}")
    if args.method == "safe-ppo" and not configs[1].cost_model_path:
        raise ValueError("mmalign train safe-ppo: set cost_model_path (a trained cost model)")
    if args.method == "safe-grpo" and not configs[1].constrained:
        raise ValueError("mmalign train safe-grpo: set cost_funcs (e.g. cost_model with cost_model_path) and keep "
                         "lagrangian true")
    if args.method == "grpo" and configs[1].constrained:
        raise ValueError("mmalign train grpo: cost_funcs constrain the policy; use mmalign train safe-grpo "
                         "(or --lagrangian false to only log the cost)")
    out = run(*configs)
    if configs[1].process_index == 0:  # one line, also under torchrun / accelerate launch
        if args.method in ("ppo", "safe-ppo", "grpo", "safe-grpo"):  # curves for people; trainers write the log
            plot_rl_run(out, configs[1].cost_threshold if configs[1].constrained else None)
        print(f"training finished; final model in {out}")
    return 0


def cmd_precompute_ref(args: argparse.Namespace) -> int:
    from mmalign.dpo.reference import precompute_reference_logps

    inputs = (args.model, args.adapter, args.data)
    check_output(args.out, replaces=DATASETS_FOLDER, overwrite=args.overwrite, inputs=inputs)  # before loading
    pairs = open_dataset(args.data)  # a missing, empty or broken folder is refused before the model loads
    adapter = load_model(args)
    dataset = precompute_reference_logps(adapter, pairs, max_length=args.max_length, batch_size=args.batch_size)
    with atomic_dir(args.out, replaces=DATASETS_FOLDER, overwrite=args.overwrite, inputs=inputs) as tmp:
        dataset.save_to_disk(str(tmp))
    print(f"wrote {len(dataset)} pairs with reference log-probs to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if not args.merge:
        raise ValueError("mmalign export: only --merge is supported (fold LoRA into the base weights)")
    out = merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype,
                        trust_remote_code=args.trust_remote_code, overwrite=args.overwrite)
    print(f"merged checkpoint written to {out}")
    return 0


def cmd_accelerate_config(args: argparse.Namespace) -> int:
    # imports transformers (0.5 s): not for --help
    from mmalign.config_io import accelerate_config_path

    print(accelerate_config_path(args.name))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with a recipe (sft, dpo, rm, cost, ppo, safe-ppo, grpo, safe-grpo)", description=TRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["sft", "dpo", "rm", "cost", "ppo", "safe-ppo", "grpo", "safe-grpo"], help="training method")
    p.add_argument("options", nargs=argparse.REMAINDER, help="--config FILE and --option value pairs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("accelerate-config", help="path of a shipped accelerate config (ddp, fsdp, deepspeed-zero2|3)",
                       description="Print the path of an accelerate config shipped with mmalign, for "
                       "`accelerate launch --config_file $(mmalign accelerate-config ddp) -m mmalign train dpo ...`. "
                       "Shipped: ddp, fsdp, deepspeed-zero2, deepspeed-zero3.")
    p.add_argument("name", help="config name (or a path, printed back if it exists)")
    p.set_defaults(func=cmd_accelerate_config)

    p = sub.add_parser("precompute-ref", help="store reference per-token log-probs with a preference dataset",
                       description="Run the frozen reference once over a preference dataset and save a copy "
                       "with ref_chosen_logps / ref_rejected_logps columns (per token, so Dense DPO's gamma "
                       "can change later). Train on it and the reference forward is skipped.")
    p.add_argument("--model", required=True, help="reference model: card name, hub id or folder")
    p.add_argument("--data", required=True, help="preference dataset folder")
    p.add_argument("--out", required=True, help="output dataset folder")
    add_output_flags(p)
    p.add_argument("--max-length", type=int, default=2048, help="same max_length as training (default: 2048)")
    p.add_argument("--batch-size", type=int, default=8)
    # 4-bit compute dtype bfloat16 (not --dtype as elsewhere): this command's default before the flags
    # were shared, and the shipped 7B recipes' bnb_4bit_compute_dtype, whose reference it stores
    add_model_flags(p, what="the reference", compute_dtype="bfloat16", adapter=True)
    p.set_defaults(func=cmd_precompute_ref)

    p = sub.add_parser("export", help="merge a LoRA adapter into its base for deployment",
                       description="Write a standard transformers checkpoint (safetensors) with the "
                       "adapter folded into the base weights; it loads with from_pretrained alone.")
    p.add_argument("--merge", action="store_true", help="fold the LoRA weights into the base")
    p.add_argument("--base", required=True, help="base model: card name, hub id or folder")
    p.add_argument("--adapter", required=True, help="PEFT adapter folder")
    p.add_argument("--out", required=True, help="output folder")
    add_output_flags(p)
    add_model_flags(p, what="the merged checkpoint", quantize=False, device_map=False, title=None)
    p.set_defaults(func=cmd_export)
