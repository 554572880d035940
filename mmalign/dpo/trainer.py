"""``transformers.Trainer`` for DPO-family and Dense DPO training of VLMs.

One step, straightforward path (what TRL does): chosen and rejected sequences go through
the policy as one 2B-row batch, then through the reference; the vision tower runs on every
row of both passes. Switches remove repeated work without changing the result (tests
compare against the straightforward path):

- ``cache_image_features``: the frozen vision tower and projector run once per pair and
  their output feeds the policy and the reference, chosen and rejected;
- ``share_prefix``: one sequence [image + prompt, chosen, rejected] per pair, rejected
  blind to chosen, positions restarting after the prefix (1-D or Qwen's M-RoPE ones);
- ``precompute_ref_logps``: reference per-token log-probs computed once and stored with
  the data (Dense DPO's γ can then change freely).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from mmalign.dpo.collator import DPOCollator
from mmalign.dpo.config import SMOOTHED_LOSSES, DPOConfig, mdpo_corruption
from mmalign.dpo.logprobs import PairBatch, batch_features, batch_logprobs
from mmalign.dpo.reference import precompute_reference_logps
from mmalign.losses.dpo import (
    LOSS_TYPES,
    DPOOutput,
    bco_pair_loss,
    dpo_loss,
    dynamic_beta,
    mdpo_loss,
    mix_losses,
    orpo_loss,
    sequence_logps,
    sft_term,
    simpo_loss,
)
from mmalign.models import ModelLike, as_adapter
from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import EncodedBatch
from mmalign.models.feature_cache import ImageFeatureCache
from mmalign.training import (
    LossOnlyEvaluation,
    NonFiniteGuard,
    RecordsRunConfig,
    ResumesFullModels,
    StepMetrics,
    require_paths,
    run_resume_plan,
    train_and_save,
)

logger = logging.getLogger(__name__)

def _pad_to(t: torch.Tensor, width: int, value: float | int | bool) -> torch.Tensor:
    if t.shape[1] >= width:
        return t[:, :width]
    pad = t.new_full((t.shape[0], width - t.shape[1]), value)
    return torch.cat([t, pad], dim=1)



class DPOTrainer(StepMetrics, LossOnlyEvaluation, NonFiniteGuard, RecordsRunConfig, ResumesFullModels, Trainer):
    """Preference optimisation on an adapter; the reference is the base with LoRA off by default."""

    def __init__(
        self,
        model: ModelLike,
        args: DPOConfig,
        train_dataset=None,
        eval_dataset=None,
        reference: ModelLike | None = None,
        *,
        ref_model: ModelLike | None = None,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ):
        """``model`` (and ``reference``, or TRL's name ``ref_model``) as TRL's trainer takes them:
        a folder or hub id, a ``PreTrainedModel`` (with ``processing_class``) or an adapter;
        ``peft_config`` attaches LoRA to the language model (:func:`~mmalign.models.as_adapter`)."""
        from peft import PeftModel

        if reference is not None and ref_model is not None:
            raise ValueError("pass the reference once: reference= or TRL's ref_model=, not both")
        adapter = as_adapter(model, processing_class=processing_class, peft_config=peft_config,
                             gradient_checkpointing=bool(args.gradient_checkpointing))
        reference = reference if reference is not None else ref_model
        if reference is not None:
            reference = as_adapter(reference)
            reference.model.eval()
        if (reference is None and not isinstance(adapter.model, PeftModel) and not args.precompute_ref_logps
                and args.needs_reference):
            raise ValueError("full fine-tuning needs a reference: pass reference= (ref_model=), set "
                             "reference_model_path, or pass peft_config to train LoRA")
        if args.share_prefix and not adapter.supports_shared_prefix():
            raise ValueError(f"share_prefix is not available for {adapter.family}: {adapter.shared_prefix_refusal()}")
        if args.image_feature_cache_dir and not args.cache_image_features:
            raise ValueError("image_feature_cache_dir needs cache_image_features: true")
        self.adapter = adapter
        self.reference = reference
        self.feature_caches: dict[int, ImageFeatureCache] = {}
        if args.precompute_ref_logps:
            train_dataset, eval_dataset = (
                self._with_reference(ds, args) for ds in (train_dataset, eval_dataset)
            )
        self.collator = kwargs.pop("data_collator", None) or DPOCollator(
            adapter, args.max_length, args.gamma, corruption=mdpo_corruption(args))
        self.span_share = warn_on_missing_spans(train_dataset) if "ddpo" in args.loss_types else None
        self._bco_sum, self._bco_count = 0.0, 0
        self._init_metrics()
        super().__init__(model=adapter.model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         data_collator=self.collator, processing_class=adapter.processor, **kwargs)

    def _with_reference(self, dataset, args: DPOConfig):
        if dataset is None or all(c in dataset.column_names for c in args.reference_columns):
            return dataset
        reference = self.reference or self.adapter
        cache = self._disk_cache(reference, args.image_feature_cache_dir) if args.image_feature_cache_dir else None
        return precompute_reference_logps(reference, dataset, max_length=args.max_length,
                                          batch_size=args.per_device_eval_batch_size,
                                          share_prefix=args.share_prefix, feature_cache=cache,
                                          corruption=mdpo_corruption(args))

    # ------------------------------------------------------------------ forward passes
    def _features(self, adapter: VLMAdapter, batch: EncodedBatch) -> dict[str, Any] | None:
        if not self.args.cache_image_features:
            return None
        if self.args.image_feature_cache_dir:
            return self._disk_cache(adapter, self.args.image_feature_cache_dir).features(batch)
        return adapter.image_features(batch)

    def _disk_cache(self, adapter: VLMAdapter, directory: str) -> ImageFeatureCache:
        if id(adapter) not in self.feature_caches:
            self.feature_caches[id(adapter)] = ImageFeatureCache(directory, adapter)
        return self.feature_caches[id(adapter)]

    def _image_features(self, adapter: VLMAdapter, batch: PairBatch) -> dict[str, Any]:
        """Cached image features of each sequence set with images of its own (none without caching)."""
        return batch_features(batch, lambda sequences: self._features(adapter, sequences))

    def sequence_logprobs(self, model, adapter: VLMAdapter, batch: PairBatch,
                          features: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return batch_logprobs(model, adapter, batch, features, share_prefix=self.args.share_prefix)

    def reference_logprobs(self, model, batch: PairBatch, features: dict[str, Any], inputs) -> dict[str, torch.Tensor]:
        """The reference's per-token log-probs of each sequence set: precomputed with the data,
        or from the reference model, or from the policy with its LoRA adapters off."""
        names = batch.names
        if all(f"ref_{name}_logps" in inputs for name in names):
            return {name: inputs[f"ref_{name}_logps"] for name in names}
        with torch.no_grad():
            if self.reference is not None:
                ref = self.reference
                out = self.sequence_logprobs(ref.model, ref, batch, self._image_features(ref, batch))
            else:
                with self.adapter.adapters_disabled():
                    if self.adapter.train_projector:  # the reference projector differs from the policy's
                        features = self._image_features(self.adapter, batch)
                    out = self.sequence_logprobs(model, self.adapter, batch, features)
        return {name: logps for name, (logps, _) in out.items()}

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: DPOConfig = self.args
        batch = PairBatch.from_inputs(inputs, self.adapter)
        features = self._image_features(self.adapter, batch)
        policy = self.sequence_logprobs(model, self.adapter, batch, features)
        (pc, mc), (pr, mr) = policy["chosen"], policy["rejected"]
        if args.needs_reference:
            reference = self.reference_logprobs(model, batch, features, inputs)
            reference = {name: _pad_to(reference[name], policy[name][0].shape[1], 0.0) for name in batch.names}
            rc, rr = reference["chosen"], reference["rejected"]
        else:  # SimPO / ORPO / SFT alone: no reference forward at all
            rc, rr = torch.zeros_like(pc), torch.zeros_like(pr)
        wc = _pad_to(inputs["chosen_weights"], pc.shape[1], 0.0)
        wr = _pad_to(inputs["rejected_weights"], pr.shape[1], 0.0)
        if "ddpo" not in args.loss_types:
            wc = wr = None

        @functools.cache  # one sum (or mean) per form, shared by the losses of a mix and the logs
        def scores(normalize: bool) -> list[torch.Tensor]:
            return [sequence_logps(t, m, w, normalize=normalize)
                    for t, m, w in ((pc, mc, wc), (pr, mr, wr), (rc, mc, wc), (rr, mr, wr))]

        beta: float | torch.Tensor = args.beta
        if args.dynamic_beta:
            if "reward_margin" not in inputs:
                raise ValueError("dynamic_beta needs a 'reward_margin' column in the data")
            beta = dynamic_beta(inputs["reward_margin"], args.beta, args.dynamic_beta_weight, args.dynamic_beta_k)
        means = (sequence_logps(pc, mc, normalize=True), sequence_logps(pr, mr, normalize=True))
        corrupted = None  # mDPO: the chosen answer's h with corrupted images
        if batch.corrupted is not None:
            logps, mask = policy["corrupted"]
            corrupted = sequence_logps(logps, mask) - sequence_logps(reference["corrupted"], mask)
        outputs = [self._one_loss(name, scores, means, beta, model.training, corrupted) for name in args.loss_types]
        weights = args.loss_weights or [1.0] * len(outputs)
        out = outputs[0] if len(outputs) == 1 and weights[0] == 1 else mix_losses(outputs, weights, args.loss_types)
        loss = out.loss
        if args.sft_weight:
            loss = loss + args.sft_weight * sft_term(pc, mc)
        logged = scores(_normalized(args.loss_types[0], args))
        self._record(model, out, logged, mc, wc)
        return (loss, {"chosen_logps": logged[0], "rejected_logps": logged[1]}) if return_outputs else loss

    def _one_loss(self, name: str, scores, means, beta, training: bool, corrupted=None) -> DPOOutput:
        """One named loss of the mix: the DPO family on (weighted) sequence scores, bco_pair against
        the running reward baseline, mDPO with the corrupted-image scores, SimPO / ORPO / SFT on
        mean token log-probs."""
        args: DPOConfig = self.args
        if name == "mdpo":
            pc, pr, rc, rr = scores(False)
            return mdpo_loss(pc - rc, pr - rr, corrupted, beta=beta, conditional_weight=args.mdpo_conditional_weight,
                             anchor_weight=args.mdpo_anchor_weight, anchor=args.mdpo_anchor)
        if name in LOSS_TYPES:
            smoothing = args.label_smoothing if name in SMOOTHED_LOSSES else 0.0
            return dpo_loss(*scores(_normalized(name, args)), beta=beta, loss_type=name, label_smoothing=smoothing)
        if name == "bco_pair":
            pc, pr, rc, rr = scores(False)
            h_chosen, h_rejected = pc - rc, pr - rr
            return bco_pair_loss(h_chosen, h_rejected, beta=beta,
                                 delta=self._bco_baseline(beta * torch.cat([h_chosen, h_rejected]), training))
        if name == "simpo":
            return simpo_loss(*means, beta=beta, gamma=args.simpo_gamma)
        if name == "orpo":
            return orpo_loss(*means, lam=beta)
        return DPOOutput(losses=-means[0], chosen_rewards=means[0].detach(), rejected_rewards=means[1].detach())

    def _bco_baseline(self, rewards: torch.Tensor, training: bool) -> float:
        """Mean of every β·h seen in training so far, this batch included (TRL's running mean for
        bco_pair; per process, and it restarts from this batch when a run resumes)."""
        if training or not self._bco_count:
            self._bco_sum += float(rewards.detach().sum())
            self._bco_count += rewards.numel()
        return self._bco_sum / self._bco_count

    def _record(self, model, out, scores, mask_chosen, weights_chosen) -> None:
        margins = out.chosen_rewards - out.rejected_rewards
        values = {
            "rewards/chosen": out.chosen_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/margins": margins.mean(),
            "rewards/accuracies": (margins > 0).float().mean(),
            "logps/chosen": scores[0].detach().mean(),
            "logps/rejected": scores[1].detach().mean(),
        }
        if weights_chosen is not None:
            corrected = (weights_chosen != 1) & mask_chosen
            values["ddpo/corrected_token_share"] = corrected.sum() / mask_chosen.sum().clamp(min=1)
        values.update({f"loss/{name}": part.mean() for name, part in out.parts.items()})
        self.record_metrics(model, values)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not any(k.startswith("eval_") for k in logs):
            logs["truncation/dropped_pairs"] = self.collator.stats.dropped
            logs["truncation/prompts_shortened"] = self.collator.stats.prompts_shortened
            if self.span_share is not None:
                logs["ddpo/pairs_with_spans"] = self.span_share
        super().log(logs, start_time)


def _normalized(loss: str, args: DPOConfig) -> bool:
    """Whether a DPO-family loss scores a response by its mean token log-prob (IPO, normalised
    Dense DPO) rather than the sum."""
    return loss == "ipo" or (loss == "ddpo" and args.ddpo_normalize)


def warn_on_missing_spans(dataset) -> float | None:
    """Share of pairs with a corrected segment on either side, warned about when below 1: Dense
    DPO weights only those segments, so a pair without any trains as plain DPO, silently."""
    if dataset is None:
        return None
    n = len(dataset)
    columns = [c for c in ("chosen_spans", "rejected_spans") if c in dataset.column_names]
    with_spans = sum(any(row) for row in zip(*(dataset[c] for c in columns))) if columns and n else 0
    share = with_spans / n if n else 0.0
    if share < 1:
        logger.warning("loss_type ddpo: %d of %d pairs (%.1f%%) carry corrected spans; the other %d train as plain "
                       "DPO (gamma has no segment to weight)%s", with_spans, n, 100 * share, n - with_spans,
                       "" if columns else " - the data has no chosen_spans / rejected_spans columns")
    return share


def check_dpo_run(model_config, args: DPOConfig) -> None:
    """What a DPO run needs beyond its options' ranges, checked before the model loads: a
    reference for full fine-tuning, a family whose positions allow ``share_prefix``."""
    from mmalign.models import ADAPTERS, card_for

    if (not model_config.use_peft and not args.reference_model_path and not args.precompute_ref_logps
            and args.needs_reference):
        raise ValueError("full fine-tuning (use_peft false) needs a reference: set reference_model_path "
                         "(or precompute_ref_logps, which takes the model before training)")
    if args.share_prefix:
        family = model_config.card().family
        if not ADAPTERS[family].supports_shared_prefix():
            raise ValueError(f"share_prefix is not available for {family}: "
                             f"{ADAPTERS[family].shared_prefix_refusal()}; set it false")
    if args.reference_model_path:
        card_for(args.reference_model_path)  # exists and is supported (its config only)


def check_dpo_data(args: DPOConfig, **datasets) -> None:
    """Columns the options need, checked before the model loads (MM-DPO's reward margins)."""
    for name, data in datasets.items():
        if data is not None and args.dynamic_beta and "reward_margin" not in data.column_names:
            raise ValueError(f"{getattr(args, name)}: dynamic_beta needs a 'reward_margin' column in the data")


def run_dpo(model_config, args: DPOConfig) -> Path:
    """Load model, reference and preference data as configured, train, save.

    Checkpoints go to ``args.output_dir/checkpoint-*``; the final adapter and processor
    are written atomically to ``args.output_dir/final`` with the resolved config. Every
    check (options, resume, data) comes before the model loads and anything is written.
    """
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.models import card_for, load_adapter

    require_paths(model_config, args, "dataset_path")
    check_dpo_run(model_config, args)
    resume = run_resume_plan(model_config, args)
    train = load_preference_dataset(args.dataset_path)
    evaluation = load_preference_dataset(args.eval_dataset_path) if args.eval_dataset_path else None
    check_dpo_data(args, dataset_path=train, eval_dataset_path=evaluation)
    adapter = model_config.load(seed=args.seed, gradient_checkpointing=bool(args.gradient_checkpointing))
    reference = None
    if args.reference_model_path:
        reference = load_adapter(args.reference_model_path, dtype=model_config.dtype,
                                 quantization=model_config.quantization(card_for(args.reference_model_path)))
        reference.model.eval()
    trainer = DPOTrainer(adapter, args, train_dataset=train, eval_dataset=evaluation, reference=reference)
    return train_and_save(trainer, model_config, args, resume=resume)
