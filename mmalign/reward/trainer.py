"""``transformers.Trainer`` for reward models (Bradley–Terry) and Safe RLHF cost models.

The trained module is a :class:`~mmalign.models.ScalarHeadModel`: the adapter's (4-bit +
LoRA) model with a linear head on the last real token of the scoring prompt. Checkpoints
hold the PEFT adapter, the head and the scoring template, so ``resume_from_checkpoint``
and :func:`~mmalign.reward.load_reward_model` both work from them.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from mmalign.losses.reward import bradley_terry_loss, cost_loss, pairwise_accuracy, sign_accuracy
from mmalign.models import ModelLike, as_adapter
from mmalign.models.batch import EncodedBatch
from mmalign.models.scalar_head import HEAD_CONFIG, ScalarHeadModel
from mmalign.reward.collator import ScalarPairCollator
from mmalign.reward.config import RewardConfig
from mmalign.reward.ensemble import ENSEMBLE, ENSEMBLE_CONFIG, RewardEnsemble, member_dir
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


def run_reward_model(model_config, args: RewardConfig, *, train_rows: list[int] | None = None) -> Path:
    """Load the base with LoRA as configured, add a fresh head, train on the pairs, save.

    The final folder (``output_dir/final``) holds the adapter, the head, the scoring
    template and the resolved config. Every check (options, template, resume, data) comes
    before the model loads and anything is written. ``train_rows`` trains on those rows of
    the pairs (a bootstrap sample); ``ensemble_size`` > 1 trains an ensemble
    (:func:`~mmalign.reward.ensemble.run_reward_ensemble`).
    """
    from mmalign.data_builders.storage import load_preference_dataset

    if args.ensemble_size > 1:
        return run_reward_ensemble(model_config, args)
    require_paths(model_config, args, "dataset_path")
    if not model_config.use_peft:
        raise ValueError("reward and cost models train a LoRA adapter beside their head: set use_peft true")
    template = load_template(args)
    resume = run_resume_plan(model_config, args)
    train = load_preference_dataset(args.dataset_path)
    if train_rows is not None:
        train = train.select(train_rows)
    evaluation = load_preference_dataset(args.eval_dataset_path) if args.eval_dataset_path else None
    adapter = model_config.load(seed=args.seed, gradient_checkpointing=bool(args.gradient_checkpointing))
    model = ScalarHeadModel(adapter, kind=args.kind)
    trainer = RewardTrainer(model, args, train_dataset=train, eval_dataset=evaluation, template=template)
    return train_and_save(trainer, model_config, args, resume=resume)


#: Answers (chosen and rejected of this many pairs) that set each reward member's standardisation.
NORMALISATION_PAIRS = 256


def bootstrap_indices(n: int, seed: int) -> list[int]:
    """n row indices drawn with replacement (a bootstrap sample), the same for the same seed."""
    rng = random.Random(f"ensemble-bootstrap-{seed}")
    return sorted(rng.choices(range(n), k=n))


def member_statistics(scorer, pairs) -> list[list[float]]:
    """Each member's mean and std over the chosen and rejected answers of up to
    :data:`NORMALISATION_PAIRS` pairs (a fixed sample of ``pairs``)."""
    rows = list(range(len(pairs)))
    random.Random("ensemble-normalisation").shuffle(rows)
    sample = pairs.select(sorted(rows[:NORMALISATION_PAIRS]))
    scores = torch.cat([scorer.score_members_dataset(sample, column) for column in ("chosen", "rejected")], dim=1)
    std = scores.std(1, unbiased=False).clamp_min(1e-6)
    return [[float(m), float(s)] for m, s in zip(scores.mean(1), std)]


def run_reward_ensemble(model_config, args: RewardConfig) -> Path:
    """Train ``args.ensemble_size`` members and write the ensemble to ``output_dir/final``.

    Member k trains with seed ``seed + k`` (its LoRA and head start differently) on a
    bootstrap sample of the pairs (``ensemble_bootstrap``), into ``output_dir/member-k``;
    a member whose final model exists is kept, so a stopped run goes on with the next one
    (and ``resume_from_checkpoint`` resumes the member that was training). The members are
    then loaded on one base, standardised (reward) and copied into the ensemble folder,
    written atomically.
    """
    from mmalign.config_io import write_resolved_config
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.io import atomic_dir, check_output
    from mmalign.reward.scoring import RewardScorer
    from mmalign.training import FINAL, RUN_CONFIG_FILE

    require_paths(model_config, args, "dataset_path")
    out = Path(args.output_dir)
    check_output(out / "final", replaces=(ENSEMBLE, FINAL), inputs=[args.dataset_path])
    pairs = load_preference_dataset(args.dataset_path)
    finals = []
    for k in range(args.ensemble_size):
        final = member_dir(out, k) / "final"
        if not (final / HEAD_CONFIG).is_file():
            member = copy.deepcopy(args)
            member.output_dir, member.seed, member.ensemble_size = str(member_dir(out, k)), args.seed + k, 1
            rows = bootstrap_indices(len(pairs), args.seed + k) if args.ensemble_bootstrap else None
            run_reward_model(model_config, member, train_rows=rows)
        finals.append(final)
    ensemble = RewardEnsemble.from_members(finals, model_config.load_base(), adapter_name="member")
    normalisation = None
    if ensemble.kind != "cost":
        scorer = RewardScorer(ensemble, batch_size=args.per_device_eval_batch_size, max_length=args.max_length)
        normalisation = member_statistics(scorer, pairs)
    config = {"size": len(finals), "kind": ensemble.kind, "aggregation": args.ensemble_aggregation,
              "uncertainty_weight": args.uncertainty_weight, "normalisation": normalisation,
              "bootstrap": args.ensemble_bootstrap, "seeds": [args.seed + k for k in range(len(finals))]}
    with atomic_dir(out / "final", replaces=(ENSEMBLE, FINAL), inputs=[args.dataset_path]) as tmp:
        for k, final in enumerate(finals):
            shutil.copytree(final, member_dir(tmp, k))
        (tmp / ENSEMBLE_CONFIG).write_text(json.dumps(config, indent=2))
        write_resolved_config(tmp / RUN_CONFIG_FILE, model_config, args)
    return out / "final"
