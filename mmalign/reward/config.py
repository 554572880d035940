"""Training arguments for reward and cost models."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from mmalign.config_io import OptionChecks, accepts_aliases
from mmalign.losses.reward import ENSEMBLE_AGGREGATIONS
from mmalign.training import GuardArguments, ResumeArguments, check_training_arguments

KINDS = ("reward", "cost")
COST_SIGNS = ("label", "graded", "none")
FACTS_POSITIONS = ("evaluation", "prompt")


@accepts_aliases({"dataset_name": "dataset_path"})
@dataclass
class RewardConfig(TrainingArguments, GuardArguments, ResumeArguments):
    """``transformers.TrainingArguments`` plus scalar preference-model options.

    ``kind: reward`` trains a Bradley–Terry reward model on the helpfulness preference
    (``more_helpful``, else ``chosen`` over ``rejected``); ``kind: cost`` trains Safe RLHF's
    cost model on the safety preference (``safer``) with a sign term from the safe labels
    (``cost_signs: label``) or the graded harmlessness ratings (``graded``, Safe RLHF-V).
    ``use_facts`` turns the scoring prompt into Fact-RLHF's factually augmented one.
    """

    dataset_path: str = field(default="", metadata={"help": "Preference data: a saved datasets folder."})
    eval_dataset_path: str | None = field(default=None, metadata={"help": "Optional held-out pairs."})
    kind: str = field(default="reward", metadata={"help": "reward (helpfulness) or cost (safety, > 0 = unsafe)."})
    use_facts: bool = field(default=False, metadata={"help": "List the record's facts in the scoring prompt."})
    facts_position: str = field(
        default="evaluation",
        metadata={"help": "evaluation (Fact-RLHF: after the answer) or prompt (before the question)."},
    )
    template_file: str | None = field(
        default=None, metadata={"help": "YAML file overriding fields of the scoring template (RewardTemplate)."}
    )
    facts_seed: int = field(default=0, metadata={"help": "Seed of the per-use shuffling of the facts."})
    center_weight: float = field(default=0.0, metadata={"help": "Weight of |mean(r_w + r_l)| (LLaVA-RLHF: 1e-3)."})
    l2_weight: float = field(default=1e-3, metadata={"help": "Weight η of mean(score²) (Safe RLHF: 1e-3)."})
    cost_signs: str = field(
        default="label",
        metadata={"help": "Cost sign term: label (±1 from *_is_safe), graded (−harmless_rate) or none."},
    )
    max_length: int | None = field(default=2048, metadata={"help": "Longest scoring sequence, image tokens included."})
    ensemble_size: int = field(
        default=1, metadata={"help": "Members K: > 1 trains K models (seeds seed..seed+K-1) saved as one ensemble."})
    ensemble_bootstrap: bool = field(
        default=True, metadata={"help": "Each member trains on its own bootstrap sample of the pairs."})
    ensemble_aggregation: str = field(
        default="mean", metadata={"help": "The ensemble's default score: mean, worst_case (min for a reward, max "
                                          "for a cost) or uncertainty_weighted (mean -/+ uncertainty_weight * var)."})
    uncertainty_weight: float = field(default=1.0, metadata={"help": "λ of uncertainty_weighted."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image and text columns."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no, steps, epoch."})

    def __post_init__(self):
        """Every option's type and range, and the combinations that cannot train, checked
        before anything loads: one ``ConfigError`` (a ``ValueError``) listing each problem."""
        c = OptionChecks(self)
        check_training_arguments(self, c)
        c.text("dataset_path")
        c.text("eval_dataset_path", optional=True)
        c.choice("kind", KINDS)
        c.flag("use_facts")
        c.choice("facts_position", FACTS_POSITIONS)
        c.text("template_file", optional=True)
        c.number("facts_seed", integer=True)
        c.number("center_weight", 0)
        c.number("l2_weight", 0)
        c.choice("cost_signs", COST_SIGNS)
        c.number("max_length", 1, integer=True, optional=True)
        c.number("ensemble_size", 1, integer=True)
        c.flag("ensemble_bootstrap")
        c.choice("ensemble_aggregation", ENSEMBLE_AGGREGATIONS)
        c.number("uncertainty_weight", 0)
        if not c.problems:
            c.rule(not (self.center_weight and self.kind == "cost"), "center_weight",
                   "center_weight regularises reward models only (the cost loss has a sign term instead): "
                   "set it to 0 for kind cost")
        c.done()
        super().__post_init__()
