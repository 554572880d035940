"""Run ``mmalign train`` for the given recipes inside a distributed launch.

Started by ``torchrun`` (or ``accelerate launch``) with several processes; each run writes to
``--out/METHOD``. ``ppo`` only records (from the main process) whether PPO refuses to start
under several processes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def check_ppo_refusal(out: Path) -> None:
    from mmalign.ppo import PPOConfig
    from mmalign.ppo.trainer import PPOTrainer

    args = PPOConfig(output_dir=str(out), max_steps=1, use_cpu=True, report_to="none")
    try:
        PPOTrainer(None, args, None, None, critics={"reward": None})
        refusal = None
    except ValueError as err:
        refusal = str(err)
    if args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({"world_size": args.world_size, "refusal": refusal}))


def main() -> None:
    from mmalign.cli import main as mmalign

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-batch", required=True)
    parser.add_argument("runs", nargs="+", help="METHOD=RECIPE pairs (dpo, sft, rm), or ppo")
    opts = parser.parse_args()
    for run in opts.runs:
        method, _, recipe = run.partition("=")
        out = Path(opts.out) / method
        if method == "ppo":
            check_ppo_refusal(out)
            continue
        mmalign(["train", method, "--config", recipe, "--output_dir", str(out),
                 "--per_device_train_batch_size", opts.per_device_batch])


if __name__ == "__main__":
    main()
