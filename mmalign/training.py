"""What every mmalign trainer shares: loss-only evaluation, per-step metrics, the guard
against non-finite steps, checkpoint validation for resuming, and the train-and-save routine."""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from mmalign.io import OutputKind

logger = logging.getLogger(__name__)

NONFINITE_LOG_KEY = "nonfinite/skipped_steps"
RESUME_LATEST = ("auto", "latest", "true")


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
        # plain gather: gather_for_metrics would cut a short last batch's tensor to the batch size
        gathered = self.accelerator.gather(local).reshape(-1, len(values)).nanmean(0)
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


@dataclass
class GuardArguments:
    """Training options of the non-finite guard, mixed into every trainer's config."""

    max_nonfinite_steps: int = field(
        default=3,
        metadata={"help": "Stop (after saving a checkpoint) once this many optimizer steps in a row had a NaN/inf "
                  "loss or gradient; such steps are always skipped. 0: never stop."},
    )


class NonFiniteTrainingError(RuntimeError):
    """Training stopped because too many consecutive steps had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Mixin for ``transformers.Trainer``: a step with a NaN / inf loss or gradient is skipped.

    One bad batch (an overflow, a degenerate pair) must not poison the LoRA weights and the
    Adam moments for the rest of the run. Before each optimizer step the guard checks the
    step's losses and the (already all-reduced) gradients; if any is not finite on any
    process, every gradient is dropped so the optimizer leaves weights and moments untouched.
    Skipped steps still count as steps (the schedule moves on). The running count is logged
    as ``nonfinite/skipped_steps``; after ``max_nonfinite_steps`` bad steps in a row a
    checkpoint of the last good weights is saved and :class:`NonFiniteTrainingError` raised.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.nonfinite_skipped = 0
        self.nonfinite_consecutive = 0
        self._nonfinite_flag = torch.zeros((), dtype=torch.bool)
        self.nonfinite_stop_message: str | None = None
        if self.is_deepspeed_enabled:
            # the engine keeps the gradients and steps inside backward: nothing here could skip a step
            logger.warning("non-finite guard off under DeepSpeed (its fp16 loss scaling skips overflowing steps)")
        else:
            self.add_callback(_NonFiniteCallback(self))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # a tensor flag: no device sync per micro-batch, one check per optimizer step
        self._nonfinite_flag = self._nonfinite_flag.to(loss.device) | ~torch.isfinite(loss.detach()).all()
        return loss

    def skip_if_nonfinite(self, model: torch.nn.Module) -> bool:
        """Drop this step's gradients if its loss or any gradient is not finite; True if skipped."""
        bad = self._nonfinite_flag.to(self.args.device).float()
        bad = torch.maximum(bad, nonfinite_gradients(model).float().to(bad.device))
        if self.accelerator.num_processes > 1:  # one decision for all processes (sharded grads, local losses)
            bad = self.accelerator.reduce(bad.reshape(1), reduction="sum")
        self._nonfinite_flag = torch.zeros((), dtype=torch.bool)
        if not bool(bad.sum() > 0):
            self.nonfinite_consecutive = 0
            return False
        drop_gradients(model)
        self.nonfinite_skipped += 1
        self.nonfinite_consecutive += 1
        logger.warning("step %d: non-finite loss or gradient, optimizer step skipped (%d in a row, %d in total)",
                       self.state.global_step + 1, self.nonfinite_consecutive, self.nonfinite_skipped)
        return True

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not any(k.startswith("eval_") for k in logs):
            logs[NONFINITE_LOG_KEY] = self.nonfinite_skipped
        super().log(logs, start_time)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded (DTensor) gradient; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def nonfinite_gradients(model: torch.nn.Module) -> torch.Tensor:
    """A 0-dim bool tensor: does any gradient hold a NaN / inf? (No device sync.)

    FSDP 2 keeps each process's shard as a DTensor: the local part is checked, and callers
    decide together across processes.
    """
    grads = [_local(p.grad) for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.bool)
    return ~torch.isfinite(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])).all()


def drop_gradients(model: torch.nn.Module) -> None:
    """Forget this step's gradients, so the optimizer step leaves weights and moments untouched."""
    for p in model.parameters():
        p.grad = None


class _NonFiniteCallback(TrainerCallback):
    """Runs the guard right before each optimizer step; saves and stops after too many bad steps."""

    def __init__(self, trainer: NonFiniteGuard):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.skip_if_nonfinite(self.trainer.model)

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        limit = getattr(args, "max_nonfinite_steps", 3)
        if limit and trainer.nonfinite_consecutive >= limit and trainer.nonfinite_stop_message is None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            trainer.nonfinite_stop_message = (
                f"training stopped at step {state.global_step}: {trainer.nonfinite_consecutive} optimizer steps in "
                f"a row had a NaN/inf loss or gradient (max_nonfinite_steps={limit}); every one was skipped, so "
                f"{checkpoint} holds the last good weights. Check the data and lower the learning rate, then "
                f"resume with --resume_from_checkpoint {checkpoint}"
            )
            control.should_log = control.should_save = control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer.nonfinite_stop_message:
            raise NonFiniteTrainingError(self.trainer.nonfinite_stop_message)


