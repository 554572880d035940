"""Training arguments for the DPO family and Dense DPO."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from mmalign.config_io import OptionChecks, accepts_aliases
from mmalign.data_builders.corruptions import CORRUPTIONS
from mmalign.dpo.collator import ImageCorruption
from mmalign.losses.dpo import PREFERENCE_LOSSES, REFERENCE_FREE_LOSSES
from mmalign.training import GuardArguments, ResumeArguments, check_training_arguments

#: the losses that take label noise ε (conservative DPO and robust DPO)
SMOOTHED_LOSSES = ("sigmoid", "ddpo", "robust")


@accepts_aliases({"dataset_name": "dataset_path", "precompute_ref_log_probs": "precompute_ref_logps"})
@dataclass
class DPOConfig(TrainingArguments, GuardArguments, ResumeArguments):
    """``transformers.TrainingArguments`` plus preference-optimisation options.

    The defaults reproduce plain DPO (sigmoid loss, β = 0.1, summed log-probs). For
    RLHF-V's Dense DPO set ``loss_type: ddpo`` and ``gamma`` (> 1 up-weights corrected
    segments; the paper used γ = 5 with ``ddpo_normalize``, later runs γ = 1.1 without).
    """

    dataset_path: str = field(default="", metadata={"help": "Preference data: a saved datasets folder."})
    eval_dataset_path: str | None = field(default=None, metadata={"help": "Optional evaluation data."})
    beta: float = field(default=0.1, metadata={"help": "Preference temperature β (IPO: the regulariser τ)."})
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": "sigmoid, ipo, hinge, robust, ddpo, bco_pair, mdpo, simpo, orpo or sft; several (a list, "
                          "or comma-separated) are mixed with loss_weights, e.g. MPO: sigmoid,bco_pair,sft."})
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per loss in loss_type (default: all 1)."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO target margin γ (beta is SimPO's β)."})
    mdpo_conditional_weight: float = field(
        default=1.0, metadata={"help": "mDPO: weight of the conditional term (chosen answer, true vs corrupted image)."})
    mdpo_anchor_weight: float = field(
        default=1.0, metadata={"help": "mDPO: weight of the reward anchor that keeps the chosen reward above mdpo_anchor."})
    mdpo_anchor: float = field(default=0.0, metadata={"help": "mDPO: the anchor δ of −log σ(β h_w − δ)."})
    mdpo_corruption: str = field(
        default="crop", metadata={"help": "mDPO: how the image is corrupted: " + ", ".join(CORRUPTIONS) + "."})
    mdpo_corruption_strength: float = field(
        default=0.8, metadata={"help": "mDPO: corruption strength in [0, 1] (crop: share of each side cut away)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label noise ε (conservative DPO / robust)."})
    gamma: float = field(default=1.0, metadata={"help": "Dense DPO weight of tokens in corrected segments."})
    ddpo_normalize: bool = field(default=False, metadata={"help": "Divide Dense DPO scores by N = |y_u| + γ|y_c|."})
    sft_weight: float = field(default=0.0, metadata={"help": "Weight α of an NLL term on the chosen response."})
    dynamic_beta: bool = field(default=False, metadata={"help": "MM-DPO: per-pair β from the 'reward_margin' column."})
    dynamic_beta_weight: float = field(default=0.5, metadata={"help": "MM-DPO w in β(δ) = β(1 + w(1 − e^(−kδ)))."})
    dynamic_beta_k: float = field(default=0.5, metadata={"help": "MM-DPO k in β(δ)."})
    reference_model_path: str | None = field(
        default=None,
        metadata={"help": "Separate reference model; default: the policy's base with LoRA adapters disabled."},
    )
    precompute_ref_logps: bool = field(
        default=False, metadata={"help": "Compute reference log-probs once before training and reuse them."}
    )
    cache_image_features: bool = field(
        default=True, metadata={"help": "Run the frozen vision tower once per pair instead of four times."}
    )
    image_feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Also keep image features on disk here, reused across epochs and runs "
                          "(frozen vision tower and projector; needs cache_image_features)."},
    )
    share_prefix: bool = field(
        default=False,
        metadata={"help": "One forward over [image+prompt, chosen, rejected] (LLaVA families)."},
    )
    max_length: int | None = field(default=2048, metadata={"help": "Longest sequence in tokens, image tokens included."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image and text columns."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no, steps, epoch."})

    def __post_init__(self):
        """Every option's type and range, and the combinations that cannot train, checked
        before anything loads: one ``ConfigError`` (a ``ValueError``) listing each problem."""
        if isinstance(self.loss_type, (list, tuple)):  # TRL's form: a list of losses
            self.loss_type = ",".join(map(str, self.loss_type))
        c = OptionChecks(self)
        check_training_arguments(self, c)
        c.text("dataset_path")
        c.text("eval_dataset_path", optional=True)
        c.number("beta", 0, low_open=True)  # β ≤ 0 removes or flips the preference; IPO divides by it
        unknown = [t for t in self.loss_types if t not in PREFERENCE_LOSSES]
        c.rule(not unknown and bool(self.loss_types), "loss_type",
               f"loss_type must be one or more of {', '.join(PREFERENCE_LOSSES)}, got {self.loss_type!r}")
        c.rule(self.loss_weights is None or len(self.loss_weights) == len(self.loss_types), "loss_weights",
               f"loss_weights has {len(self.loss_weights or [])} entries for {len(self.loss_types)} losses")
        c.number("simpo_gamma", 0)
        c.number("mdpo_conditional_weight", 0)
        c.number("mdpo_anchor_weight", 0)
        c.number("mdpo_anchor")
        c.choice("mdpo_corruption", CORRUPTIONS)
        c.number("mdpo_corruption_strength", 0, 1, low_open=True)
        c.number("label_smoothing", 0, 0.5, high_open=True)  # ε ≥ 0.5 prefers the rejected answer
        c.number("gamma", 0, low_open=True)  # a token weight: ≤ 0 ignores or reverses corrected segments
        c.flag("ddpo_normalize")
        c.number("sft_weight", 0)
        c.flag("dynamic_beta")
        c.number("dynamic_beta_weight", 0)
        c.number("dynamic_beta_k", 0, low_open=True)
        c.text("reference_model_path", optional=True)
        c.flag("precompute_ref_logps")
        c.flag("cache_image_features")
        c.text("image_feature_cache_dir", optional=True)
        c.flag("share_prefix")
        c.number("max_length", 1, integer=True, optional=True)
        if not c.problems:
            c.rule(not self.label_smoothing or any(t in SMOOTHED_LOSSES for t in self.loss_types), "label_smoothing",
                   f"label_smoothing is used by the {', '.join(SMOOTHED_LOSSES)} losses, not by "
                   f"loss_type {self.loss_type}: set it to 0 or change loss_type")
            c.rule(not (self.image_feature_cache_dir and not self.cache_image_features), "image_feature_cache_dir",
                   "image_feature_cache_dir needs cache_image_features: true")
        c.done()
        super().__post_init__()

    @property
    def loss_types(self) -> tuple[str, ...]:
        """The losses of ``loss_type``, in order."""
        return tuple(t.strip() for t in str(self.loss_type).split(",") if t.strip())

    @property
    def reference_columns(self) -> tuple[str, ...]:
        """The per-token reference log-prob columns this run's losses read."""
        sides = ("chosen", "rejected", "corrupted") if "mdpo" in self.loss_types else ("chosen", "rejected")
        return tuple(f"ref_{side}_logps" for side in sides)

    @property
    def needs_reference(self) -> bool:
        """Whether any loss compares the policy with a reference (SimPO, ORPO and SFT do not)."""
        return any(t not in REFERENCE_FREE_LOSSES for t in self.loss_types)


def mdpo_corruption(args: DPOConfig) -> ImageCorruption | None:
    """The collator's on-the-fly image corruption when a loss of the run is mDPO."""
    if "mdpo" not in args.loss_types:
        return None
    return ImageCorruption(args.mdpo_corruption, args.mdpo_corruption_strength, args.seed)
