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


@dataclass
class ResumeArguments:
    """Training option of resuming, mixed into every trainer's config."""

    resume_with_changes: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint written with different settings that shape the training "
                  "(learning rate, schedule, batch sizes, seeds, loss settings, data, model...): the log lists "
                  "what is kept from the checkpoint and what changes. Without it such a resume is refused."},
    )


#: ``seed`` / ``data_seed`` feed ``numpy.random.seed``, which takes 0 ... 2**32 - 1
MAX_SEED = 2**32 - 1


def check_training_arguments(args: Any, c: Any) -> None:
    """Type and range of the ``TrainingArguments`` options every mmalign trainer uses, of the
    guard and of resuming, filed into ``c`` (an :class:`~mmalign.config_io.OptionChecks`).

    Runs before ``TrainingArguments.__post_init__``, which accepts a negative learning rate,
    a batch size of 0 or a NaN weight decay and would train on them.
    """
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    c.text("output_dir", optional=True)
    c.rule(args.output_dir != "", "output_dir", "output_dir must not be empty")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        c.number(name, 1, integer=True)
    c.number("max_steps", 1, integer=True, also=(-1,))
    c.number("num_train_epochs", 0)
    if args.max_steps == -1:
        c.number("num_train_epochs", 0, low_open=True)
    c.number("learning_rate", 0, low_open=True)
    c.number("warmup_steps", 0)
    c.number("weight_decay", 0)
    c.number("adam_beta1", 0, 1, high_open=True)
    c.number("adam_beta2", 0, 1, high_open=True)
    c.number("adam_epsilon", 0, low_open=True)
    c.number("max_grad_norm", 0, optional=True)
    c.number("seed", 0, MAX_SEED, integer=True)
    c.number("data_seed", 0, MAX_SEED, integer=True, optional=True)
    c.number("logging_steps", 0, low_open=True)
    c.number("save_steps", 0, low_open=True)
    c.number("eval_steps", 0, low_open=True, optional=True)
    c.number("save_total_limit", 0, integer=True, optional=True)
    c.number("dataloader_num_workers", 0, integer=True)
    c.choice("save_strategy", SaveStrategy)
    c.choice("eval_strategy", IntervalStrategy)
    c.choice("logging_strategy", IntervalStrategy)
    c.choice("lr_scheduler_type", SchedulerType)
    c.choice("optim", OptimizerNames)
    c.rule(args.label_smoothing_factor == 0, "label_smoothing_factor",
           "label_smoothing_factor must be 0: mmalign's losses do not use it (DPO's label noise is "
           f"label_smoothing), got {args.label_smoothing_factor!r}")
    c.flag("remove_unused_columns")
    c.rule(args.remove_unused_columns is False, "remove_unused_columns",
           "remove_unused_columns must be false: the collators read the image and text columns")
    c.number("max_nonfinite_steps", 0, integer=True)
    c.flag("resume_with_changes")
    c.rule(isinstance(args.resume_from_checkpoint, str | bool | None), "resume_from_checkpoint",
           f"resume_from_checkpoint must be a checkpoint folder or auto, got {args.resume_from_checkpoint!r}")


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
                f"resume with --resume_from_checkpoint {checkpoint} --resume_with_changes true"
            )
            control.should_log = control.should_save = control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer.nonfinite_stop_message:
            raise NonFiniteTrainingError(self.trainer.nonfinite_stop_message)


