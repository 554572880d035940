"""``transformers.Trainer`` for reward models (Bradley–Terry) and Safe RLHF cost models.

The trained module is a :class:`~mmalign.models.ScalarHeadModel`: the adapter's (4-bit +
LoRA) model with a linear head on the last real token of the scoring prompt. Checkpoints
hold the PEFT adapter, the head and the scoring template, so ``resume_from_checkpoint``
and :func:`~mmalign.reward.load_reward_model` both work from them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, set_seed

from mmalign.losses.reward import bradley_terry_loss, cost_loss, pairwise_accuracy, sign_accuracy
from mmalign.models import ModelLike, as_adapter
from mmalign.models.batch import EncodedBatch
from mmalign.models.scalar_head import ScalarHeadModel
from mmalign.reward.collator import ScalarPairCollator
from mmalign.reward.config import RewardConfig
from mmalign.reward.template import RewardTemplate
from mmalign.training import (
    LossOnlyEvaluation,
    NonFiniteGuard,
    RecordsRunConfig,
    StepMetrics,
    require_paths,
    run_resume_plan,
    train_and_save,
)


def load_template(args: RewardConfig) -> RewardTemplate:
    """The configured scoring template: defaults, the YAML ``template_file``, then ``use_facts``."""
    import yaml

    values: dict[str, Any] = {}
    if args.template_file:
        try:
            values = yaml.safe_load(Path(args.template_file).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{args.template_file}: not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{args.template_file}: a template file is a mapping of template fields to values")
        unknown = sorted(str(k) for k in set(values) - set(asdict(RewardTemplate())))
        if unknown:
            raise ValueError(f"{args.template_file}: unknown template field(s) {', '.join(unknown)}")
    values["use_facts"] = args.use_facts
    values["facts_position"] = args.facts_position
    return RewardTemplate(**values)


class RewardTrainer(StepMetrics, LossOnlyEvaluation, NonFiniteGuard, RecordsRunConfig, Trainer):
    """Train a scalar head (+ LoRA) on preference pairs; ``args.kind`` picks reward or cost."""

    def __init__(self, model: ScalarHeadModel | ModelLike, args: RewardConfig, train_dataset=None, eval_dataset=None,
                 template: RewardTemplate | None = None, *, processing_class: Any = None, peft_config: Any = None,
                 **kwargs: Any):
        """``model`` is a :class:`ScalarHeadModel`, or anything TRL's trainer takes (a folder or
        hub id, a ``PreTrainedModel`` with ``processing_class``, an adapter), which gets a fresh
        scalar head; ``peft_config`` attaches LoRA first (:func:`~mmalign.models.as_adapter`)."""
        if isinstance(model, ScalarHeadModel):
            if processing_class is not None or peft_config is not None:
                raise ValueError("processing_class / peft_config: a ScalarHeadModel is already built on its adapter; "
                                 "pass the base model (a folder, PreTrainedModel or adapter) to use them")
        else:
            adapter = as_adapter(model, processing_class=processing_class, peft_config=peft_config,
                                 gradient_checkpointing=bool(args.gradient_checkpointing))
            model = ScalarHeadModel(adapter, kind=args.kind)
        self.scalar = model
        self.template = template or load_template(args)
        model.template = asdict(self.template)
        model.kind = args.kind
        self.collator = kwargs.pop("data_collator", None) or ScalarPairCollator(
            model.adapter, self.template, args.kind, args.cost_signs, args.max_length, args.facts_seed
        )
        self._init_metrics()
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         data_collator=self.collator, processing_class=model.adapter.processor, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: RewardConfig = self.args
        batch = EncodedBatch.from_features(inputs, self.scalar.adapter.inputs)
        scores = model(batch).float()
        n = scores.shape[0] // 2
        first, second = scores[:n], scores[n:]
        if args.kind == "reward":
            loss = bradley_terry_loss(first, second, center_weight=args.center_weight, l2_weight=args.l2_weight)
        else:
            signs = inputs["signs"].to(scores)
            loss = cost_loss(first, second, signs[:n], signs[n:], l2_weight=args.l2_weight)
        self._record(model, first.detach(), second.detach(), inputs["signs"])
        return (loss, {"scores": scores}) if return_outputs else loss

    def _record(self, model, first: torch.Tensor, second: torch.Tensor, signs: torch.Tensor) -> None:
        both = torch.cat([first, second])
        values = {"accuracy": pairwise_accuracy(first, second), "scores/mean": both.mean(),
                  "scores/std": both.std() if both.numel() > 1 else both.new_zeros(()),
                  "scores/margin": (first - second).mean()}
        if self.args.kind == "cost":
            values["sign_accuracy"] = sign_accuracy(both, signs.to(both))
        self.record_metrics(model, values)

    # The trained module is not a PreTrainedModel: save and restore adapter + head ourselves.
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.scalar.write_files(out)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(out)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        self.scalar.load_files(resume_from_checkpoint)


def run_reward_model(model_config, args: RewardConfig) -> Path:
    """Load the base with LoRA as configured, add a fresh head, train on the pairs, save.

    The final folder (``output_dir/final``) holds the adapter, the head, the scoring
    template and the resolved config. Every check (options, template, resume, data) comes
    before the model loads and anything is written.
    """
    from mmalign.data_builders.storage import load_preference_dataset

    require_paths(model_config, args, "dataset_path")
    if not model_config.use_peft:
        raise ValueError("reward and cost models train a LoRA adapter beside their head: set use_peft true")
    template = load_template(args)
    resume = run_resume_plan(model_config, args)
    train = load_preference_dataset(args.dataset_path)
    evaluation = load_preference_dataset(args.eval_dataset_path) if args.eval_dataset_path else None
    set_seed(args.seed)  # the fresh LoRA weights and head are random: same seed, same run
    adapter = model_config.load(gradient_checkpointing=bool(args.gradient_checkpointing))
    model = ScalarHeadModel(adapter, kind=args.kind)
    trainer = RewardTrainer(model, args, train_dataset=train, eval_dataset=evaluation, template=template)
    return train_and_save(trainer, model_config, args, resume=resume)