# ---------------------------------------------------------------------- checkpoints and resume
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILES = ("trainer_state.json", "ppo_state.json")
#: What ``train_and_save`` replaces at ``output_dir/final``: an earlier final model (it
#: always holds the run's resolved configuration).
FINAL = OutputKind("final model of a training run", ("mmalign_config.yaml",))


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unreadable (truncated, bad header), or None; reads the header only."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return "truncated header"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return "unreadable header"
    ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    if 8 + length + max(ends, default=0) != size:
        return f"{size} bytes, the header describes {8 + length + max(ends, default=0)}"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """What makes a checkpoint folder unusable for resuming, or None if it looks complete.

    A checkpoint killed while being written lacks its state file (written last) or has a
    truncated weights, optimiser or state file: state and weights must exist, every JSON
    must parse, every safetensors file must match its header and every torch file must be
    a complete zip archive. Only headers and directories are read, so this is fast.
    """
    path = Path(path)
    if not path.is_dir():
        return "not a folder"
    if not any((path / name).is_file() for name in STATE_FILES):
        return f"no {' or '.join(STATE_FILES)}"
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not any(p.suffix == ".safetensors" for p in files):
        return "no weights (.safetensors)"
    for p in files:
        name = p.relative_to(path).as_posix()
        if p.suffix == ".json":
            try:
                json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError):
                return f"{name} is not valid JSON"
        elif p.suffix == ".safetensors":
            problem = _safetensors_problem(p)
            if problem:
                return f"{name}: {problem}"
        elif p.suffix in (".pt", ".pth", ".bin"):
            try:
                with zipfile.ZipFile(p):
                    pass
            except (zipfile.BadZipFile, OSError):
                return f"{name} is truncated or not a torch archive"
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of a run, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that passes :func:`checkpoint_problem`; broken ones are logged and skipped."""
    for checkpoint in list_checkpoints(output_dir):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("checkpoint %s is incomplete or corrupt (%s); trying the previous one", checkpoint, problem)
    return None


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """The checkpoint to resume from: ``auto`` picks the newest valid one in ``output_dir``
    (none: start from scratch); a path must be a valid checkpoint."""
    if value is None or value is False or value == "":
        return None
    if value is True or str(value).lower() in RESUME_LATEST:
        checkpoint = latest_valid_checkpoint(output_dir)
        if checkpoint is None:
            logger.warning("no valid checkpoint in %s: training from the start", output_dir)
            return None
        logger.warning("resuming from %s", checkpoint)
        return str(checkpoint)
    problem = checkpoint_problem(value)
    if problem:
        raise ValueError(f"cannot resume from {value}: {problem}")
    return str(value)


def _input_paths(configs: tuple[Any, ...]) -> list[Any]:
    """The paths a run reads (model, adapter, datasets, reward / cost / reference models)."""
    return [value for config in configs for name, value in vars(config).items()
            if (name == "model_name_or_path" or name.endswith("_path")) and isinstance(value, str | Path)]


def train_and_save(trainer, *configs: Any) -> Path:
    """Train (resuming if asked) and write the final model atomically to ``output_dir/final``.

    ``resume_from_checkpoint`` is a checkpoint folder or ``auto`` (the newest valid
    checkpoint in ``output_dir``, skipping any left half-written by a crash).

    The resolved configuration goes next to the checkpoints before training starts and
    into the final folder, so every result can be reproduced. ``output_dir/final`` is
    checked before training: it may be missing, empty or an earlier final model (replaced),
    never one of the run's inputs or a folder holding anything else
    (:class:`mmalign.io.OutputError`). Temporary folders of the final model left by a
    killed run are removed when it is written.
    """
    from mmalign.config_io import write_resolved_config
    from mmalign.io import atomic_dir, check_output

    args = trainer.args
    out = Path(args.output_dir)
    main = trainer.is_world_process_zero()  # under DDP / FSDP / DeepSpeed one process writes files
    inputs = _input_paths(configs)
    if main:
        check_output(out / "final", replaces=FINAL, inputs=inputs)
        write_resolved_config(out / "mmalign_config.yaml", *configs)
    trainer.train(resume_from_checkpoint=resolve_resume(args.resume_from_checkpoint, out))
    # Every process takes part in save_model (sharded weights are gathered); only the main one writes.
    with atomic_dir(out / "final", replaces=FINAL, inputs=inputs) if main else nullcontext(None) as tmp:
        trainer.save_model(str(tmp) if main else None)
        if main:
            # Trainer also pickles its arguments; the final folder keeps safetensors and YAML only.
            (tmp / "training_args.bin").unlink(missing_ok=True)
            write_resolved_config(tmp / "mmalign_config.yaml", *configs)
    trainer.accelerator.wait_for_everyone()
    return out / "final"
