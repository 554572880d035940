"""Curves of PPO runs: what people look at first (cost against the budget, λ, reward, KL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CURVES = (("cost", "mean cost of sampled answers"), ("lambda", "λ"), ("reward", "reward (RM + shaping)"),
          ("kl", "KL to the reference (per answer)"))


def plot_ppo_logs(runs: dict[str, list[dict[str, Any]]], out: str | Path, budget: float | None = None) -> Path:
    """One panel per metric, one line per run; ``runs`` maps a name to its per-iteration log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in CURVES if any(k in e for log in runs.values() for e in log)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for name, log in runs.items():
            points = [(e["step"], e[key]) for e in log if key in e and "step" in e]
            if points:
                ax.plot(*zip(*points), label=name)
        if key == "cost" and budget is not None:
            ax.axhline(budget, color="gray", linestyle="--", label="budget")
        ax.set_title(title)
        ax.set_xlabel("PPO iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_ppo_run(final: str | Path, budget: float | None = None) -> Path | None:
    """``ppo_curves.png`` beside a finished run's ``ppo_log.json``; None when it logged nothing."""
    final = Path(final)
    log = json.loads((final / "ppo_log.json").read_text())
    return plot_ppo_logs({final.parent.name: log}, final / "ppo_curves.png", budget) if log else None
