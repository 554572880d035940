"""What the online RL trainers (PPO, GRPO) share around their own loops.

Both run their loop inside a ``transformers.Trainer`` (sampling cannot be a dataloader):
this mixin holds the safety multiplier λ (Safe RLHF's Lagrange update on the sliding mean
cost), the guard that skips a step whose loss or gradients are not finite, sums across
processes, and the loop state a checkpoint carries (optimiser, scheduler, λ, random state).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmalign.losses.ppo import lagrange_loss
from mmalign.losses.reward import ENSEMBLE_AGGREGATIONS
from mmalign.training import (
    NonFiniteTrainingError,
    checkpoint_problem,
    drop_gradients,
    nonfinite_gradients,
    use_new_learning_rate,
)

logger = logging.getLogger(__name__)

LOOP_STATE_FILE = "training_state.pt"


@dataclass
class LagrangeArguments:
    """The cost constraint's options (Safe RLHF's Lagrange multiplier), mixed into the PPO and
    GRPO configs; :meth:`check_lagrange` validates them."""

    cost_threshold: float = field(default=0.0, metadata={"help": "Budget d of the constraint E[cost] ≤ d."})
    lambda_init: float = field(default=1.0, metadata={"help": "Initial multiplier λ."})
    lambda_lr: float = field(default=0.1, metadata={"help": "SGD learning rate of log λ (0: a fixed λ)."})
    lambda_max: float | None = field(default=None, metadata={"help": "Upper bound of λ."})
    lambda_update_delay: int = field(default=0, metadata={"help": "Iterations before λ starts to move."})
    episode_cost_window: int = field(default=128, metadata={"help": "Answers in the sliding mean cost J_C."})
    unsafe_cost: float = field(default=0.0, metadata={"help": "An answer with cost above this is unsafe (logged)."})

    def check_lagrange(self, c: Any) -> None:
        c.number("cost_threshold")
        c.number("lambda_init", 0, low_open=True)  # λ is learned as log λ
        c.number("lambda_lr", 0)
        c.number("lambda_max", 0, low_open=True, optional=True)
        c.number("lambda_update_delay", 0, integer=True)
        c.number("episode_cost_window", 1, integer=True)
        c.number("unsafe_cost")
        if not c.problems:
            c.rule(self.lambda_max is None or self.lambda_max >= self.lambda_init, "lambda_max",
                   f"lambda_max ({self.lambda_max}) must be at least lambda_init ({self.lambda_init})")


@dataclass
class EnsembleScoringArguments:
    """How the RL trainers score with a reward or cost model ensemble (ignored for a single
    model); :meth:`check_ensemble_scoring` validates them."""

    ensemble_aggregation: str | None = field(
        default=None, metadata={"help": "Ensemble reward / cost models: mean, worst_case (the most pessimistic "
                                        "member) or uncertainty_weighted (mean -/+ uncertainty_weight * variance); "
                                        "default: the ensemble's own."})
    uncertainty_weight: float | None = field(
        default=None, metadata={"help": "λ of uncertainty_weighted (default: the ensemble's own)."})

    def check_ensemble_scoring(self, c: Any) -> None:
        c.choice("ensemble_aggregation", ENSEMBLE_AGGREGATIONS, optional=True)
        c.number("uncertainty_weight", 0, optional=True)

    def scoring_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`mmalign.reward.load_scoring_model`."""
        return {"aggregation": self.ensemble_aggregation, "uncertainty_weight": self.uncertainty_weight}


