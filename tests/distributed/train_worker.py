"""Train a tiny model for a few steps and record its losses, logged metrics and LoRA weights.

Run directly (one process) or under ``torchrun --nproc_per_node N`` (DDP over gloo); the
process of rank 0 writes ``METHOD/log.json`` and ``METHOD/lora.safetensors`` under ``--out``.
``ppo`` only records whether PPO refuses to start under several processes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Plain SGD: a step is the averaged gradient times the rate, so the comparison checks DDP's
# gradient averaging itself. (AdamW divides by sqrt(v): float rounding in near-zero gradient
# entries then shows up as differences of a few 1e-5 in single weights.)
OPTIMIZER, LEARNING_RATE = "sgd", 0.1


def train(method: str, model: str, data: str, out: Path, per_device_batch: int, steps: int) -> None:
    from safetensors.torch import save_file
    from transformers import set_seed

    from mmalign.model_config import ModelConfig

    out.mkdir(parents=True, exist_ok=True)
    common = dict(output_dir=str(out / "run"), per_device_train_batch_size=per_device_batch, max_steps=steps,
                  optim=OPTIMIZER, learning_rate=LEARNING_RATE, logging_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, seed=0, dataloader_num_workers=0)
    if method == "ppo":
        from mmalign.ppo import PPOConfig
        from mmalign.ppo.trainer import PPOTrainer

        args = PPOConfig(**common, rollout_batch_size=per_device_batch)
        try:
            PPOTrainer(None, args, None, None, critics={"reward": None})
            refusal = None
        except ValueError as err:
            refusal = str(err)
        if args.process_index == 0:
            (out / "log.json").write_text(json.dumps({"world_size": args.world_size, "refusal": refusal}))
        return

    set_seed(0)
    adapter = ModelConfig(model_name_or_path=model, lora_r=4, lora_dropout=0.0).load()
    if method == "dpo":
        from mmalign.data_builders.storage import load_preference_dataset
        from mmalign.dpo import DPOConfig, DPOTrainer

        trainer = DPOTrainer(adapter, DPOConfig(**common, max_length=256),
                             train_dataset=load_preference_dataset(data))
    else:
        from mmalign.data_builders.sft import load_sft_dataset
        from mmalign.sft import SFTConfig, SFTTrainer

        trainer = SFTTrainer(adapter, SFTConfig(**common, max_length=256), train_dataset=load_sft_dataset(data))
    trainer.train()
    if trainer.is_world_process_zero():
        steps_logged = [{k: v for k, v in e.items() if isinstance(v, float)}
                        for e in trainer.state.log_history if "loss" in e]
        (out / "log.json").write_text(json.dumps({"world_size": trainer.args.world_size, "steps": steps_logged}))
        lora = {n: p.detach().cpu().contiguous() for n, p in adapter.model.named_parameters() if "lora_" in n}
        save_file(lora, out / "lora.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("runs", nargs="+", help="METHOD=DATA pairs (method: dpo, sft, ppo)")
    opts = parser.parse_args()
    for run in opts.runs:
        method, data = run.split("=", 1)
        train(method, opts.model, data, Path(opts.out) / method, opts.per_device_batch, opts.steps)


if __name__ == "__main__":
    main()
