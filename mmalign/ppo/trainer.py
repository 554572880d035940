"""PPO for VLMs (Fact-RLHF shaping) and Safe RLHF-V's PPO-Lagrangian on one shared base.

Every model of the run sits on the same (4-bit) base as its own LoRA adapter, switched in
place: the policy (``default``), the reference (adapters off), the reward and cost models
(frozen adapters + heads) and the critics (trainable adapters + value heads). Nothing is
copied, so a 7B run fits one consumer GPU.

One iteration: sample a response per prompt (full-distribution sampling), score it
(reward model + shaping; cost model), compute per-token log-probs of policy and reference
and the critics' values, shape per-token rewards (KL penalty, score on the last token),
GAE, then ``ppo_epochs`` passes of PPO-clip and clipped value losses over minibatches.
With a cost model, λ moves first (one step of its own optimiser on the sliding mean
episode cost) and the policy follows the combined advantage (A_r − λA_c)/(1 + λ).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import TrainOutput

from mmalign.io import ADAPTER, OutputKind, atomic_dir
from mmalign.losses.ppo import (
    combined_advantage,
    gae,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    shaped_rewards,
)
from mmalign.models import ModelLike, as_adapter, lora_settings_from_peft
from mmalign.models.adapter import VLMAdapter, concat_features
from mmalign.models.batch import EncodedBatch, concat_batches, pad_cat
from mmalign.models.scalar_head import ScalarHeadModel
from mmalign.online_rl import OnlineRLMixin, check_scorer_paths
from mmalign.ppo.config import PPOConfig
from mmalign.ppo.shaping import shaping_terms
from mmalign.qlora import LoraSettings
from mmalign.reward.ensemble import load_scoring_model, scoring_model_path
from mmalign.reward.scoring import RewardScorer
from mmalign.training import (
    NONFINITE_LOG_KEY,
    RecordsRunConfig,
    latest_valid_checkpoint,
)

POLICY = "default"
LAMBDA_FILE = "lagrange.json"
STATE_FILE = "ppo_state.json"
LOG_FILE = "ppo_log.json"  # per-iteration metrics, also in the final folder
#: What a checkpoint save replaces: the same checkpoint of an earlier run (one a resumed run
#: writes again), recognised by its state file or, if that was damaged, its policy adapter.
CHECKPOINT = (OutputKind("PPO checkpoint", (STATE_FILE,)), ADAPTER)
#: per-process sampling seed = seed + stride x rank + iteration: a prime far above any iteration
#: count, so two processes never draw the same seed
PROCESS_SEED_STRIDE = 1_000_003
#: stop a rollout's passes once the approximate KL exceeds this multiple of target_kl
#: (the Spinning Up PPO convention)
EARLY_STOP_KL_FACTOR = 1.5


class PPOModules(torch.nn.Module):
    """Everything trained by PPO, as one module: the policy's model (with every LoRA
    adapter on it) and the critics' heads. The optimizer and a distributed wrapper see
    exactly these parameters."""

    def __init__(self, adapter: VLMAdapter, critics: dict[str, ScalarHeadModel]):
        super().__init__()
        self.backbone = adapter.model
        self.heads = torch.nn.ModuleDict({name: critic.head for name, critic in critics.items()})


@dataclass
class Rollout:
    """One rollout batch: sampled sequences and everything PPO needs about them (on device)."""

    batch: EncodedBatch
    features: dict[str, Any] | None
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    values: dict[str, torch.Tensor]
    returns: dict[str, torch.Tensor]


class PPOTrainer(OnlineRLMixin, RecordsRunConfig, Trainer):
    """PPO / PPO-Lagrangian on an adapter whose policy LoRA is ``default``."""

    method_name = "PPO"

    def __init__(
        self,
        model: ModelLike,
        args: PPOConfig,
        train_dataset,
        reward_model: ScalarHeadModel | None = None,
        cost_model: ScalarHeadModel | None = None,
        critics: dict[str, ScalarHeadModel] | None = None,
        *,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ):
        """``model`` as TRL's trainers take it (a folder or hub id, a ``PreTrainedModel`` with
        ``processing_class``, or an adapter); ``peft_config`` attaches the policy's LoRA
        (:func:`~mmalign.models.as_adapter`). Without ``reward_model`` and ``critics`` they are
        loaded onto the policy's base from ``args.reward_model_path`` / ``cost_model_path``."""
        adapter = as_adapter(model, processing_class=processing_class, peft_config=peft_config,
                             gradient_checkpointing=bool(args.gradient_checkpointing))
        if reward_model is None and critics is None:
            critic_lora = lora_settings_from_peft(peft_config, adapter) if peft_config is not None else None
            reward_model, cost_model, critics = attach_scorers(adapter, args, critic_lora)
        if reward_model is None:
            raise ValueError("reward_model: pass the reward model built on this policy's base, or neither it nor "
                             "critics (both are then loaded from args.reward_model_path)")
        if critics is None or "reward" not in critics or (args.constrained and "cost" not in critics):
            raise ValueError("critics must hold a 'reward' critic (and a 'cost' critic for PPO-Lagrangian)")
        if args.constrained and cost_model is None:
            raise ValueError("PPO-Lagrangian needs the cost model")
        if args.rollout_batch_size % (args.world_size * args.per_device_train_batch_size):
            raise ValueError(f"rollout_batch_size ({args.rollout_batch_size}) must be a multiple of processes "
                             f"({args.world_size}) x per_device_train_batch_size ({args.per_device_train_batch_size})")
        self.adapter = adapter
        self.reward_model, self.cost_model, self.critics = reward_model, cost_model, critics
        for scorer in (reward_model, cost_model):
            if scorer is not None:
                scorer.eval()
        self.reward_scorer = RewardScorer(reward_model, batch_size=args.per_device_eval_batch_size,
                                          max_length=args.max_length, name="reward")
        self.cost_scorer = (RewardScorer(cost_model, batch_size=args.per_device_eval_batch_size,
                                         max_length=args.max_length, name="cost") if cost_model else None)
        self.init_loop_state(args)
        super().__init__(model=PPOModules(adapter, critics), args=args, train_dataset=train_dataset,
                         data_collator=lambda rows: rows, processing_class=adapter.processor, **kwargs)

    # ------------------------------------------------------------------ data
    def _prompt_batches(self, start: int):
        """Rollout batches of rows in a seeded order; batch k is the same on a resumed run.

        With several processes each takes every N-th row of the batch, so together they
        roll out the ``rollout_batch_size`` prompts a single process would.
        """
        n, size = len(self.train_dataset), self.args.rollout_batch_size
        per_epoch = max(n // size, 1)
        k = start
        while True:
            epoch, index = divmod(k, per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch)).tolist()
            picked = order[index * size : (index + 1) * size]
            if len(picked) < size:  # fewer prompts than a batch: wrap around
                picked = (order * (size // max(n, 1) + 1))[:size]
            yield [self.train_dataset[i] for i in picked[self.args.process_index :: self.args.world_size]]
            k += 1

    # ------------------------------------------------------------------ rollout
    def _scores(self, rows: list[dict[str, Any]], texts: list[str], ended: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        images = [r.get("images") or [] for r in rows]
        prompts = [r["prompt"] for r in rows]
        facts = [r.get("facts") for r in rows]
        rm = torch.tensor(self.reward_scorer(images, prompts, texts, facts))
        stats: dict[str, Any] = {"reward_model": rm}
        total = rm.clone()
        if self.args.shaping:
            terms = [shaping_terms(t, bool(e), int(n), self.args.max_new_tokens, r.get("reference"), self.args)
                     for t, e, n, r in zip(texts, ended, lengths, rows)]
            for name in terms[0]:
                stats[f"shaping/{name}"] = torch.tensor([t[name] for t in terms])
                total += stats[f"shaping/{name}"]
        if self.cost_scorer is not None:
            stats["cost"] = torch.tensor(self.cost_scorer(images, prompts, texts, facts))
        return total, stats

    @torch.no_grad()
    def make_rollout(self, rows: list[dict[str, Any]]) -> tuple[Rollout, dict[str, float]]:
        """Sample, score and evaluate a rollout batch, ``per_device_eval_batch_size`` rows at a time.

        Chunking bounds the generation KV cache and the no-grad forwards (for a 7B model
        the cache of 16 rows of 1,200 tokens alone would take about 10 GB).
        """
        args: PPOConfig = self.args
        adapter = self.adapter
        chunks: list[dict[str, Any]] = []
        for lo in range(0, len(rows), args.per_device_eval_batch_size):
            part = rows[lo : lo + args.per_device_eval_batch_size]
            adapter.use_adapter(POLICY)
            adapter.model.eval()
            samples = adapter.sample([r.get("images") or [] for r in part], [r["prompt"] for r in part],
                                     max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                     top_p=args.top_p)
            batch = samples.batch.to(adapter.device)
            features = adapter.image_features(batch)
            logps, mask, entropy = adapter.response_logprobs(batch, features, with_entropy=True)
            with adapter.adapters_disabled():
                ref_logps, _ = adapter.response_logprobs(batch, features)
            values = {name: critic.values(batch, features)[0] for name, critic in self.critics.items()}
            chunks.append({"samples": samples, "batch": batch, "features": features, "logps": logps,
                           "mask": mask, "entropy": entropy, "ref": ref_logps, "values": values})
        adapter.use_adapter(POLICY)
        batch = concat_batches([c["batch"] for c in chunks], adapter.tokenizer.pad_token_id)
        features = concat_features([c["features"] for c in chunks])
        logps, ref_logps, entropy = (pad_cat([c[k] for c in chunks], 0.0) for k in ("logps", "ref", "entropy"))
        mask = pad_cat([c["mask"] for c in chunks], False)
        texts = [t for c in chunks for t in c["samples"].texts]
        ended = torch.cat([c["samples"].ended for c in chunks])
        lengths = torch.cat([c["samples"].lengths for c in chunks])
        scores, stats = self._scores(rows, texts, ended, lengths)
        device = logps.device
        rewards, kl = shaped_rewards(logps, ref_logps, mask, scores.to(device), args.kl_coef, clip=args.score_clip)
        streams = {"reward": rewards}
        if args.constrained:
            streams["cost"], _ = shaped_rewards(logps, ref_logps, mask, stats["cost"].to(device), args.kl_coef,
                                                sign=1.0, clip=args.score_clip)
        values, returns, advantages = {}, {}, {}
        for name, per_token in streams.items():
            values[name] = pad_cat([c["values"][name] for c in chunks], 0.0)
            advantages[name], returns[name] = gae(per_token, values[name], mask, args.gamma, args.lam)
        lam = self.update_lambda(stats["cost"]) if args.constrained else 0.0
        advantage = advantages["reward"]
        if args.constrained:
            advantage = combined_advantage(advantages["reward"], advantages["cost"], lam)
        if args.whiten_advantages:
            advantage = self._whiten(advantage, mask)
        log = {
            "reward": float(scores.mean()),
            "reward_model": float(stats["reward_model"].mean()),
            "kl": float((kl * mask).sum(-1).mean()),
            "entropy": float(masked_mean(entropy, mask)),
            "response_length": float(lengths.float().mean()),
            "ended_rate": float(ended.float().mean()),
        }
        log.update({k: float(v.mean()) for k, v in stats.items() if k.startswith("shaping/")})
        if self.cost_model is not None:
            log.update({"cost": float(stats["cost"].mean()),
                        "unsafe_rate": float((stats["cost"] > args.unsafe_cost).float().mean())})
        if args.constrained:
            log.update({"lambda": float(lam), "episode_cost": sum(self.cost_window) / len(self.cost_window)})
        for name, scorer in (("reward_model", self.reward_scorer), ("cost", self.cost_scorer)):
            if scorer is not None and scorer.last_spread is not None:  # an ensemble: how much its members disagree
                log[f"spread/{name}"] = scorer.last_spread
        return Rollout(batch, features, mask, logps, advantage, values, returns), log

    # ------------------------------------------------------------------ several processes
    def _whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``masked_whiten`` over the rollout of all processes (mean and variance of every token)."""
        if self.accelerator.num_processes == 1:
            return masked_whiten(x, mask)
        real = mask.bool()
        count = mask.sum().to(x.dtype)
        total, n = self.sum_over_processes(torch.stack([torch.where(real, x, 0).sum(), count])).tolist()
        mean = total / max(n, 1.0)
        squares = self.sum_over_processes(torch.where(real, x - mean, 0).pow(2).sum().reshape(1))
        var = squares.item() / max(n, 1.0)
        return (x - mean) * (var + 1e-8) ** -0.5 * mask.to(x.dtype)

    def _average_gradients(self) -> None:
        """All-reduce the gradients (one flat buffer): every process takes the same step."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = self.sum_over_processes(torch.cat([g.reshape(-1) for g in grads])) / self.accelerator.num_processes
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _mean_log(self, log: dict[str, float]) -> dict[str, float]:
        """Per-process statistics averaged over processes (equal rollout shares, so equal weights)."""
        if self.accelerator.num_processes == 1:
            return log
        values = self.sum_over_processes(torch.tensor(list(log.values()), dtype=torch.float64))
        return {k: v / self.accelerator.num_processes for k, v in zip(log, values.tolist())}

    # ------------------------------------------------------------------ update
    def ppo_update(self, rollout: Rollout) -> dict[str, float]:
        args: PPOConfig = self.args
        adapter = self.adapter
        n = rollout.batch.input_ids.shape[0]
        sums: dict[str, float] = {}
        steps = good = 0
        stop = False
        for _ in range(args.ppo_epochs):
            order = torch.randperm(n).tolist()
            for lo in range(0, n, args.per_device_train_batch_size):
                rows = order[lo : lo + args.per_device_train_batch_size]
                batch, features = adapter.select(rollout.batch, rows, rollout.features)
                mask = rollout.mask[rows]
                adapter.use_adapter(POLICY)
                adapter.model.train()
                logps, _ = adapter.response_logprobs(batch, features)
                width = logps.shape[1]
                policy = ppo_policy_loss(logps, rollout.old_logprobs[rows, :width], rollout.advantages[rows, :width],
                                         mask[:, :width], args.clip_range)
                self.accelerator.backward(policy.loss)
                stats = {"loss/policy": policy.loss.item(), "clip_fraction": policy.clip_fraction.item(),
                         "approx_kl": policy.approx_kl.item()}
                for name, critic in self.critics.items():
                    values, _ = critic.values(batch, features)
                    loss = ppo_value_loss(values, rollout.values[name][rows, :width],
                                          rollout.returns[name][rows, :width], mask[:, :width], args.value_clip)
                    self.accelerator.backward(args.value_coef * loss)
                    stats[f"loss/value_{name}"] = loss.item()
                self._average_gradients()
                steps += 1
                if not self.take_step(stats, sums):
                    if self.nonfinite_stop:
                        break
                    continue
                good += 1
                if (args.target_kl is not None  # decided on the kl of all processes, so all stop together
                        and self.sum_over_processes(policy.approx_kl.detach().reshape(1)).item()
                        > EARLY_STOP_KL_FACTOR * args.target_kl * self.accelerator.num_processes):
                    stop = True
                    break
            if stop or self.nonfinite_stop:
                break
        adapter.use_adapter(POLICY)
        out = {k: v / good for k, v in sums.items()}
        out["ppo_steps"] = steps
        out["early_stopped"] = float(stop)
        out[NONFINITE_LOG_KEY] = self.nonfinite_skipped
        return out

    # ------------------------------------------------------------------ loop
    def train(self, resume_from_checkpoint: str | bool | None = None, **_: Any) -> TrainOutput:
        """Run ``max_steps`` PPO iterations, checkpointing every ``save_steps``; resumable."""
        from tqdm.auto import tqdm

        args: PPOConfig = self.args
        local_rollout = args.rollout_batch_size // args.world_size
        per_rollout = args.ppo_epochs * math.ceil(local_rollout / args.per_device_train_batch_size)
        self.create_optimizer_and_scheduler(num_training_steps=args.max_steps * per_rollout)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_valid_checkpoint(args.output_dir)
        if resume_from_checkpoint:
            self._load_ppo_checkpoint(Path(resume_from_checkpoint))
        batches = self._prompt_batches(self.iteration)
        bar = tqdm(total=args.max_steps, initial=self.iteration, desc="PPO iterations",
                   disable=not self.is_world_process_zero())
        last: dict[str, float] = {}
        while self.iteration < args.max_steps:
            if args.world_size > 1:
                # each process samples its own responses; seeded by iteration so a resume replays them
                torch.manual_seed(args.seed + PROCESS_SEED_STRIDE * args.process_index + self.iteration)
            rollout, log = self.make_rollout(next(batches))
            log.update(self.ppo_update(rollout))
            if self.nonfinite_stop:
                self.stop_nonfinite()
            log = self._mean_log(log)
            last = log
            self.end_iteration(log, bar, (self.iteration + 1) * args.rollout_batch_size / len(self.train_dataset),
                               ("reward", "kl", "cost", "lambda"))
        bar.close()
        return TrainOutput(self.iteration, last.get("loss/policy", 0.0), {k: float(v) for k, v in last.items()})

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The final model: the policy adapter in the standard PEFT layout, critics beside it."""
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.adapter.model.save_pretrained(out, selected_adapters=[POLICY], safe_serialization=True)
        for name, critic in self.critics.items():
            folder = out / "critics" / name
            folder.mkdir(parents=True, exist_ok=True)
            _save_head(critic, folder)
            self.adapter.model.save_pretrained(folder / "lora", selected_adapters=[critic.adapter_name],
                                               safe_serialization=True)
        if self.args.constrained:
            (out / LAMBDA_FILE).write_text(json.dumps({"lambda": self.log_lambda.exp().item()}))
        (out / LOG_FILE).write_text(json.dumps(self.state.log_history, indent=1))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(out)
        self.write_run_config(out)  # a checkpoint's settings, compared when a run resumes from it

    def save_loop_checkpoint(self) -> None:
        """Adapters, heads, optimiser, scheduler, λ and its window, RNG, log: everything a resume needs."""
        with atomic_dir(Path(self.args.output_dir) / f"checkpoint-{self.iteration}", replaces=CHECKPOINT) as tmp:
            self._save(str(tmp))
            self.save_loop_state(tmp)
            (tmp / STATE_FILE).write_text(json.dumps({
                "iteration": self.iteration, "cost_window": list(self.cost_window),
                "log_history": self.state.log_history}))

    def _load_ppo_checkpoint(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        device = str(self.adapter.device)
        set_peft_model_state_dict(self.adapter.model, load_file(path / "adapter_model.safetensors", device=device),
                                  adapter_name=POLICY)
        for name, critic in self.critics.items():
            folder = path / "critics" / name
            lora = folder / "lora" / critic.adapter_name / "adapter_model.safetensors"
            if not lora.exists():
                lora = folder / "lora" / "adapter_model.safetensors"
            set_peft_model_state_dict(self.adapter.model, load_file(lora, device=device),
                                      adapter_name=critic.adapter_name)
            critic.head.load_state_dict(load_file(folder / "value_head.safetensors", device=device))
        self.load_loop_state(path)
        meta = json.loads((path / STATE_FILE).read_text())
        self.iteration = meta["iteration"]
        self.cost_window.extend(meta["cost_window"])
        self.state.log_history = meta["log_history"]
        self.state.global_step = self.iteration


def _save_head(critic: ScalarHeadModel, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in critic.head.state_dict().items()},
              folder / "value_head.safetensors")


def build_models(model_config, args: PPOConfig):
    """Policy (LoRA ``default``), reward / cost models and critics, all on one base."""
    if not model_config.use_peft:
        raise ValueError("PPO trains LoRA adapters on a shared base: set use_peft true")
    adapter = model_config.load(seed=args.seed, gradient_checkpointing=bool(args.gradient_checkpointing))
    return adapter, *attach_scorers(adapter, args, model_config.lora(adapter.card))


def attach_scorers(adapter: VLMAdapter, args: PPOConfig, critic_lora: LoraSettings | None = None):
    """Reward / cost models and critics loaded onto the policy's base (its LoRA ``default``);
    a critic not started from its scorer gets fresh LoRA of ``critic_lora`` (default: the card's)."""
    from peft import PeftModel

    if not isinstance(adapter.model, PeftModel) or POLICY not in adapter.model.peft_config:
        raise ValueError(f"PPO trains LoRA adapters on a shared base: the policy needs its LoRA adapter "
                         f"{POLICY!r} (pass peft_config, or a model with LoRA)")
    if not args.reward_model_path:
        raise ValueError("reward_model_path is required (or pass reward_model= and critics=)")
    reward = load_scoring_model(args.reward_model_path, adapter, adapter_name="reward", **args.scoring_options())
    cost = (load_scoring_model(args.cost_model_path, adapter, adapter_name="cost", **args.scoring_options())
            if args.cost_model_path else None)
    critics = {}
    for name, source in (("reward", args.reward_model_path), ("cost", args.cost_model_path)):
        if source is None or (name == "cost" and not args.constrained):
            continue
        critic_name = f"{name}_critic"
        if args.critic_from_reward:  # an ensemble's critic starts from its first member
            critic = ScalarHeadModel.from_pretrained(scoring_model_path(source), adapter, is_trainable=True,
                                                     adapter_name=critic_name)
        else:
            adapter.add_lora(critic_lora or adapter.card.lora, adapter_name=critic_name)
            critic = ScalarHeadModel(adapter, kind="value")
            critic.adapter_name = critic_name
        critic.kind = "value"
        with torch.no_grad():  # a fresh value head (LLaVA-RLHF: value model = reward model + new head)
            critic.head.weight.zero_()
            critic.head.bias.zero_()
        critic.head.requires_grad_(True)
        critics[name] = critic
    for model in (reward, cost, *critics.values()):
        if model is not None:
            model.backbone = adapter.model
    adapter.use_adapter(POLICY)
    return reward, cost, critics


#: What a PPO checkpoint carries into a resumed run.
PPO_KEEPS = ("the policy's and critics' weights, the optimizer state, the iteration count (the schedule "
             "continues from there), λ with its optimizer and cost window, and the random state")


def check_ppo_inputs(model_config, args: PPOConfig) -> None:
    """The inputs a PPO run needs, checked before the policy loads: model, prompts and the
    reward (and cost) model folders."""
    from mmalign.training import require_paths

    require_paths(model_config, args, "dataset_path", "reward_model_path")
    if not model_config.use_peft:
        raise ValueError("PPO trains LoRA adapters on a shared base: set use_peft true")
    check_scorer_paths(args, "reward_model_path", "cost_model_path")


def run_ppo(model_config, args: PPOConfig) -> Path:
    """Load everything as configured, run PPO (or PPO-Lagrangian), save the final policy.

    Every check (options, inputs, resume, prompts) comes before the models load and
    anything is written."""
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.training import run_resume_plan, train_and_save

    check_ppo_inputs(model_config, args)
    resume = run_resume_plan(model_config, args, checked=args.resume_checked, keeps=PPO_KEEPS)
    prompts = load_preference_dataset(args.dataset_path)  # a prompt set: images, prompt, facts, reference
    adapter, reward, cost, critics = build_models(model_config, args)
    trainer = PPOTrainer(adapter, args, prompts, reward, cost, critics)
    return train_and_save(trainer, model_config, args, resume=resume)
