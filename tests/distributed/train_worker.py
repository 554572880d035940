"""Run ``mmalign train`` for the given recipes inside a distributed launch.

Started by ``torchrun`` (or ``accelerate launch``) with several processes; each run writes to
``--out/METHOD``. ``ppo`` runs PPO-Lagrangian through the Python API and every process
records its multiplier, cost window, log and weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PPO_COLORS = ("red", "blue", "green", "yellow")


def run_ppo(model: str, scorers: str, out: Path) -> None:
    """Two iterations of PPO-Lagrangian; every process writes its λ, cost window, log, prompts and weights."""
    from datasets import Dataset
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import set_seed

    from mmalign.model_config import ModelConfig
    from mmalign.ppo import PPOConfig, PPOTrainer, build_models

    args = PPOConfig(output_dir=str(out / "run"), reward_model_path=f"{scorers}/reward", cost_model_path=f"{scorers}/cost",
                     rollout_batch_size=4, per_device_train_batch_size=1, per_device_eval_batch_size=2, max_steps=2,
                     max_new_tokens=4, report_to="none", use_cpu=True, learning_rate=1e-2, save_strategy="no",
                     max_length=256, seed=0, lambda_lr=0.5, cost_threshold=0.0)
    prompts = Dataset.from_dict({
        "images": [[Image.new("RGB", (32, 32), color)] for color in PPO_COLORS],
        "prompt": ["is there a cat?", "describe the image.", "is there a dog?", "what color is it?"],
    })
    set_seed(args.seed)
    adapter, reward, cost, critics = build_models(
        ModelConfig(model_name_or_path=model, lora_r=4, lora_alpha=8, lora_dropout=0.0), args)
    trainer = PPOTrainer(adapter, args, prompts, reward, cost, critics)
    first_batch = [row["prompt"] for row in next(trainer._prompt_batches(0))]
    trainer.train()
    rank = args.process_index
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world_size": args.world_size, "lambda": trainer.log_lambda.exp().item(),
        "cost_window": list(trainer.cost_window), "log": trainer.state.log_history, "first_batch": first_batch}))
    weights = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}
    save_file(weights, out / f"rank{rank}.safetensors")


def main() -> None:
    from mmalign.cli import main as mmalign

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-batch", required=True)
    parser.add_argument("--model", required=True, help="base model of the PPO run")
    parser.add_argument("runs", nargs="+", help="METHOD=RECIPE pairs (dpo, sft, rm), or ppo=SCORERS (folder with reward/ and cost/)")
    opts = parser.parse_args()
    for run in opts.runs:
        method, _, recipe = run.partition("=")
        out = Path(opts.out) / method
        if method == "ppo":
            run_ppo(opts.model, recipe, out)
            continue
        mmalign(["train", method, "--config", recipe, "--output_dir", str(out),
                 "--per_device_train_batch_size", opts.per_device_batch])


if __name__ == "__main__":
    main()
