"""The on-policy feedback loop: rounds of sample → feedback → pairs → DPO → evaluate.

Off-policy pairs stop helping: RLAIF-V reaches its numbers only over iterative rounds, and
OPA-DPO shows that pairs built from the current policy's own answers are what matters. Each
round here:

1. the current policy (the base plus the previous round's adapter) answers the round's
   prompts, and a feedback source turns its answers into preference pairs: the scene world
   as annotator (:class:`SceneFeedback`), the RLAIF-V AI-feedback builder with any judge it
   supports (:class:`AIFeedback`), or annotators in the feedback studio (:class:`StudioFeedback`);
2. optionally OPA-DPO's on-policy alignment: SFT on the corrected (chosen) answers, so the
   corrections become likely under the policy before DPO compares them;
3. DPO starting from the current policy with that policy as the reference (its log-probs are
   computed once before training, so no second model is held);
4. evaluation on held-out scenes of the scene world (POPE, CHAIR), when ``eval_scenes`` > 0.

Every stage writes its output atomically and is skipped when that output exists, so a run
that was stopped (between or inside rounds) resumes where it was; a studio round that still
lacks labels stops with :class:`RoundWaiting`, and the same command continues once
annotators have labelled. ``report.md`` / ``report.json`` / ``rounds.png`` hold every round.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from mmalign.io import atomic_write_text

FEEDBACK_SOURCES = ("scene", "ai", "studio")
#: the per-round numbers of the report, as (key in the metrics, column name)
REPORTED = (("F1 (mean of splits)", "POPE F1"), ("CHAIR_s", "CHAIR_s"), ("CHAIR_i", "CHAIR_i"),
            ("Recall", "recall"), ("Length (words)", "words"))


class RoundWaiting(RuntimeError):
    """A round cannot go on yet (its answers wait for annotators); run the loop again later."""


@dataclass
class LoopConfig:
    """Settings of an on-policy loop (``mmalign loop --config FILE``; flags override).

    The policy and its DPO training come from a shipped or local training ``recipe`` (model,
    quantisation, LoRA and DPOConfig fields) with ``training`` overrides on top; the loop
    itself sets each round's data, output folder and a reference precomputed from the
    round's starting policy.
    """

    output_dir: str = field(default="", metadata={"help": "Folder of the run: one sub-folder per round and the report."})
    rounds: int = field(default=3, metadata={"help": "Rounds of sample → feedback → DPO → evaluate."})
    prompts_per_round: int = field(
        default=200, metadata={"help": "Prompts (scene world: scenes) answered by the policy each round."})
    feedback: str = field(default="scene", metadata={"help": "Feedback source: scene, ai or studio.",
                                                     "choices": FEEDBACK_SOURCES})
    recipe: str = field(default="ddpo-scene-vlm", metadata={"help": "DPO training recipe (name or YAML file)."})
    model: str | None = field(default=None, metadata={"help": "Base model; default: the recipe's."})
    training: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of the recipe's model and DPOConfig fields."})
    opa_sft: bool = field(default=False, metadata={"help": "OPA-DPO: SFT on the chosen answers before each DPO."})
    opa_sft_epochs: float = field(default=1.0, metadata={"help": "Epochs of the OPA-DPO SFT stage."})
    opa_sft_learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of the OPA-DPO SFT stage."})
    eval_scenes: int = field(
        default=200, metadata={"help": "Held-out scenes for POPE and CHAIR after each round (0: no evaluation)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest answer the policy gives for feedback."})
    seed: int = field(default=0, metadata={"help": "Seed of the world, the sampling and the training."})
    replace_absent: bool = field(
        default=False, metadata={"help": "Scene feedback: replace a named absent object by a present one "
                                          "(default: remove its clause)."})
    prompts_path: str | None = field(
        default=None, metadata={"help": "ai / studio feedback: a prompt set; round k takes its k-th slice."})
    studio_project: str | None = field(default=None, metadata={"help": "studio feedback: the project folder."})
    studio_min_labelled: float = field(
        default=1.0, metadata={"help": "studio feedback: share of a round's answers labelled before it trains."})

    def __post_init__(self) -> None:
        from mmalign.config_io import OptionChecks

        c = OptionChecks(self)
        c.text("output_dir")
        c.number("rounds", 1, integer=True)
        c.number("prompts_per_round", 1, integer=True)
        c.choice("feedback", FEEDBACK_SOURCES)
        c.text("recipe")
        c.text("model", optional=True)
        c.flag("opa_sft")
        c.number("opa_sft_epochs", 0, low_open=True)
        c.number("opa_sft_learning_rate", 0, low_open=True)
        c.number("eval_scenes", 0, integer=True)
        c.number("max_new_tokens", 1, integer=True)
        c.number("seed", 0, integer=True)
        c.flag("replace_absent")
        c.text("prompts_path", optional=True)
        c.text("studio_project", optional=True)
        c.number("studio_min_labelled", 0, 1, low_open=True)
        c.rule(isinstance(self.training, dict), "training", "training must be a mapping of recipe fields")
        c.rule(self.feedback == "scene" or bool(self.prompts_path), "prompts_path",
               f"{self.feedback} feedback needs prompts_path (a prompt set)")
        c.rule(self.feedback != "studio" or bool(self.studio_project), "studio_project",
               "studio feedback needs studio_project (a project folder)")
        c.done()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopConfig:
        from mmalign.io import from_mapping

        return from_mapping(cls, values, "loop")


# ---------------------------------------------------------------------------- feedback sources
class FeedbackSource(Protocol):
    """Turns the current policy's answers to one round's prompts into canonical preference records."""

    def records(self, policy: Any, round_index: int, config: LoopConfig) -> list[dict[str, Any]]: ...


@dataclass
class SceneFeedback:
    """The scene world as annotator: the policy describes and answers yes/no questions about each
    round's own scenes (disjoint rounds of the feedback range), and each wrong segment is corrected
    against the annotations (:func:`mmalign.scene.feedback.scene_feedback_records`)."""

    last_stats: dict[str, Any] = field(default_factory=dict)

    def records(self, policy: Any, round_index: int, config: LoopConfig) -> list[dict[str, Any]]:
        from mmalign.scene.feedback import scene_feedback_records
        from mmalign.scene.ranges import FEEDBACK
        from mmalign.scene.world import WorldConfig

        n = config.prompts_per_round
        start = FEEDBACK.start + round_index * n
        if start + n > FEEDBACK.stop:
            raise ValueError(f"round {round_index}: the feedback scenes end at {FEEDBACK.stop}; ask fewer prompts")
        records, stats = scene_feedback_records(policy, WorldConfig(seed=config.seed), n, split=FEEDBACK.split,
                                                start=start, seed=config.seed + round_index,
                                                max_new_tokens=config.max_new_tokens,
                                                replace_absent=config.replace_absent)
        self.last_stats = asdict(stats)
        return records


def _prompt_slice(config: LoopConfig, round_index: int, errors=None) -> list[dict[str, Any]]:
    """Round ``round_index``'s prompts: the k-th ``prompts_per_round`` records of the prompt set."""
    from itertools import islice

    from mmalign.data_builders.ai_feedback import read_prompts

    n = config.prompts_per_round
    rows = list(islice(read_prompts(config.prompts_path, errors=errors), round_index * n, (round_index + 1) * n))
    if not rows:
        raise ValueError(f"round {round_index}: {config.prompts_path} holds fewer than {round_index * n + 1} "
                         f"prompts; add prompts or lower rounds / prompts_per_round")
    return rows


