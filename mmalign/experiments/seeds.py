"""Experiment results over seeds: one JSON file per (seed, arm), merged into mean ± std.

One file each means a stopped experiment resumes where it was and invocations for
different seeds can share a folder without overwriting each other's results.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def result_file(out: Path, seed: int, arm: str) -> Path:
    """Where the result of ``arm`` with ``seed`` lives under an experiment folder."""
    return out / "measured" / f"seed{seed}-{arm}.json"


def save_result(out: Path, seed: int, arm: str, result: dict[str, Any]) -> Path:
    file = result_file(out, seed, arm)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(result, indent=1))
    return file


def measure_missing(out: Path, experiment: str, seeds: Sequence[int], arms: Sequence[str], doing: str,
                    run: Callable[[int, str], dict[str, Any]]) -> None:
    """``run(seed, arm)`` for every (seed, arm) without a result file yet, saving each result as
    it comes, so a stopped experiment resumes with the next one."""
    for seed in seeds:
        for arm in arms:
            file = result_file(out, seed, arm)
            if not file.exists():
                print(f"-- {experiment}: seed {seed}, {arm}: {doing}", flush=True)
                save_result(out, seed, arm, run(seed, arm))
            print(f"-- {experiment}: seed {seed}, {arm}: measured ({file})", flush=True)


def load_runs(out: Path) -> list[dict[str, Any]]:
    """Every (seed, arm) measured so far, grouped by seed: ``[{"seed", "models": {arm: result}}]``."""
    runs: dict[int, dict[str, Any]] = {}
    for file in sorted((out / "measured").glob("seed*-*.json")):
        seed, name = file.stem.removeprefix("seed").split("-", 1)
        runs.setdefault(int(seed), {"seed": int(seed), "models": {}})["models"][name] = json.loads(file.read_text())
    return [runs[s] for s in sorted(runs)]


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of every metric of every arm (NaN, nothing measured, is left out)."""
    summary: dict[str, dict[str, float]] = {}
    names = dict.fromkeys(n for r in runs for n in r["models"])
    for name in names:
        measured = [r["models"][name] for r in runs if name in r["models"]]
        summary[name] = {"seeds": len(measured)}
        for metric in dict.fromkeys(k for m in measured for k in m):
            values = [v for m in measured if metric in m and (v := m[metric]) == v]  # v == v: not NaN
            summary[name][metric] = statistics.fmean(values) if values else float("nan")
            summary[name][metric + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary
