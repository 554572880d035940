"""On-policy group RL for VLMs: GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++ and Safe GRPO.

No critic: per prompt the policy samples G completions and each completion's advantage is
its reward against the group's (``mmalign.losses.grpo.group_advantages``). One iteration:
sample ``prompts_per_step`` × G completions (``per_device_eval_batch_size`` at a time),
score them with the weighted reward functions (plus DAPO's overlong penalty), optionally
drop groups whose rewards are all equal and refill them from further prompts (DAPO's
dynamic sampling), then ``num_iterations`` passes of the clipped surrogate over minibatches.
The reference for the optional KL term is the base with the adapters switched off, as in
PPO, so nothing is copied. With a cost, λ takes one step on the mean cost first and the
policy follows (A_r − λ·A_c) / (1 + λ) (Safe RLHF-V's PPO-Lagrangian on group advantages).

Image features are computed once per sampled chunk and reused by every forward of the
update (the vision tower never runs in the update).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import TrainOutput

from mmalign.grpo.config import GRPOConfig
from mmalign.grpo.rewards import RewardFunction, build_reward, reward_name
from mmalign.io import ADAPTER, OutputKind, atomic_dir
from mmalign.losses.grpo import (
    aggregate_loss,
    clipped_surrogate,
    dynamic_sampling_mask,
    group_advantages,
    overlong_penalty,
    safe_advantages,
)
from mmalign.models import ModelLike, as_adapter
from mmalign.models.adapter import VLMAdapter, concat_features
from mmalign.models.batch import EncodedBatch, concat_batches, pad_cat
from mmalign.models.prefix import group_logprobs
from mmalign.online_rl import OnlineRLMixin, check_scorer_paths
from mmalign.training import (
    NONFINITE_LOG_KEY,
    RecordsRunConfig,
    latest_valid_checkpoint,
)

logger = logging.getLogger(__name__)

POLICY = "default"
STATE_FILE = "grpo_state.json"
LOG_FILE = "grpo_log.json"
LAMBDA_FILE = "lagrange.json"
CHECKPOINT = (OutputKind("GRPO checkpoint", (STATE_FILE,)), ADAPTER)


@dataclass
class GroupRollout:
    """Completions of whole groups and what the update needs about them."""

    batch: EncodedBatch
    features: dict[str, Any] | None
    mask: torch.Tensor
    old_logps: torch.Tensor | None  # None: the policy has not moved since sampling (ratio from detached logps)
    ref_logps: torch.Tensor | None
    advantages: torch.Tensor  # (N,)


@dataclass
class _Sampled:
    """One sampled batch of groups before advantages."""

    batch: EncodedBatch
    features: dict[str, Any] | None
    mask: torch.Tensor
    old_logps: torch.Tensor | None
    ref_logps: torch.Tensor | None
    lengths: torch.Tensor
    ended: torch.Tensor
    rewards: torch.Tensor  # (N,) weighted total
    per_function: dict[str, torch.Tensor]  # (N,) each, NaN where a function does not apply
    costs: torch.Tensor | None


def weighted_rewards(values: list[list[float | None]], weights: list[float]) -> torch.Tensor:
    """Σ_f w_f · r_f per completion, skipping functions that returned ``None`` for it (TRL's nansum)."""
    table = torch.tensor([[math.nan if v is None else float(v) for v in column] for column in values],
                         dtype=torch.float32)
    return torch.nansum(table * torch.tensor(weights, dtype=torch.float32)[:, None], dim=0)


class GRPOTrainer(OnlineRLMixin, RecordsRunConfig, Trainer):
    """Group RL on an adapter whose policy LoRA is ``default``.

    ``reward_funcs`` are callables (TRL's reward signature) or built-in names; by default
    they come from ``args.reward_funcs``. ``cost_funcs`` (Safe GRPO) likewise.
    ``scorers`` maps ``reward_model`` / ``cost_model`` to loaded ``RewardScorer`` objects for
    the built-in names of the same name.
    """

    method_name = "GRPO"

    def __init__(self, model: ModelLike, args: GRPOConfig, train_dataset,
                 reward_funcs: list[RewardFunction | str] | None = None, reward_weights: list[float] | None = None,
                 cost_funcs: list[RewardFunction | str] | None = None, scorers: dict[str, Any] | None = None,
                 *, processing_class: Any = None, peft_config: Any = None, **kwargs: Any):
        """``model`` as TRL's trainer takes it (a folder or hub id, a ``PreTrainedModel`` with
        ``processing_class``, or an adapter); ``peft_config`` attaches the policy's LoRA
        (:func:`~mmalign.models.as_adapter`)."""
        if args.world_size > 1:
            raise ValueError("GRPOTrainer runs on one process (one GPU or the CPU); launch it without torchrun")
        adapter = as_adapter(model, processing_class=processing_class, peft_config=peft_config,
                             gradient_checkpointing=bool(args.gradient_checkpointing))
        self.adapter = adapter

        def build(items):
            return [build_reward(f, scorers=scorers, length_target_words=args.length_target_words,
                                 object_vocabulary=args.object_vocabulary) if isinstance(f, str) else f
                    for f in items]

        self.reward_funcs = build(reward_funcs if reward_funcs is not None else args.reward_funcs)
        weights = reward_weights if reward_weights is not None else args.reward_weights
        self.reward_weights = list(weights) if weights is not None else [1.0] * len(self.reward_funcs)
        if len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"{len(self.reward_weights)} reward weights for {len(self.reward_funcs)} reward functions")
        self.cost_funcs = build(cost_funcs if cost_funcs is not None else args.cost_funcs)
        for function in (*self.reward_funcs, *self.cost_funcs):
            if hasattr(function, "prepare"):
                function.prepare(train_dataset)
        self.init_loop_state(args)
        self.batches_drawn = 0
        self.share_prefix = self._resolve_share_prefix(adapter, args)
        super().__init__(model=adapter.model, args=args, train_dataset=train_dataset,
                         data_collator=lambda rows: rows, processing_class=adapter.processor, **kwargs)

    @staticmethod
    def _resolve_share_prefix(adapter: VLMAdapter, args: GRPOConfig) -> bool:
        """On where the family supports it and minibatches hold whole groups; refused if asked elsewhere."""
        supported = adapter.supports_shared_prefix()
        whole_groups = args.per_device_train_batch_size % args.num_generations == 0
        if args.share_prefix and not supported:
            raise ValueError(f"share_prefix is not available for {adapter.family}: "
                             f"{adapter.shared_prefix_refusal()}; set it false")
        return supported and whole_groups if args.share_prefix is None else bool(args.share_prefix)

    # ------------------------------------------------------------------ data
    def _prompt_batch(self, k: int) -> list[dict[str, Any]]:
        """Prompt batch number ``k`` in a seeded order (the same on a resumed run)."""
        n, size = len(self.train_dataset), self.args.prompts_per_step
        per_epoch = max(n // size, 1)
        epoch, index = divmod(k, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch)).tolist()
        picked = order[index * size : (index + 1) * size]
        if len(picked) < size:  # fewer prompts than a batch: wrap around
            picked = (order * (size // max(n, 1) + 1))[:size]
        return [self.train_dataset[i] for i in picked]

    # ------------------------------------------------------------------ rollout
    def _needs_old_logps(self) -> bool:
        """The policy moves during the update when it takes several passes or minibatches; the
        ratio then needs the sampling policy's log-probs, computed before the first step."""
        args = self.args
        return args.num_iterations > 1 or args.prompts_per_step * args.num_generations > args.per_device_train_batch_size

    def _logprobs(self, batch: EncodedBatch, features, *, with_entropy: bool = False):
        """Response log-probs of a batch of whole groups: one shared-prefix row per group where possible."""
        if self.share_prefix:
            out = group_logprobs(self.adapter.model, self.adapter, batch, self.args.num_generations, features,
                                 with_entropy=with_entropy)
        else:
            out = self.adapter.response_logprobs(batch, features, with_entropy=with_entropy)
        return out if with_entropy else out[0]

    def _score(self, functions: list[RewardFunction], rows: list[dict[str, Any]], texts: list[str],
               lengths: torch.Tensor, ended: torch.Tensor) -> list[list[float | None]]:
        prompts = [r["prompt"] for r in rows]
        columns = {key: [r.get(key) for r in rows] for key in rows[0] if key != "prompt"}
        columns.update(completion_lengths=lengths.tolist(), ended=ended.tolist())
        values = []
        for function in functions:
            out = list(function(prompts, texts, **columns))
            if len(out) != len(texts):
                raise ValueError(f"reward {reward_name(function)} returned {len(out)} values for {len(texts)} completions")
            values.append(out)
        return values

    @torch.no_grad()
    def _sample(self, prompt_rows: list[dict[str, Any]]) -> _Sampled:
        args: GRPOConfig = self.args
        adapter = self.adapter
        rows = [row for row in prompt_rows for _ in range(args.num_generations)]
        chunks: list[dict[str, Any]] = []
        step = args.per_device_eval_batch_size
        if self.share_prefix:  # chunks of whole groups, so a chunk's rows can share their prefix
            step = max(args.num_generations, step - step % args.num_generations)
        for lo in range(0, len(rows), step):
            # with a shared prefix, each prompt of the chunk is prefilled once for its G samples
            part = rows[lo : lo + step : args.num_generations if self.share_prefix else 1]
            adapter.use_adapter(POLICY)
            adapter.model.eval()
            samples = adapter.sample([r.get("images") or [] for r in part], [r["prompt"] for r in part],
                                     max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                     num_samples=args.num_generations if self.share_prefix else 1,
                                     prefill_once=self.share_prefix)
            batch = samples.batch.to(adapter.device)
            features = samples.image_features if self.share_prefix else adapter.image_features(batch)
            # log-probs of the sampling policy only where the update needs them (the ratio
            # after the policy moved, the KL to the reference); the entropy comes from the update
            logps = self._logprobs(batch, features) if self._needs_old_logps() else None
            ref = None
            if args.beta:
                with adapter.adapters_disabled():
                    ref = self._logprobs(batch, features)
            chunks.append({"samples": samples, "batch": batch, "features": features, "logps": logps,
                           "mask": response_positions(batch), "ref": ref})
        adapter.use_adapter(POLICY)
        texts = [t for c in chunks for t in c["samples"].texts]
        lengths = torch.cat([c["samples"].lengths for c in chunks])
        ended = torch.cat([c["samples"].ended for c in chunks])
        values = self._score(self.reward_funcs, rows, texts, lengths, ended)
        rewards = weighted_rewards(values, self.reward_weights)
        if args.overlong_buffer:
            rewards = rewards + overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer,
                                                 args.overlong_penalty)
        costs = None
        if self.cost_funcs:
            costs = weighted_rewards(self._score(self.cost_funcs, rows, texts, lengths, ended),
                                     [1.0] * len(self.cost_funcs))
        return _Sampled(
            batch=concat_batches([c["batch"] for c in chunks], adapter.tokenizer.pad_token_id),
            features=concat_features([c["features"] for c in chunks]),
            mask=pad_cat([c["mask"] for c in chunks], False),
            old_logps=pad_cat([c["logps"] for c in chunks], 0.0) if self._needs_old_logps() else None,
            ref_logps=pad_cat([c["ref"] for c in chunks], 0.0) if args.beta else None,
            lengths=lengths, ended=ended, rewards=rewards,
            per_function={reward_name(f): torch.tensor([math.nan if v is None else float(v) for v in column])
                          for f, column in zip(self.reward_funcs, values)},
            costs=costs,
        )

    def _keep_groups(self, sampled: _Sampled, groups: list[int]) -> _Sampled:
        """The sampled completions of the given groups only."""
        g = self.args.num_generations
        rows = [i * g + j for i in groups for j in range(g)]
        batch, features = self.adapter.select(sampled.batch, rows, sampled.features)

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[rows]

        return _Sampled(
            batch=batch, features=features, mask=sampled.mask[rows],
            old_logps=pick(sampled.old_logps), ref_logps=pick(sampled.ref_logps),
            lengths=sampled.lengths[rows], ended=sampled.ended[rows],
            rewards=sampled.rewards[rows], per_function={k: v[rows] for k, v in sampled.per_function.items()},
            costs=pick(sampled.costs),
        )

    def make_rollout(self) -> tuple[GroupRollout, dict[str, float]]:
        """Sample (refilling dropped groups with dynamic sampling), score, and compute advantages."""
        args: GRPOConfig = self.args
        g = args.num_generations
        sampled = self._sample(self._prompt_batch(self.batches_drawn))
        self.batches_drawn += 1
        drawn_groups = args.prompts_per_step
        if args.dynamic_sampling:
            parts, kept_groups = [], 0
            for attempt in range(args.max_refill_batches + 1):
                if attempt:
                    sampled = self._sample(self._prompt_batch(self.batches_drawn))
                    self.batches_drawn += 1
                    drawn_groups += args.prompts_per_step
                keep = dynamic_sampling_mask(sampled.rewards, g).nonzero().flatten().tolist()
                keep = keep[: args.prompts_per_step - kept_groups]
                if keep:
                    parts.append(self._keep_groups(sampled, keep))
                    kept_groups += len(keep)
                if kept_groups == args.prompts_per_step:
                    break
            if not parts:  # every group tied: train on the last batch (its advantages are all 0)
                parts = [sampled]
            sampled = parts[0] if len(parts) == 1 else _merge(parts, self.adapter.tokenizer.pad_token_id)
        advantage = group_advantages(sampled.rewards, g, args.advantage_estimator)
        advantages = advantage.advantages
        log: dict[str, float] = {
            "reward": float(sampled.rewards.mean()),
            "reward_std": float(advantage.group_std.mean()),
            "zero_std_fraction": float(advantage.zero_std_fraction),
            "completion_length": float(sampled.lengths.float().mean()),
            "ended_rate": float(sampled.ended.float().mean()),
            "groups_kept": float(sampled.rewards.numel() // g),
            "groups_drawn": float(drawn_groups),
        }
        for name, values in sampled.per_function.items():
            if not torch.isnan(values).all():
                log[f"rewards/{name}"] = float(values.nanmean())
        for function in (*self.reward_funcs, *self.cost_funcs):  # an ensemble: how much its members disagree
            spread = getattr(getattr(function, "scorer", None), "last_spread", None)
            if spread is not None:
                log[f"spread/{reward_name(function)}"] = spread
        if sampled.costs is not None:  # logged in reward-only runs too, to compare against
            log.update({"cost": float(sampled.costs.mean()),
                        "unsafe_rate": float((sampled.costs > args.unsafe_cost).float().mean())})
        if sampled.costs is not None and args.lagrangian:
            lam = self.update_lambda(sampled.costs)
            cost_advantages = group_advantages(sampled.costs, g, args.advantage_estimator).advantages
            advantages = safe_advantages(advantages, cost_advantages, lam)
            log["lambda"] = lam
        rollout = GroupRollout(sampled.batch, sampled.features, sampled.mask, sampled.old_logps, sampled.ref_logps,
                               advantages.to(sampled.mask.device))
        return rollout, log

    # ------------------------------------------------------------------ update
    def grpo_update(self, rollout: GroupRollout) -> dict[str, float]:
        args: GRPOConfig = self.args
        adapter = self.adapter
        n = rollout.batch.input_ids.shape[0]
        # with a shared prefix a minibatch holds whole groups (their rows stay consecutive)
        unit = args.num_generations if self.share_prefix else 1
        sums: dict[str, float] = {}
        steps = good = 0
        for _ in range(args.num_iterations):
            order = torch.randperm(n // unit).tolist()
            per_step = args.per_device_train_batch_size // unit
            for lo in range(0, len(order), per_step):
                rows = [u * unit + j for u in order[lo : lo + per_step] for j in range(unit)]
                batch, features = adapter.select(rollout.batch, rows, rollout.features)
                mask = rollout.mask[rows]
                adapter.use_adapter(POLICY)
                adapter.model.train()
                logps, _, entropy = self._logprobs(batch, features, with_entropy=True)
                width = logps.shape[1]
                mask = mask[:, :width]
                old = rollout.old_logps[rows, :width] if rollout.old_logps is not None else logps.detach()
                ref = rollout.ref_logps[rows, :width] if rollout.ref_logps is not None else None
                out = clipped_surrogate(logps, old, rollout.advantages[rows], mask, epsilon_low=args.epsilon,
                                        epsilon_high=args.epsilon_high, importance_level=args.importance_level,
                                        ref_logps=ref, beta=args.beta)
                loss = aggregate_loss(out.per_token_loss, mask, args.loss_aggregation,
                                      max_completion_length=args.max_new_tokens)
                self.accelerator.backward(loss)
                stats = {"loss": loss.item(), "clip_ratio/low": out.clip_low_fraction.item(),
                         "clip_ratio/high": out.clip_high_fraction.item(),
                         "clip_ratio/region": out.clip_region_fraction.item()}
                stats["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
                if out.kl is not None:
                    stats["kl"] = float((out.kl * mask).sum() / mask.sum().clamp(min=1))
                steps += 1
                if not self.take_step(stats, sums):
                    if self.nonfinite_stop:
                        break
                    continue
                good += 1
            if self.nonfinite_stop:
                break
        out_log = {k: v / good for k, v in sums.items()} if good else {}
        out_log["optimizer_steps"] = steps
        out_log[NONFINITE_LOG_KEY] = self.nonfinite_skipped
        return out_log

    # ------------------------------------------------------------------ loop
    def train(self, resume_from_checkpoint: str | bool | None = None, **_: Any) -> TrainOutput:
        """Run ``max_steps`` iterations, checkpointing every ``save_steps``; resumable."""
        from tqdm.auto import tqdm

        args: GRPOConfig = self.args
        completions = args.prompts_per_step * args.num_generations
        per_rollout = args.num_iterations * math.ceil(completions / args.per_device_train_batch_size)
        self.create_optimizer_and_scheduler(num_training_steps=args.max_steps * per_rollout)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_valid_checkpoint(args.output_dir)
        if resume_from_checkpoint:
            self._load_grpo_checkpoint(Path(resume_from_checkpoint))
        bar = tqdm(total=args.max_steps, initial=self.iteration, desc="GRPO iterations")
        last: dict[str, float] = {}
        while self.iteration < args.max_steps:
            rollout, log = self.make_rollout()
            log.update(self.grpo_update(rollout))
            if self.nonfinite_stop:
                self.stop_nonfinite()
            last = log
            self.end_iteration(log, bar, self.batches_drawn * args.prompts_per_step / len(self.train_dataset),
                               ("reward", "completion_length", "kl", "lambda"))
        bar.close()
        return TrainOutput(self.iteration, last.get("loss", 0.0), {k: float(v) for k, v in last.items()})

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The final model: the policy adapter in the standard PEFT layout, the log beside it."""
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.adapter.model.save_pretrained(out, selected_adapters=[POLICY], safe_serialization=True)
        if self.cost_funcs:
            (out / LAMBDA_FILE).write_text(json.dumps({"lambda": self.log_lambda.exp().item()}))
        (out / LOG_FILE).write_text(json.dumps(self.state.log_history, indent=1))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(out)
        self.write_run_config(out)

    def save_loop_checkpoint(self) -> None:
        """Adapter, optimiser, scheduler, λ, RNG, prompt position and log: everything a resume needs."""
        with atomic_dir(Path(self.args.output_dir) / f"checkpoint-{self.iteration}", replaces=CHECKPOINT) as tmp:
            self._save(str(tmp))
            self.save_loop_state(tmp)
            (tmp / STATE_FILE).write_text(json.dumps({
                "iteration": self.iteration, "batches_drawn": self.batches_drawn,
                "cost_window": list(self.cost_window), "log_history": self.state.log_history}))

    def _load_grpo_checkpoint(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(path / "adapter_model.safetensors", device=str(self.adapter.device))
        set_peft_model_state_dict(self.adapter.model, weights, adapter_name=POLICY)
        self.load_loop_state(path)
        meta = json.loads((path / STATE_FILE).read_text())
        self.iteration, self.batches_drawn = meta["iteration"], meta["batches_drawn"]
        self.cost_window.extend(meta["cost_window"])
        self.state.log_history = meta["log_history"]
        self.state.global_step = self.iteration


def response_positions(batch: EncodedBatch) -> torch.Tensor:
    """``(N, R)`` mask of each row's response tokens, right-padded (the layout of response log-probs)."""
    lengths = batch.response_lengths
    width = int(lengths.max()) if len(lengths) else 0
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _merge(parts: list[_Sampled], pad_id: int) -> _Sampled:
    """Kept groups of several sampled batches as one."""

    def cat(xs: list[torch.Tensor | None], pad) -> torch.Tensor | None:
        return None if xs[0] is None else pad_cat(xs, pad)

    return _Sampled(
        batch=concat_batches([p.batch for p in parts], pad_id),
        features=concat_features([p.features for p in parts]),
        mask=pad_cat([p.mask for p in parts], False),
        old_logps=cat([p.old_logps for p in parts], 0.0), ref_logps=cat([p.ref_logps for p in parts], 0.0),
        lengths=torch.cat([p.lengths for p in parts]),
        ended=torch.cat([p.ended for p in parts]), rewards=torch.cat([p.rewards for p in parts]),
        per_function={k: torch.cat([p.per_function[k] for p in parts]) for k in parts[0].per_function},
        costs=None if parts[0].costs is None else torch.cat([p.costs for p in parts]),
    )


#: What a GRPO checkpoint carries into a resumed run.
GRPO_KEEPS = ("the policy's weights, the optimizer state, the iteration count and prompt position, λ with its "
              "optimizer and cost window, and the random state")


def load_scorers(adapter: VLMAdapter, args: GRPOConfig) -> dict[str, Any]:
    """Reward / cost models named by the reward and cost functions, on the policy's base."""
    from mmalign.reward import RewardScorer, load_scoring_model

    scorers: dict[str, Any] = {}
    for name, path in (("reward_model", args.reward_model_path), ("cost_model", args.cost_model_path)):
        if name in (*args.reward_funcs, *args.cost_funcs):
            model = load_scoring_model(path, adapter, adapter_name=name.split("_")[0], **args.scoring_options())
            model.backbone = adapter.model
            scorers[name] = RewardScorer(model, batch_size=args.per_device_eval_batch_size, max_length=args.max_length,
                                         name=name.split("_")[0])
    adapter.use_adapter(POLICY)
    return scorers


def check_grpo_inputs(model_config, args: GRPOConfig) -> None:
    """The inputs a GRPO run needs, checked before the policy loads."""
    from mmalign.training import require_paths

    require_paths(model_config, args, "dataset_path")
    if not model_config.use_peft:
        raise ValueError("GRPO trains a LoRA adapter on the base (the reference is the base): set use_peft true")
    check_scorer_paths(args, "reward_model_path", "cost_model_path")


def run_grpo(model_config, args: GRPOConfig) -> Path:
    """Load everything as configured, run GRPO (or Safe GRPO), save the final policy."""
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.training import run_resume_plan, train_and_save

    check_grpo_inputs(model_config, args)
    resume = run_resume_plan(model_config, args, checked=args.resume_checked, keeps=GRPO_KEEPS)
    prompts = load_preference_dataset(args.dataset_path)
    adapter = model_config.load(seed=args.seed, gradient_checkpointing=bool(args.gradient_checkpointing))
    trainer = GRPOTrainer(adapter, args, prompts, scorers=load_scorers(adapter, args))
    return train_and_save(trainer, model_config, args, resume=resume)