# ---------------------------------------------------------------------- checkpoints and resume
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILES = ("trainer_state.json", "ppo_state.json", "grpo_state.json")
#: Every checkpoint (and the final folder) holds the resolved configuration of the run that wrote it.
RUN_CONFIG_FILE = "mmalign_config.yaml"
#: What ``train_and_save`` replaces at ``output_dir/final``: an earlier final model (it
#: always holds the run's resolved configuration).
FINAL = OutputKind("final model of a training run", (RUN_CONFIG_FILE,))


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
    (none: start from scratch); a path must be a valid checkpoint. Settings are not compared
    here: :func:`plan_resume` does that."""
    return plan_resume(value, output_dir).checkpoint


# ---------------------------------------------------------------------- resuming with the same settings

#: Options that may differ between a checkpoint and the run resuming from it: they change
#: what is logged, saved, evaluated or how fast, not what is trained.
HARMLESS_ON_RESUME = frozenset({
    # where and what is logged
    "output_dir", "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm", "report_to", "run_name", "project",
    "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "skip_memory_metrics",
    "include_num_input_tokens_seen", "debug",
    # saving and pushing
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
    "enable_jit_checkpoint", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_always_push", "hub_revision",
    # evaluation
    "eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "eval_accumulation_steps",
    "eval_do_concat_batches", "eval_use_gather_object", "eval_dataset_path", "per_device_eval_batch_size",
    "prediction_loss_only", "batch_eval_metrics", "include_for_metrics", "metric_for_best_model",
    "greater_is_better", "load_best_model_at_end", "do_train", "do_eval", "do_predict",
    # resuming itself
    "resume_from_checkpoint", "resume_with_changes", "restore_callback_states_from_checkpoint",
    "ignore_data_skip", "max_nonfinite_steps",
    # speed and memory: the same result, computed differently
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "torch_empty_cache_steps",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "activation_checkpointing",
    "activation_checkpointing_kwargs", "cache_image_features", "image_feature_cache_dir", "share_prefix",
    "precompute_ref_logps", "attn_implementation",
    # the machine and the process group
    "use_cpu", "local_rank", "ddp_timeout", "ddp_backend", "ddp_find_unused_parameters", "ddp_bucket_cap_mb",
    "ddp_broadcast_buffers", "ddp_static_graph", "trust_remote_code",
})

#: Options whose change makes a checkpoint's weights not fit the model: a resume is refused
#: even with ``resume_with_changes``.
STRUCTURAL_ON_RESUME = frozenset({"use_peft", "lora_r", "lora_target_modules", "train_projector", "train_vision",
                                  "lagrangian", "critic_from_reward"})

#: What a Trainer checkpoint carries into a resumed run.
TRAINER_KEEPS = ("the trained weights, the optimizer state (Adam moments), the step count (the schedule "
                 "continues from that step), the position in the data and the random state")


@dataclass
class ResumePlan:
    """Where a run resumes from and which of its settings differ from the checkpoint's
    (``option -> (checkpoint's value, this run's value)``, allowed by ``resume_with_changes``)."""

    checkpoint: str | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def stored_run_config(checkpoint: str | Path) -> dict[str, Any] | None:
    """The resolved configuration a checkpoint was written with, or ``None`` (written by
    mmalign before checkpoints recorded it)."""
    import yaml

    path = Path(checkpoint) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot resume from {checkpoint}: {RUN_CONFIG_FILE} is unreadable ({err})") from None
    if not isinstance(stored, dict):
        raise ValueError(f"cannot resume from {checkpoint}: {RUN_CONFIG_FILE} is not a mapping")
    return stored


def _short(value: Any) -> str:
    text = "null" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``learning_rate 0.01 → 0.005, seed 3 → 4``."""
    return ", ".join(f"{name} {_short(old)} → {_short(new)}" for name, (old, new) in changes.items())


