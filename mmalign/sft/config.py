"""Training arguments for supervised fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from mmalign.config_io import OptionChecks, accepts_aliases
from mmalign.training import GuardArguments, ResumeArguments, check_training_arguments


@accepts_aliases({"dataset_name": "dataset_path"})
@dataclass
class SFTConfig(TrainingArguments, GuardArguments, ResumeArguments):
    """``transformers.TrainingArguments`` plus the data options SFT needs.

    Defaults differ from ``TrainingArguments`` where VLM training needs it: the dataset
    keeps its image / message columns (``remove_unused_columns=False``) and logging is
    frequent enough to watch a short run.
    """

    dataset_path: str = field(default="", metadata={"help": "Training data: a saved datasets folder, .jsonl or .json."})
    image_folder: str | None = field(
        default=None, metadata={"help": "Folder that image paths in JSON data are relative to (default: the file's)."}
    )
    eval_dataset_path: str | None = field(default=None, metadata={"help": "Optional evaluation data, same formats."})
    max_length: int | None = field(
        default=2048, metadata={"help": "Longest sequence in tokens (image tokens included); the tail is cut."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image and message columns."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no, steps, epoch."})

    def __post_init__(self):
        """Every option's type and range, checked before anything loads (one ``ConfigError``)."""
        c = OptionChecks(self)
        check_training_arguments(self, c)
        c.text("dataset_path")
        c.text("image_folder", optional=True)
        c.text("eval_dataset_path", optional=True)
        c.number("max_length", 1, integer=True, optional=True)
        c.done()
        super().__post_init__()