class OnlineRLMixin:
    """Mixin for a ``Trainer`` subclass with its own RL loop.

    The trainer sets ``method_name``, calls :meth:`init_loop_state` in ``__init__`` and
    implements ``save_loop_checkpoint()`` (used when a run stops on non-finite steps).
    ``args`` needs ``lambda_init``, ``lambda_lr``, ``lambda_update_delay``, ``lambda_max``,
    ``episode_cost_window``, ``cost_threshold`` and ``max_nonfinite_steps``.
    """

    method_name = "RL"

    def init_loop_state(self, args: Any) -> None:
        self.log_lambda = torch.nn.Parameter(torch.tensor(math.log(args.lambda_init)))
        self.lambda_optimizer = torch.optim.SGD([self.log_lambda], lr=args.lambda_lr)
        self.cost_window: deque[float] = deque(maxlen=args.episode_cost_window)
        self.iteration = 0
        self.nonfinite_skipped = self.nonfinite_consecutive = 0
        self.nonfinite_stop = False

    def sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.reduce(values.to(self.accelerator.device), reduction="sum")

    def update_lambda(self, costs: torch.Tensor) -> float:
        """One step of λ on the sliding mean cost of the last answers (gathered across
        processes), after ``lambda_update_delay`` iterations, capped at ``lambda_max``."""
        args = self.args
        gathered = self.accelerator.gather(costs.to(self.accelerator.device)).cpu().tolist()
        self.cost_window.extend(gathered)
        if self.iteration >= args.lambda_update_delay:
            mean_cost = sum(self.cost_window) / len(self.cost_window)
            self.lambda_optimizer.zero_grad()
            with torch.enable_grad():  # the rollout runs without gradients; λ has its own
                lagrange_loss(self.log_lambda, mean_cost, args.cost_threshold).backward()
            self.lambda_optimizer.step()
            if args.lambda_max is not None:
                with torch.no_grad():
                    self.log_lambda.clamp_(max=math.log(args.lambda_max))
        return self.log_lambda.exp().item()

    def skip_if_nonfinite(self, stats: dict[str, float]) -> bool:
        """Drop a step whose losses or (averaged) gradients are not finite; True if skipped.

        After ``max_nonfinite_steps`` in a row ``nonfinite_stop`` is set; the loop then saves
        a checkpoint and raises (:meth:`stop_nonfinite`).
        """
        bad = any(not math.isfinite(v) for v in stats.values()) or bool(nonfinite_gradients(self.model))
        if self.sum_over_processes(torch.tensor([float(bad)])).item() == 0:
            self.nonfinite_consecutive = 0
            return False
        drop_gradients(self.model)
        self.nonfinite_skipped += 1
        self.nonfinite_consecutive += 1
        logger.warning("%s iteration %d: non-finite loss or gradient, minibatch step skipped (%d in a row, %d in total)",
                       self.method_name, self.iteration + 1, self.nonfinite_consecutive, self.nonfinite_skipped)
        limit = self.args.max_nonfinite_steps
        self.nonfinite_stop = bool(limit) and self.nonfinite_consecutive >= limit
        return True

    def take_step(self, stats: dict[str, float], sums: dict[str, float]) -> bool:
        """Clip, check, step the optimiser and scheduler; add ``stats`` to ``sums`` and return
        True if the step counted (False: skipped as non-finite, its gradients dropped)."""
        if self.args.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        skipped = self.skip_if_nonfinite(stats)  # drops the gradients: the step changes nothing
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        if not skipped:
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
        return not skipped

    def end_iteration(self, log: dict[str, float], bar: Any, epoch: float, shown: tuple[str, ...]) -> None:
        """Count the finished iteration, log it every ``logging_steps``, show ``shown`` on the
        progress bar and checkpoint every ``save_steps``."""
        args = self.args
        self.iteration += 1
        self.state.global_step = self.iteration
        self.state.epoch = epoch
        if self.iteration % max(int(args.logging_steps), 1) == 0 or self.iteration == args.max_steps:
            self.log(dict(log))
        bar.update(1)
        bar.set_postfix({k: round(log[k], 3) for k in shown if k in log})
        if args.save_strategy != "no" and self.iteration % max(int(args.save_steps), 1) == 0:
            if self.is_world_process_zero():  # the processes hold the same weights and λ
                self.save_loop_checkpoint()
            self.accelerator.wait_for_everyone()

    def stop_nonfinite(self) -> None:
        """Keep a usable checkpoint (the weights of the last good step), then raise."""
        checkpoint = Path(self.args.output_dir) / f"checkpoint-{self.iteration}"
        if self.is_world_process_zero() and checkpoint_problem(checkpoint) is not None:
            self.save_loop_checkpoint()  # an existing checkpoint of this iteration is kept as it is
        self.accelerator.wait_for_everyone()
        raise NonFiniteTrainingError(
            f"{self.method_name} stopped in iteration {self.iteration + 1}: {self.nonfinite_consecutive} minibatch steps in "
            f"a row had a NaN/inf loss or gradient (max_nonfinite_steps={self.args.max_nonfinite_steps}); every "
            f"one was skipped. {checkpoint} holds usable weights; resume with --resume_from_checkpoint {checkpoint} "
            "(and --resume_with_changes true after lowering the learning rate)")

    def save_loop_state(self, folder: Path) -> None:
        """Optimiser, scheduler, λ and its optimiser, random state: the tensors a resume needs."""
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.lr_scheduler.state_dict(),
                    "lambda_optimizer": self.lambda_optimizer.state_dict(),
                    "log_lambda": self.log_lambda.detach().clone(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   folder / LOOP_STATE_FILE)

    def load_loop_state(self, folder: Path) -> None:
        """The inverse of :meth:`save_loop_state`; a ``resume_with_changes`` learning rate
        (or λ learning rate) replaces the checkpoint's."""
        state = torch.load(folder / LOOP_STATE_FILE, weights_only=True)  # our own file: tensors and containers
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.lambda_optimizer.load_state_dict(state["lambda_optimizer"])
        if "learning_rate" in self.resume_changes:
            use_new_learning_rate(self.optimizer, self.lr_scheduler, self.args.learning_rate)
        if "lambda_lr" in self.resume_changes:
            for group in self.lambda_optimizer.param_groups:
                group["lr"] = self.args.lambda_lr
        with torch.no_grad():
            self.log_lambda.copy_(state["log_lambda"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])