def setting_differences(stored: dict[str, Any], config: dict[str, Any],
                        checked: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """The options that shape training and differ between a checkpoint's configuration and
    this run's: every option both record except :data:`HARMLESS_ON_RESUME` (``checked``
    names harmless ones that matter to a method, e.g. PPO's generation batch)."""
    harmless = HARMLESS_ON_RESUME - set(checked)
    return {name: (stored[name], config[name]) for name in sorted(stored.keys() & config.keys())
            if name not in harmless and stored[name] != config[name]}


def plan_resume(value: str | bool | None, output_dir: str | Path, config: dict[str, Any] | None = None, *,
                allow_changes: bool = False, checked: tuple[str, ...] = (),
                keeps: str = TRAINER_KEEPS) -> ResumePlan:
    """The checkpoint to resume from, with its settings compared to this run's ``config``
    (a :func:`~mmalign.config_io.resolved_config`; ``None``: no comparison).

    ``auto`` picks the newest valid checkpoint in ``output_dir`` (none: start from scratch);
    a path must be a valid checkpoint. If options that shape training differ
    (:func:`setting_differences`), the resume is refused with a ``ValueError`` listing each
    one (checkpoint's value → this run's), also under ``auto``: a checkpoint of another run
    in the same folder is never picked silently, and the run does not silently start over
    either. ``allow_changes`` (``--resume_with_changes``) resumes anyway and logs what is
    kept from the checkpoint (``keeps``) and what changes; options of
    :data:`STRUCTURAL_ON_RESUME` (the weights would not fit) are refused even then. A
    checkpoint that records no settings (written before they were recorded) resumes with
    a warning.
    """
    if value is None or value is False or value == "":
        return ResumePlan()
    auto = value is True or str(value).lower() in RESUME_LATEST
    if auto:
        found = latest_valid_checkpoint(output_dir)
        if found is None:
            logger.warning("no valid checkpoint in %s: training from the start", output_dir)
            return ResumePlan()
        checkpoint = str(found)
    else:
        problem = checkpoint_problem(value)
        if problem:
            raise ValueError(f"cannot resume from {value}: {problem}")
        checkpoint = str(value)
    named = f"{checkpoint} (the newest checkpoint in {output_dir})" if auto else checkpoint
    stored = stored_run_config(checkpoint) if config is not None else None
    if config is not None and stored is None:
        logger.warning("resuming from %s, which does not record the settings it was written with (an older "
                       "mmalign): they are not compared with this run's", checkpoint)
        return ResumePlan(checkpoint)
    changes = setting_differences(stored, config, checked) if stored is not None else {}
    structural = {k: v for k, v in changes.items() if k in STRUCTURAL_ON_RESUME}
    if structural:
        raise ValueError(f"cannot resume from {named}: its weights do not fit this run's model "
                         f"({format_changes(structural)}); train from the start in another output_dir")
    if changes and not allow_changes:
        raise ValueError(
            f"cannot resume from {named}: it was written with different settings: {format_changes(changes)}. "
            "Resume with the new settings anyway with --resume_with_changes true, or train from the start "
            "in another output_dir")
    if changes:
        logger.warning("resuming from %s with changed settings (resume_with_changes): kept from the checkpoint: "
                       "%s; changed from the next step on: %s", checkpoint, keeps, format_changes(changes))
    else:
        logger.warning("resuming from %s", checkpoint)
    return ResumePlan(checkpoint, changes)


def run_resume_plan(*configs: Any, checked: tuple[str, ...] = (), keeps: str = TRAINER_KEEPS) -> ResumePlan:
    """:func:`plan_resume` for a run of ``configs`` (the last one its training arguments),
    called before the model loads so a refused resume costs nothing."""
    from mmalign.config_io import resolved_config

    args = configs[-1]
    return plan_resume(args.resume_from_checkpoint, args.output_dir, resolved_config(*configs),
                       allow_changes=bool(getattr(args, "resume_with_changes", False)), checked=checked, keeps=keeps)


def require_paths(model_config: Any, args: Any, *names: str) -> None:
    """The inputs a run cannot do without (the model, and ``names`` of ``args``), checked
    before anything loads: one ``ValueError`` naming every one that is not set."""
    missing = [name for name in ("model_name_or_path",) if not getattr(model_config, name)]
    missing += [name for name in names if not getattr(args, name)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                         f"(a recipe key, or --{missing[0]} on the command line)")
    if hasattr(model_config, "card"):
        model_config.card()  # the model exists and is supported (its config only, nothing loads)


def use_new_learning_rate(optimizer: Any, scheduler: Any, learning_rate: float) -> None:
    """After a resume with a changed ``learning_rate``: the restored scheduler holds the
    checkpoint's base rate; put the new one in its place, at the schedule's current step."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if not hasattr(scheduler, "base_lrs"):
        logger.warning("the %s scheduler keeps the checkpoint's learning rate", type(scheduler).__name__)
        return
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * (lambdas[i](scheduler.last_epoch) if lambdas else 1.0)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def model_keys(model: Any, checkpoint_keys: list[str]) -> dict[str, str]:
    """Checkpoint key → the model's own key, renamed as ``from_pretrained`` renames them.

    ``save_pretrained`` writes some models under their original key names (a LLaVA's
    ``language_model.model.*`` for the model's ``model.language_model.*``). A key that would
    need a tensor conversion (fused or split weights) is kept, so it shows up as unmatched."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:  # a transformers without weight conversions saves the model's own keys
        return {key: key for key in checkpoint_keys}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    own = dict.fromkeys(model.state_dict())
    renamed = {}
    for key in checkpoint_keys:
        new, converter = rename_source_key(key, renamings, converters, model.base_model_prefix, own)
        renamed[key] = key if converter is not None or (new not in own and key in own) else new
    return renamed


class ResumesFullModels:
    """Mixin for ``transformers.Trainer``: resuming a fully fine-tuned model loads its weights.

    ``Trainer`` loads a full model's checkpoint with a non-strict ``load_state_dict`` on the
    saved key names; for models that ``save_pretrained`` writes under their original names
    (LLaVA, Qwen2-VL, ...) nothing matches, only a warning is logged, and training would go
    on from the starting weights with the restored optimizer. Here the keys are renamed as
    ``from_pretrained`` does, shard by shard, and any weight left unloaded is an error.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from peft import PeftModel
        from safetensors.torch import load_file

        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = [folder / "model.safetensors"]
        if isinstance(model, PeftModel) or self.is_fsdp_enabled or not all(f.is_file() for f in files):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        missing = set(model.state_dict())
        unexpected: list[str] = []
        for file in files:
            weights = load_file(file, device="cpu")
            renamed = model_keys(model, list(weights))
            result = model.load_state_dict({renamed[k]: v for k, v in weights.items()}, strict=False)
            missing -= {renamed[k] for k in weights} - set(result.unexpected_keys)
            unexpected += result.unexpected_keys
        model.tie_weights()
        missing -= tied_keys(model)
        if missing or unexpected:
            raise ValueError(f"cannot resume from {folder}: its weights do not match the model (missing: "
                             f"{sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})")


def tied_keys(model: Any) -> set[str]:
    """State-dict keys that share their tensor with an earlier key (a tied LM head), which
    ``save_pretrained`` leaves out."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.data_ptr() in seen:
            tied.add(name)
        seen.setdefault(tensor.data_ptr(), name)
    return tied


class RecordsRunConfig:
    """Mixin for ``transformers.Trainer``: every checkpoint records the run's settings.

    ``save_model`` writes :data:`RUN_CONFIG_FILE` beside the weights; inside a checkpoint
    that happens before ``trainer_state.json``, so a checkpoint that counts as complete
    always has it. ``run_config`` is the resolved configuration (:func:`train_and_save` sets
    model and training options; otherwise the training arguments alone); ``resume_changes``
    the settings a resume changed (:class:`ResumePlan`): a new ``learning_rate`` replaces the
    checkpoint's when the optimizer and scheduler are restored.
    """

    run_config: dict[str, Any] | None = None
    resume_changes: dict[str, tuple[Any, Any]] = {}  # replaced, never mutated

    def write_run_config(self, folder: str | Path) -> None:
        import yaml

        from mmalign.config_io import resolved_config
        from mmalign.io import atomic_write_text

        config = self.run_config if self.run_config is not None else resolved_config(self.args)
        atomic_write_text(Path(folder) / RUN_CONFIG_FILE, yaml.safe_dump(config, sort_keys=True))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.write_run_config(output_dir or self.args.output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint and "learning_rate" in self.resume_changes:
            use_new_learning_rate(self.optimizer, self.lr_scheduler, self.args.learning_rate)


def _input_paths(configs: tuple[Any, ...]) -> list[Any]:
    """The paths a run reads (model, adapter, datasets, reward / cost / reference models)."""
    return [value for config in configs for name, value in vars(config).items()
            if (name == "model_name_or_path" or name.endswith("_path")) and isinstance(value, str | Path)]


def train_and_save(trainer, *configs: Any, resume: ResumePlan | None = None) -> Path:
    """Train (resuming if asked) and write the final model atomically to ``output_dir/final``.

    ``resume_from_checkpoint`` is a checkpoint folder or ``auto`` (the newest valid
    checkpoint in ``output_dir``, skipping any left half-written by a crash); ``resume``
    is that choice made already (:func:`run_resume_plan`, which the ``run_*`` functions call
    before loading the model), else it is made here, before anything is written. A
    checkpoint written with other settings is refused unless ``resume_with_changes``.

    The resolved configuration goes next to the checkpoints before training starts and
    into the final folder, so every result can be reproduced. ``output_dir/final`` is
    checked before training: it may be missing, empty or an earlier final model (replaced),
    never one of the run's inputs or a folder holding anything else
    (:class:`mmalign.io.OutputError`). Temporary folders of the final model left by a
    killed run are removed when it is written.
    """
    from mmalign.config_io import resolved_config, write_resolved_config
    from mmalign.io import atomic_dir, check_output

    args = trainer.args
    out = Path(args.output_dir)
    main = trainer.is_world_process_zero()  # under DDP / FSDP / DeepSpeed one process writes files
    if resume is None:
        resume = run_resume_plan(*configs)  # refuses a mismatched checkpoint before anything is written
    trainer.run_config = resolved_config(*configs)  # recorded in every checkpoint (RecordsRunConfig)
    trainer.resume_changes = resume.changes
    inputs = _input_paths(configs)
    if main:
        check_output(out / "final", replaces=FINAL, inputs=inputs)
        write_resolved_config(out / RUN_CONFIG_FILE, *configs)
    trainer.train(resume_from_checkpoint=resume.checkpoint)
    # Every process takes part in save_model (sharded weights are gathered); only the main one writes.
    with atomic_dir(out / "final", replaces=FINAL, inputs=inputs) if main else nullcontext(None) as tmp:
        trainer.save_model(str(tmp) if main else None)
        if main:
            # Trainer also pickles its arguments; the final folder keeps safetensors and YAML only.
            (tmp / "training_args.bin").unlink(missing_ok=True)
            write_resolved_config(tmp / RUN_CONFIG_FILE, *configs)
    trainer.accelerator.wait_for_everyone()
    return out / "final"