@dataclass
class AIFeedback:
    """RLAIF-V's divide-and-conquer feedback on the policy's own samples: ``judge`` and ``splitter``
    as :class:`~mmalign.data_builders.ai_feedback.AIFeedbackBuilder` takes them (a local judge
    model or an endpoint); the sampling seed moves on each round."""

    judge: Any
    splitter: Any = None
    settings: Any = None  # AIFeedbackConfig
    last_stats: dict[str, Any] = field(default_factory=dict)

    def records(self, policy: Any, round_index: int, config: LoopConfig) -> list[dict[str, Any]]:
        from mmalign.data_builders.ai_feedback import AIFeedbackBuilder, AIFeedbackConfig
        from mmalign.data_builders.claims import SentenceSplitter

        settings = self.settings or AIFeedbackConfig()
        builder = AIFeedbackBuilder(policy, self.judge, self.splitter or SentenceSplitter(),
                                    replace(settings, seed=settings.seed + round_index))
        records = list(builder.records(_prompt_slice(config, round_index)))
        self.last_stats = asdict(builder.stats)
        return records


@dataclass
class StudioFeedback:
    """Annotators correct the policy's answers in the feedback studio. The first visit of a round
    adds the policy's answers to the project (as items of model ``loop-round-K``) and waits; later
    visits go on once ``studio_min_labelled`` of them carry a submission, with the corrections."""

    last_stats: dict[str, Any] = field(default_factory=dict)

    def records(self, policy: Any, round_index: int, config: LoopConfig) -> list[dict[str, Any]]:
        from mmalign.benchmarks.runner import GenerationConfig
        from mmalign.studio.export import export_records
        from mmalign.studio.load import load_prompt_set
        from mmalign.studio.project import StudioProject

        project = StudioProject.create(config.studio_project)
        name = f"loop-round-{round_index}"
        items = [item.id for item in project.items() if item.meta.get("model") == name]
        if not items:
            report = load_prompt_set(project, _prompt_slice(config, round_index), policy,
                                     GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=16),
                                     model_name=name)
            raise RoundWaiting(f"round {round_index}: {report.added} answers of the policy wait for annotators in "
                               f"{config.studio_project} (mmalign studio serve --project {config.studio_project}); "
                               "run the same command again once they are labelled")
        labelled = {note.item_id for note in project.submissions()} & set(items)
        needed = math.ceil(config.studio_min_labelled * len(items))
        if len(labelled) < needed:
            raise RoundWaiting(f"round {round_index}: {len(labelled)} of {len(items)} answers labelled in "
                               f"{config.studio_project}, {needed} needed; run the same command again later")
        records, counts, _, _ = export_records(project)
        self.last_stats = {"items": len(items), "labelled": len(labelled), **counts}
        return [r for r in records if r["meta"]["item_meta"].get("model") == name]


