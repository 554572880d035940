"""What every mmalign trainer shares: loss-only evaluation and the train-and-save routine."""

from __future__ import annotations

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