def check_scorer_paths(args: Any, *names: str) -> None:
    """Each named reward / cost model folder, when set, must hold a trained scalar head (or
    be an ensemble of them)."""
    from mmalign.models.scalar_head import ENSEMBLE_CONFIG, HEAD_CONFIG

    for name in names:
        path = getattr(args, name)
        if path and not any((Path(path) / marker).is_file() for marker in (HEAD_CONFIG, ENSEMBLE_CONFIG)):
            raise FileNotFoundError(f"{name} {path}: not a trained reward / cost model folder (no {HEAD_CONFIG}) "
                                    f"nor an ensemble ({ENSEMBLE_CONFIG})")


#: (log key, panel title) of the curves people look at first; a panel appears when some run logged its key
CURVES = (("cost", "mean cost of sampled answers"), ("lambda", "λ"), ("reward", "reward"),
          ("kl", "KL to the reference (per answer)"), ("response_length", "answer length (tokens)"),
          ("completion_length", "answer length (tokens)"))
#: the per-iteration log a finished PPO or GRPO run keeps in its final folder
RUN_LOGS = ("ppo_log.json", "grpo_log.json")


def plot_rl_logs(runs: dict[str, list[dict[str, Any]]], out: str | Path, budget: float | None = None) -> Path:
    """One panel per metric, one line per run; ``runs`` maps a name to its per-iteration log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in CURVES if any(k in e for log in runs.values() for e in log)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, (name, log) in enumerate(runs.items()):  # a run keeps its colour in every panel
            points = [(e["step"], e[key]) for e in log if key in e and "step" in e]
            if points:
                ax.plot(*zip(*points), label=name, color=f"C{i % 10}")
        if key == "cost" and budget is not None:
            ax.axhline(budget, color="gray", linestyle="--", label="budget")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def run_log(final: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """The per-iteration log of a finished PPO or GRPO run (its final folder): file and entries."""
    import json

    for name in RUN_LOGS:
        if (Path(final) / name).exists():
            return Path(final) / name, json.loads((Path(final) / name).read_text())
    raise FileNotFoundError(f"{final} holds no RL log ({' or '.join(RUN_LOGS)}): is it a finished PPO or GRPO run?")


def plot_rl_run(final: str | Path, budget: float | None = None) -> Path | None:
    """``ppo_curves.png`` / ``grpo_curves.png`` beside a finished run's log (cost against
    ``budget``, λ, reward, KL, length); None when it logged nothing."""
    file, log = run_log(final)
    out = file.with_name(file.name.replace("_log.json", "_curves.png"))
    return plot_rl_logs({Path(final).parent.name: log}, out, budget) if log else None