def feedback_source(config: LoopConfig, judge: Any = None, splitter: Any = None, settings: Any = None) -> FeedbackSource:
    """The source ``config.feedback`` names (``ai`` needs a ``judge``)."""
    if config.feedback == "scene":
        return SceneFeedback()
    if config.feedback == "studio":
        return StudioFeedback()
    if judge is None:
        raise ValueError("ai feedback needs a judge (a local judge model or an endpoint)")
    return AIFeedback(judge, splitter, settings)


# ---------------------------------------------------------------------------- one round
@dataclass
class LoopResult:
    """What a call of :func:`run_loop` reached: every round finished, or the round waiting."""

    rounds: list[dict[str, Any]]
    report: Path | None
    waiting: str | None = None


def _recipe(config: LoopConfig, output_dir: Path, dataset: Path, seed: int):
    from mmalign.config_io import load_recipe
    from mmalign.dpo import DPOConfig
    from mmalign.model_config import ModelConfig

    overrides = {**config.training, "output_dir": str(output_dir), "dataset_path": str(dataset),
                 "precompute_ref_logps": True, "seed": seed}  # the world's seed is config.seed; training's may differ
    if config.model:
        overrides["model_name_or_path"] = config.model
    return load_recipe(config.recipe, (ModelConfig, DPOConfig), overrides)


def _base(model_config):
    """The recipe's base model without LoRA, quantised as the policy is (to evaluate round 0)."""
    from mmalign.models import card_for, load_adapter

    card = card_for(model_config.model_name_or_path)
    return load_adapter(model_config.model_name_or_path, dtype=model_config.dtype,
                        quantization=model_config.quantization(card))


