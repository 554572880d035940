"""Training arguments for PPO (Fact-RLHF) and Safe RLHF-V's PPO-Lagrangian."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from mmalign.config_io import ConfigError, OptionChecks, accepts_aliases
from mmalign.online_rl import EnsembleScoringArguments, LagrangeArguments
from mmalign.ppo.shaping import ShapingConfig
from mmalign.training import GuardArguments, ResumeArguments, check_training_arguments


@accepts_aliases({"dataset_name": "dataset_path"})
@dataclass
class PPOConfig(TrainingArguments, LagrangeArguments, EnsembleScoringArguments, ShapingConfig, GuardArguments, ResumeArguments):
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
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image and text columns."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N iterations."})
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint every save_steps iterations, or no."})
    save_steps: float = field(default=10, metadata={"help": "Iterations between checkpoints."})

    #: harmless on resume for the Trainer methods, but PPO generates per_device_eval_batch_size
    #: rows at a time: another chunking draws other samples
    resume_checked = ("per_device_eval_batch_size",)

    def __post_init__(self):
        """Every option's type and range, and the combinations that cannot train, checked
        before anything loads: one ``ConfigError`` (a ``ValueError``) listing each problem."""
        c = OptionChecks(self)
        check_training_arguments(self, c)
        if c.problems.get("max_steps") or self.max_steps == -1:
            c.problems["max_steps"] = (f"max_steps must be an integer >= 1 (the number of PPO iterations, "
                                       f"rollout batches), got {self.max_steps!r}")
        c.text("dataset_path")
        c.text("reward_model_path")
        c.text("cost_model_path", optional=True)
        for name in ("lagrangian", "critic_from_reward", "whiten_advantages", "shaping"):
            c.flag(name)
        c.number("rollout_batch_size", 1, integer=True)
        c.number("ppo_epochs", 1, integer=True)
        c.number("max_new_tokens", 1, integer=True)
        c.number("temperature", 0, low_open=True)
        c.number("top_p", 0, 1, low_open=True)
        c.number("kl_coef", 0)
        c.number("clip_range", 0, 1, low_open=True, high_open=True)  # the ratio is clipped to [1 - ε, 1 + ε]
        c.number("value_clip", 0, low_open=True, optional=True)
        c.number("value_coef", 0)
        c.number("gamma", 0, 1)
        c.number("lam", 0, 1)
        c.number("score_clip", 0, low_open=True, optional=True)
        c.number("target_kl", 0, low_open=True, optional=True)
        c.number("max_length", 1, integer=True, optional=True)
        for name in ("choice_bonus", "no_bonus", "yes_penalty", "incomplete_penalty"):
            c.number(name, 0)  # signed by the term itself; 0 disables it
        c.number("length_coef")
        c.number("length_multiplier")
        self.check_lagrange(c)
        self.check_ensemble_scoring(c)
        c.choice("save_strategy", ("steps", "no"))
        c.rule(self.gradient_accumulation_steps == 1, "gradient_accumulation_steps",
               "gradient_accumulation_steps must be 1 for PPO: it steps once per minibatch of "
               "per_device_train_batch_size (make rollout_batch_size larger instead)")
        if not c.problems:
            c.rule(self.rollout_batch_size % self.per_device_train_batch_size == 0, "rollout_batch_size",
                   f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                   f"per_device_train_batch_size ({self.per_device_train_batch_size})")
        c.done()
        super().__post_init__()
        processes = self.world_size * self.per_device_train_batch_size
        if self.rollout_batch_size % processes:
            raise ConfigError({"rollout_batch_size": (
                f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of processes "
                f"({self.world_size}) x per_device_train_batch_size ({self.per_device_train_batch_size})")})

    @property
    def constrained(self) -> bool:
        """PPO-Lagrangian: a cost model that constrains the policy, not only monitors it."""
        return bool(self.cost_model_path) and self.lagrangian
