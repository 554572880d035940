"""``transformers.Trainer`` for VLM supervised fine-tuning through an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from mmalign.models import ModelLike, as_adapter
from mmalign.models.batch import EncodedBatch
from mmalign.sft.collator import SFTCollator
from mmalign.sft.config import SFTConfig
from mmalign.training import (
    LossOnlyEvaluation,
    NonFiniteGuard,
    RecordsRunConfig,
    ResumesFullModels,
    require_paths,
    run_resume_plan,
    train_and_save,
)


def sft_loss(logps: torch.Tensor, mask: torch.Tensor, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the assistant tokens.

    Divided by ``num_items`` (all labelled tokens of the accumulated batch, so gradient
    accumulation gives the same update as one large batch) or, without it, by the tokens
    of this batch.
    """
    total = -(logps * mask).sum()
    return total / (num_items if num_items is not None else mask.sum().clamp(min=1))


class SFTTrainer(LossOnlyEvaluation, NonFiniteGuard, RecordsRunConfig, ResumesFullModels, Trainer):
    """Trains ``adapter.model`` (LoRA adapters, or the weights themselves) on conversations.

    The loss only projects hidden states of positions that predict assistant tokens to
    the vocabulary (see ``VLMAdapter.response_logprobs``).
    """

    def __init__(self, model: ModelLike, args: SFTConfig, train_dataset=None, eval_dataset=None, *,
                 processing_class: Any = None, peft_config: Any = None, **kwargs: Any):
        """``model`` as TRL's trainer takes it (a folder or hub id, a ``PreTrainedModel`` with
        ``processing_class``, or an adapter); ``peft_config`` attaches LoRA (:func:`~mmalign.models.as_adapter`)."""
        adapter = as_adapter(model, processing_class=processing_class, peft_config=peft_config,
                             gradient_checkpointing=bool(args.gradient_checkpointing))
        self.adapter = adapter
        kwargs.setdefault("data_collator", SFTCollator(adapter, args.max_length))
        super().__init__(model=adapter.model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=adapter.processor, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = EncodedBatch.from_features(inputs, self.adapter.inputs)
        logps, mask = self.adapter.response_logprobs(batch, model=model)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # Trainer counted tokens over all processes; DDP averages gradients over them.
            num_items_in_batch = num_items_in_batch / self.accelerator.num_processes
        loss = sft_loss(logps, mask, num_items_in_batch)
        return (loss, {"logps": logps}) if return_outputs else loss



def run_sft(model_config, args: SFTConfig) -> Path:
    """Load the model and data as configured, train, and save the result.

    Checkpoints go to ``args.output_dir/checkpoint-*`` (resume with
    ``resume_from_checkpoint``); the final adapter (or full model) and processor are
    written atomically to ``args.output_dir/final`` with the resolved config beside them.
    Every check (options, resume, data) comes before the model loads and anything is written.
    """
    from mmalign.data_builders.sft import load_sft_dataset

    require_paths(model_config, args, "dataset_path")
    resume = run_resume_plan(model_config, args)
    train = load_sft_dataset(args.dataset_path, args.image_folder)
    evaluation = load_sft_dataset(args.eval_dataset_path, args.image_folder) if args.eval_dataset_path else None
    adapter = model_config.load(seed=args.seed, gradient_checkpointing=bool(args.gradient_checkpointing))
    trainer = SFTTrainer(adapter, args, train_dataset=train, eval_dataset=evaluation)
    return train_and_save(trainer, model_config, args, resume=resume)