def _policy(model_config, adapter: Path | None, seed: int):
    """The base of the recipe with ``adapter`` (the previous round's) loaded trainable, or a
    fresh LoRA drawn from ``seed``."""
    return replace(model_config, adapter_path=str(adapter) if adapter else None).load(seed=seed)


def _sft(policy, pairs, config: LoopConfig, round_dir: Path, args) -> None:
    """OPA-DPO's on-policy alignment: SFT on each pair's chosen answer (the corrected one)."""
    from datasets import Dataset

    from mmalign.data_builders.export import as_messages, assistant
    from mmalign.sft import SFTConfig, SFTTrainer

    rows = [{"images": row["images"], "messages": [*as_messages(row), *assistant(row["chosen"])]} for row in pairs]
    sft_args = SFTConfig(output_dir=str(round_dir / "sft"), num_train_epochs=config.opa_sft_epochs,
                         learning_rate=config.opa_sft_learning_rate, seed=args.seed,
                         per_device_train_batch_size=args.per_device_train_batch_size, max_length=args.max_length,
                         save_strategy="no", report_to="none", logging_steps=args.logging_steps, use_cpu=args.use_cpu,
                         bf16=args.bf16)
    SFTTrainer(policy, sft_args, train_dataset=Dataset.from_list(rows)).train()
    policy.save_adapter(round_dir / "sft-adapter")


def _train(config: LoopConfig, round_index: int, round_dir: Path, previous: Path | None) -> Any:
    """SFT (OPA-DPO) and DPO of one round; returns the trained policy, saved to ``round_dir/adapter``."""
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.dpo import DPOTrainer
    from mmalign.training import latest_valid_checkpoint

    seed = int(config.training.get("seed", config.seed)) + round_index  # a new LoRA / data order each round
    model_config, args = _recipe(config, round_dir / "train", round_dir / "pairs", seed)
    pairs = load_preference_dataset(round_dir / "pairs")
    sft_done = round_dir / "sft-adapter" / "adapter_config.json"
    if config.opa_sft and sft_done.exists():  # SFT finished before a stop: DPO starts from its adapter
        policy = _policy(model_config, sft_done.parent, seed)
    else:
        policy = _policy(model_config, previous, seed)
        if config.opa_sft:
            _sft(policy, pairs, config, round_dir, args)  # DPO goes on from this policy, not a reload of it
    # the reference is the policy as DPO starts (its log-probs precomputed before training)
    trainer = DPOTrainer(policy, args, train_dataset=pairs)
    trainer.train(resume_from_checkpoint=latest_valid_checkpoint(args.output_dir))
    policy.save_adapter(round_dir / "adapter")
    atomic_write_text(round_dir / "train-log.json", json.dumps(trainer.state.log_history, indent=1))
    return policy


def _evaluate(policy, config: LoopConfig, out: Path, name: str) -> dict[str, float]:
    from mmalign.demo import evaluate_scene_model
    from mmalign.scene.exports import make_world

    world = out / "world"
    if not (world / "world.json").exists():
        make_world(world, seed=config.seed, size=config.eval_scenes)
    return evaluate_scene_model(policy, world, out / name / "eval", name, progress=False)


