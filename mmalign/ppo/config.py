"""Training arguments for PPO (Fact-RLHF) and Safe RLHF-V's PPO-Lagrangian."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from mmalign.ppo.shaping import ShapingConfig
from mmalign.training import GuardArguments


@dataclass
class PPOConfig(TrainingArguments, ShapingConfig, GuardArguments):
    """``transformers.TrainingArguments`` plus RL options.

    Fact-RLHF's shaping weights are the fields of :class:`ShapingConfig`, applied with
    ``shaping: true``. ``max_steps`` counts PPO iterations: each samples
    ``rollout_batch_size`` prompts, scores the responses and runs ``ppo_epochs`` passes of
    minibatches of ``per_device_train_batch_size`` over them. With ``cost_model_path`` the run is Safe
    RLHF-V's PPO-Lagrangian: a cost critic, and a multiplier λ that grows while the mean
    episode cost exceeds ``cost_threshold``.
    """

    dataset_path: str = field(default="", metadata={"help": "Prompts: a saved datasets folder (images, prompt)."})
    reward_model_path: str = field(default="", metadata={"help": "Trained reward model folder (train rm)."})
    cost_model_path: str | None = field(default=None, metadata={"help": "Trained cost model: Safe RLHF-V PPO."})
    lagrangian: bool = field(
        default=True,
        metadata={"help": "With a cost model: constrain the cost (PPO-Lagrangian); false only scores and logs it."},
    )
    critic_from_reward: bool = field(
        default=True, metadata={"help": "Start the critics from the reward / cost model's LoRA (fresh zero heads)."}
    )
    rollout_batch_size: int = field(
        default=16,
        metadata={"help": "Prompts sampled per PPO iteration (generated and scored per_device_eval_batch_size at a time)."},
    )
    ppo_epochs: int = field(default=2, metadata={"help": "Passes over each rollout batch."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest sampled response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (1 = the full distribution)."})
    kl_coef: float = field(default=0.1, metadata={"help": "β_kl of the per-token KL shaping."})
    clip_range: float = field(default=0.2, metadata={"help": "PPO-clip ε of the policy ratio."})
    value_clip: float | None = field(default=0.2, metadata={"help": "Clip of the value update (Safe RLHF-V: 5)."})
    value_coef: float = field(default=1.0, metadata={"help": "Weight of the critics' losses."})
    gamma: float = field(default=1.0, metadata={"help": "Discount γ."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ (LLaVA-RLHF: 1)."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Normalise advantages per rollout batch."})
    score_clip: float | None = field(default=None, metadata={"help": "Clip reward / cost scores to ±value (50)."})
    target_kl: float | None = field(
        default=None, metadata={"help": "Stop a rollout's PPO epochs once approximate KL exceeds 1.5× this."}
    )
    max_length: int | None = field(default=2048, metadata={"help": "Longest scoring sequence of the reward model."})
    shaping: bool = field(default=False, metadata={"help": "Add Fact-RLHF's shaping terms to the reward."})
    # Safe RLHF-V: PPO-Lagrangian
    cost_threshold: float = field(default=0.0, metadata={"help": "Budget d of the constraint E[cost] ≤ d."})
    lambda_init: float = field(default=1.0, metadata={"help": "Initial multiplier λ."})
    lambda_lr: float = field(default=0.1, metadata={"help": "SGD learning rate of log λ."})
    lambda_max: float | None = field(default=None, metadata={"help": "Upper bound of λ."})
    lambda_update_delay: int = field(default=0, metadata={"help": "Iterations before λ starts to move."})
    episode_cost_window: int = field(default=128, metadata={"help": "Responses in the sliding mean cost J_C."})
    unsafe_cost: float = field(default=0.0, metadata={"help": "A response with cost above this is unsafe."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image and text columns."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N iterations."})
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint every save_steps iterations, or no."})
    save_steps: float = field(default=10, metadata={"help": "Iterations between checkpoints."})

    def __post_init__(self):
        if self.max_steps <= 0:
            raise ValueError("set max_steps: the number of PPO iterations (rollout batches)")
        super().__post_init__()
        if self.rollout_batch_size % self.per_device_train_batch_size:
            raise ValueError("rollout_batch_size must be a multiple of per_device_train_batch_size")

    @property
    def constrained(self) -> bool:
        """PPO-Lagrangian: a cost model that constrains the policy, not only monitors it."""
        return bool(self.cost_model_path) and self.lagrangian
