"""Training arguments for the GRPO family (GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++)
and its safety-constrained variant (group advantages of a cost, PPO-Lagrangian's λ)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from mmalign.config_io import ConfigError, OptionChecks, accepts_aliases
from mmalign.losses.grpo import ADVANTAGE_ESTIMATORS, IMPORTANCE_LEVELS, LOSS_AGGREGATIONS
from mmalign.online_rl import EnsembleScoringArguments, LagrangeArguments
from mmalign.training import GuardArguments, ResumeArguments, check_training_arguments


@accepts_aliases({"dataset_name": "dataset_path", "max_completion_length": "max_new_tokens",
                  "importance_sampling_level": "importance_level"})
@dataclass
class GRPOConfig(TrainingArguments, LagrangeArguments, EnsembleScoringArguments, GuardArguments, ResumeArguments):
    """``transformers.TrainingArguments`` plus the group-RL options.

    ``max_steps`` counts iterations: each samples ``num_generations`` completions for each of
    ``prompts_per_step`` prompts, scores them with the reward functions, computes group
    advantages and runs ``num_iterations`` passes (μ) of minibatches of
    ``per_device_train_batch_size`` completions over them. With a cost (``cost_funcs``) and
    ``cost_threshold`` the run is Safe GRPO: the policy follows (A_r − λ·A_c) / (1 + λ) and
    λ grows while the mean cost exceeds the threshold (``lagrangian: false`` only logs the cost).
    """

    dataset_path: str = field(default="", metadata={"help": "Prompts: a saved prompt set (images, prompt, ...)."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["object_f1"],
        metadata={"help": "Reward functions by name (object_f1, object_precision, object_recall, answer_match, "
                          "reward_model, format, length) or as module:function paths."},
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (default: all 1)."})
    reward_model_path: str | None = field(
        default=None, metadata={"help": "A trained mmalign reward model (plain or Fact-RM), for the reward_model reward."})
    cost_funcs: list[str] = field(
        default_factory=list, metadata={"help": "Cost functions (cost_model or module:function) for Safe GRPO."})
    cost_model_path: str | None = field(default=None, metadata={"help": "A trained cost model, for cost_model."})
    lagrangian: bool = field(
        default=True, metadata={"help": "With cost_funcs: constrain the policy by λ (Safe GRPO); false only logs "
                                        "the cost (a reward-only run to compare against)."})
    num_generations: int = field(default=4, metadata={"help": "Completions sampled per prompt (the group size G)."})
    prompts_per_step: int = field(default=8, metadata={"help": "Prompts per iteration (completions: × G)."})
    num_iterations: int = field(default=1, metadata={"help": "Passes μ over each rollout batch."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest sampled completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (1 = the full distribution)."})
    advantage_estimator: str = field(
        default="grpo", metadata={"help": "grpo (mean/std), dr_grpo (no std), rloo (leave-one-out), "
                                          "reinforce_pp (group mean, batch whitening)."})
    loss_aggregation: str = field(
        default="sequence_mean", metadata={"help": "sequence_mean (GRPO), token_mean (DAPO), constant (Dr. GRPO)."})
    importance_level: str = field(default="token", metadata={"help": "token (GRPO) or sequence (GSPO) ratios."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip ε_low of the ratio."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip ε_high (DAPO clip-higher: 0.28)."})
    beta: float = field(default=0.0, metadata={"help": "Weight of the k3 KL to the reference (adapters off)."})
    share_prefix: bool | None = field(
        default=None, metadata={"help": "Prefill each prompt once for its G samples (one vision-tower pass, one "
                                        "shared key/value cache) and score a group's answers in one row that holds "
                                        "the prompt once (None: where the family allows it, which every "
                                        "shipped family does)."})
    dynamic_sampling: bool = field(
        default=False, metadata={"help": "DAPO: drop groups whose rewards are all equal and refill from more prompts."})
    max_refill_batches: int = field(
        default=2, metadata={"help": "Extra prompt batches a dynamic-sampling iteration may draw to refill."})
    overlong_buffer: int = field(
        default=0, metadata={"help": "DAPO soft overlong penalty over the last N tokens before max_new_tokens (0: off)."})
    overlong_penalty: float = field(default=1.0, metadata={"help": "Penalty at max_new_tokens."})
    length_target_words: int = field(default=40, metadata={"help": "Words for full credit of the length reward."})
    object_vocabulary: str = field(
        default="auto", metadata={"help": "Object words of the grounding rewards: coco, instances (the prompt set's "
                                          "objects), auto (coco if every object is a COCO category)."})
    max_length: int | None = field(default=2048, metadata={"help": "Longest scoring sequence of reward/cost models."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image and text columns."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N iterations."})
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint every save_steps iterations, or no."})
    save_steps: float = field(default=10, metadata={"help": "Iterations between checkpoints."})

    #: GRPO generates per_device_eval_batch_size completions at a time: another chunking draws other samples
    resume_checked = ("per_device_eval_batch_size",)

    def __post_init__(self):
        """Every option's type and range checked before anything loads (one ``ConfigError``)."""
        c = OptionChecks(self)
        check_training_arguments(self, c)
        if c.problems.get("max_steps") or self.max_steps == -1:
            c.problems["max_steps"] = (f"max_steps must be an integer >= 1 (the number of GRPO iterations), "
                                       f"got {self.max_steps!r}")
        c.text("dataset_path")
        c.text("reward_model_path", optional=True)
        c.text("cost_model_path", optional=True)
        c.flag("dynamic_sampling")
        c.flag("lagrangian")
        c.flag("share_prefix", optional=True)
        c.number("num_generations", 2, integer=True)
        c.number("prompts_per_step", 1, integer=True)
        c.number("num_iterations", 1, integer=True)
        c.number("max_new_tokens", 1, integer=True)
        c.number("temperature", 0, low_open=True)
        c.number("top_p", 0, 1, low_open=True)
        c.choice("advantage_estimator", ADVANTAGE_ESTIMATORS)
        c.choice("loss_aggregation", LOSS_AGGREGATIONS)
        c.choice("importance_level", IMPORTANCE_LEVELS)
        c.number("epsilon", 0, 1, low_open=True, high_open=True)
        c.number("epsilon_high", 0, low_open=True, optional=True)
        c.number("beta", 0)
        c.number("max_refill_batches", 0, integer=True)
        c.number("overlong_buffer", 0, integer=True)
        c.number("overlong_penalty", 0)
        c.number("length_target_words", 1, integer=True)
        c.choice("object_vocabulary", ("auto", "coco", "instances"))
        self.check_lagrange(c)
        self.check_ensemble_scoring(c)
        c.number("max_length", 1, integer=True, optional=True)
        c.choice("save_strategy", ("steps", "no"))
        c.rule(self.gradient_accumulation_steps == 1, "gradient_accumulation_steps",
               "gradient_accumulation_steps must be 1 for GRPO: it steps once per minibatch of "
               "per_device_train_batch_size completions (make prompts_per_step larger instead)")
        c.rule(bool(self.reward_funcs), "reward_funcs", "reward_funcs needs at least one reward function")
        if not c.problems:
            c.rule(self.reward_weights is None or len(self.reward_weights) == len(self.reward_funcs),
                   "reward_weights", f"reward_weights has {len(self.reward_weights or [])} entries for "
                                     f"{len(self.reward_funcs)} reward functions")
            c.rule("reward_model" not in self.reward_funcs or bool(self.reward_model_path), "reward_model_path",
                   "the reward_model reward needs reward_model_path")
            c.rule("cost_model" not in self.cost_funcs or bool(self.cost_model_path), "cost_model_path",
                   "the cost_model cost needs cost_model_path")
            c.rule(self.overlong_buffer <= self.max_new_tokens, "overlong_buffer",
                   f"overlong_buffer ({self.overlong_buffer}) cannot exceed max_new_tokens ({self.max_new_tokens})")
        c.done()
        super().__post_init__()
        if self.share_prefix and self.per_device_train_batch_size % self.num_generations:
            raise ConfigError({"per_device_train_batch_size": (
                f"with share_prefix a minibatch holds whole groups: per_device_train_batch_size "
                f"({self.per_device_train_batch_size}) must be a multiple of num_generations ({self.num_generations})")})
        completions = self.prompts_per_step * self.num_generations
        if completions % (self.world_size * self.per_device_train_batch_size):
            raise ConfigError({"prompts_per_step": (
                f"prompts_per_step × num_generations ({completions}) must be a multiple of processes "
                f"({self.world_size}) x per_device_train_batch_size ({self.per_device_train_batch_size})")})

    @property
    def constrained(self) -> bool:
        """Safe GRPO: a cost that constrains the policy (not only logged)."""
        return bool(self.cost_funcs) and self.lagrangian