def run_loop(config: LoopConfig, feedback: FeedbackSource | None = None,
             progress: Callable[[str], None] | None = print) -> LoopResult:
    """Run (or resume) every round of ``config``; see the module docstring for the stages."""
    from mmalign.data_builders.storage import save_preference_dataset

    say = progress or (lambda text: None)
    feedback = feedback or feedback_source(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "loop-config.json", json.dumps(asdict(config), indent=1))
    model_config, _ = _recipe(config, out / "round-0" / "train", out / "round-0" / "pairs", config.seed)
    rounds: list[dict[str, Any]] = []
    if config.eval_scenes:
        rounds.append(_stage_json(out / "base-metrics.json", lambda: _evaluate(
            _base(model_config), config, out, "base"), say, "evaluating the base model"))
    previous: Path | None = None
    for k in range(config.rounds):
        round_dir = out / f"round-{k}"
        round_dir.mkdir(exist_ok=True)
        policy = None
        if not (round_dir / "pairs" / "mmalign_dataset.json").exists():
            say(f"[round {k + 1}/{config.rounds}] sampling the policy's answers and collecting {config.feedback} feedback")
            policy = _policy(model_config, previous, config.seed + k)
            try:
                records = feedback.records(policy, k, config)
            except RoundWaiting as wait:
                say(str(wait))
                return LoopResult(rounds, None, waiting=str(wait))
            stats = {"records": len(records), **getattr(feedback, "last_stats", {})}
            atomic_write_text(round_dir / "feedback-stats.json", json.dumps(stats, indent=1))
            if not records:
                raise ValueError(f"round {k}: the feedback gave no pairs ({stats}); nothing to train on")
            save_preference_dataset(records, round_dir / "pairs")
            policy = None  # training loads its own copy: never two models in memory
            _free_memory()
        if not (round_dir / "adapter" / "adapter_config.json").exists():
            say(f"[round {k + 1}/{config.rounds}] training" + (" (SFT, then DPO)" if config.opa_sft else " (DPO)"))
            policy = _train(config, k, round_dir, previous)
        previous = round_dir / "adapter"
        row = {"round": k + 1, **json.loads((round_dir / "feedback-stats.json").read_text())}
        if config.eval_scenes:
            def evaluate(policy=policy, previous=previous, k=k):
                return _evaluate(policy or _policy(model_config, previous, config.seed), config, out, f"round-{k}")
            row.update(_stage_json(round_dir / "metrics.json", evaluate, say,
                                   f"[round {k + 1}/{config.rounds}] evaluating"))
        rounds.append(row)
    return LoopResult(rounds, write_loop_report(out, rounds, config))


def _free_memory() -> None:
    """Collect a dropped model before the next one loads (and hand its GPU memory back)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _stage_json(path: Path, compute: Callable[[], dict[str, Any]], say, doing: str) -> dict[str, Any]:
    """A stage whose result is a small JSON file: computed once, read back on a resumed run."""
    if not path.exists():
        say(doing)
        atomic_write_text(path, json.dumps(compute(), indent=1))
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- report
def write_loop_report(out: Path, rounds: Sequence[dict[str, Any]], config: LoopConfig) -> Path:
    """``report.md`` (a table per round, each metric's better direction), ``report.json`` and ``rounds.png``."""
    from mmalign.demo import better
    from mmalign.utils import format_table

    metrics = [(key, label) for key, label in REPORTED if any(key in r for r in rounds)]
    header = ["round", "pairs", *(f"{label} ({better(key).split(' (')[0]})" for key, label in metrics)]
    table = format_table(header, [[r.get("round", 0), r.get("records", "-"),
                                   *(f"{r[key]:.3f}" if key in r else "-" for key, _ in metrics)] for r in rounds])
    atomic_write_text(out / "report.json", json.dumps({"config": asdict(config), "rounds": list(rounds)}, indent=1))
    lines = [f"# On-policy loop: {config.rounds} rounds of {config.feedback} feedback", "",
             f"Recipe {config.recipe}; {config.prompts_per_round} prompts per round; "
             f"{'OPA-DPO SFT before each DPO; ' if config.opa_sft else ''}seed {config.seed}. "
             "Round 0 is the base model.", "", "```", table, "```", ""]
    chart = _chart(out, rounds, metrics)
    if chart:
        lines += [f"![metrics per round]({chart.name})", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


def _chart(out: Path, rounds: Sequence[dict[str, Any]], metrics) -> Path | None:
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 2.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        points = [(r.get("round", 0), r[key]) for r in rounds if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(label)
        ax.set_xlabel("round")
    fig.tight_layout()
    path = out / "rounds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
