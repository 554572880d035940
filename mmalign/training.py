"""What every mmalign trainer shares: loss-only evaluation and the train-and-save routine."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch


class LossOnlyEvaluation:
    """Mixin for ``transformers.Trainer``: evaluation reports the training loss only.

    Our batches are adapter features, not model kwargs with labels, so Trainer's default
    prediction step (which calls the model itself) does not apply.
    """

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class StepMetrics:
    """Mixin for ``transformers.Trainer``: per-step metrics averaged into each log line.

    ``record_metrics`` gathers all of a step's metrics across processes in one collective;
    ``log`` adds their means since the last log (NaN entries, e.g. a metric with nothing to
    measure in a batch, are left out) under the train or ``eval_`` prefix.
    """

    def _init_metrics(self) -> None:
        self._stats: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def record_metrics(self, model, values: dict[str, torch.Tensor]) -> None:
        stats = self._stats["train" if model.training else "eval"]
        local = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        gathered = self.accelerator.gather_for_metrics(local).reshape(-1, len(values)).nanmean(0)
        for name, value in zip(values, gathered.tolist()):
            stats[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._stats[mode].items():
            finite = [v for v in values if v == v]
            if finite:
                logs[prefix + name] = sum(finite) / len(finite)
        self._stats[mode].clear()
        super().log(logs, start_time)


def train_and_save(trainer, *configs: Any) -> Path:
    """Train (resuming if asked) and write the final model atomically to ``output_dir/final``.

    The resolved configuration goes next to the checkpoints before training starts and
    into the final folder, so every result can be reproduced.
    """
    from mmalign.config_io import write_resolved_config
    from mmalign.io import atomic_dir

    args = trainer.args
    out = Path(args.output_dir)
    write_resolved_config(out / "mmalign_config.yaml", *configs)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    with atomic_dir(out / "final") as tmp:
        trainer.save_model(str(tmp))
        # Trainer also pickles its arguments; the final folder keeps safetensors and YAML only.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        write_resolved_config(tmp / "mmalign_config.yaml", *configs)
    return out / "final"
