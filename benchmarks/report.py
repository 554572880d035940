"""Reports: one run's JSON + markdown, and side-by-side comparisons of several checkpoints.

A run folder holds ``report.json`` (every metric, the protocol: data version, parsing
mode, decoding, judge..., and the protocol card: file hashes, counts, decoding, answers'
source, vocabulary, judge; see :mod:`.protocol`), ``report.md`` (the same as tables) and
``details.jsonl`` (one scored record per answer). :func:`compare_reports` reads several run
folders and writes a markdown table, a JSON summary and a PNG bar chart per benchmark, and
flags protocol differences and differing protocol cards, since numbers from different
protocols are not comparable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.benchmarks.protocol import ProtocolCard, card_differences
from mmalign.io import atomic_write_text, jsonl_text, read_json


@dataclass
class BenchmarkResult:
    """Everything a benchmark run measured.

    ``headline`` holds the numbers papers report (flat, for tables and charts);
    ``metrics`` everything, nested; ``breakdowns`` per-group tables (title -> row -> column
    -> value); ``details`` one record per scored answer (written to ``details.jsonl``);
    ``card`` the protocol card (the benchmark fills its data part, the runner the answers'
    source and the generation settings).
    """

    benchmark: str
    headline: dict[str, float]
    metrics: dict[str, Any]
    protocol: dict[str, Any]
    breakdowns: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    card: ProtocolCard | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report JSON: all but the per-answer details."""
        return {
            "benchmark": self.benchmark,
            "model": self.model,
            "headline": self.headline,
            "metrics": self.metrics,
            "breakdowns": self.breakdowns,
            "protocol": self.protocol,
            "card": self.card.to_dict() if self.card is not None else None,
        }


REPORT = "report.json"
#: Protocol entries that describe where answers came from rather than how they were scored.
_SOURCE_KEYS = {"answers"}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    if value is None:
        return "-"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(result: BenchmarkResult) -> str:
    """The report as markdown: headline numbers, each breakdown, the protocol card, then the
    protocol."""
    parts = [f"# {result.benchmark} — {result.model}", ""]
    parts.append(markdown_table(["metric", "value"], list(result.headline.items())))
    for title, table in result.breakdowns.items():
        columns: list[str] = []
        for row in table.values():
            columns += [c for c in row if c not in columns]
        rows = [[name, *(row.get(c) for c in columns)] for name, row in table.items()]
        parts += ["", f"## {title}", "", markdown_table(["", *columns], rows)]
    if result.card is not None:
        parts += ["", "## Protocol card", "", markdown_table(["", "value"], result.card.rows())]
    parts += ["", "## Protocol", ""]
    for key, value in result.protocol.items():
        plain = isinstance(value, str) and "\n" not in value
        shown = value if plain or not isinstance(value, str | dict | list) else json.dumps(value, sort_keys=True)
        parts.append(f"- **{key}**: {shown}")
    return "\n".join(parts) + "\n"


def write_report(result: BenchmarkResult, out: str | Path) -> Path:
    """Write ``report.json``, ``report.md`` and ``details.jsonl`` into ``out``, each atomically."""
    out = Path(out)
    atomic_write_text(out / REPORT, json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", render_markdown(result))
    atomic_write_text(out / "details.jsonl", jsonl_text(result.details))
    return out / REPORT


def load_report(path: str | Path) -> dict[str, Any]:
    """A run's report, from its folder or its ``report.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT
    report = read_json(path)
    for key in ("benchmark", "model", "headline", "protocol"):
        if key not in report:
            raise ValueError(f"{path}: not an mmalign report (missing field {key!r})")
    return report


def protocol_differences(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """Protocol entries (besides the answers' source) that differ between reports."""
    keys = sorted({k for r in reports for k in r["protocol"]} - _SOURCE_KEYS)
    return [k for k in keys if len({json.dumps(r["protocol"].get(k), sort_keys=True) for r in reports}) > 1]


def card_warning(differing: Sequence[str]) -> str:
    """The comparison's warning line for protocol cards that differ in ``differing``."""
    return (f"**Warning: protocol cards differ** in: {', '.join(differing)} — these runs do not follow the "
            "same protocol.")


def compare_reports(
    runs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Compare several runs side by side; writes ``comparison.{md,json,png}`` into ``out``.

    Runs are grouped by benchmark. ``labels`` name the runs (default: each report's model
    name, or the folder names when model names repeat within a benchmark). Returns the
    comparison JSON; per benchmark, ``card_differences`` names the protocol card entries
    that differ (question files, vocabulary, judge model, max new tokens...), which the
    markdown states as a warning.
    """
    if not runs:
        raise ValueError("compare_reports: no runs given")
    reports = [load_report(r) for r in runs]
    if labels is not None and len(labels) != len(reports):
        raise ValueError(f"compare_reports: {len(labels)} labels for {len(reports)} runs")
    folders = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    by_benchmark: dict[str, list[int]] = {}
    for i, report in enumerate(reports):
        by_benchmark.setdefault(report["benchmark"], []).append(i)
    groups: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for benchmark, members in by_benchmark.items():
        names = [labels[i] if labels is not None else reports[i]["model"] for i in members]
        if labels is None and len(set(names)) < len(names):
            names = [folders[i] for i in members]
        if len(set(names)) < len(names):
            raise ValueError(f"compare_reports: two {benchmark} runs share the label {names!r}; pass labels")
        groups[benchmark] = [(name, reports[i]) for name, i in zip(names, members, strict=True)]

    summary: dict[str, Any] = {}
    parts = ["# Benchmark comparison", ""]
    for benchmark, members in groups.items():
        metrics: list[str] = []
        for _, report in members:
            metrics += [m for m in report["headline"] if m not in metrics]
        differing = protocol_differences([r for _, r in members])
        cards = card_differences([r.get("card") for _, r in members])
        summary[benchmark] = {
            "runs": {label: report["headline"] for label, report in members},
            "protocol_differences": differing,
            "card_differences": cards,
        }
        rows = [[label, *(report["headline"].get(m) for m in metrics)] for label, report in members]
        parts += [f"## {benchmark}", "", markdown_table(["checkpoint", *metrics], rows), ""]
        if cards:
            parts += [card_warning(cards), ""]
        if differing:
            parts += [f"**Protocols differ** in: {', '.join(differing)} — these numbers are not directly "
                      "comparable.", ""]
    out = Path(out)
    atomic_write_text(out / "comparison.md", "\n".join(parts))
    atomic_write_text(out / "comparison.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write_chart(summary, out / "comparison.png")
    return summary


def _write_chart(summary: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: one panel per benchmark, one group per headline metric, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(summary.items())
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (benchmark, entry) in zip(axes[:, 0], panels, strict=True):
        runs: Mapping[str, Mapping[str, float]] = entry["runs"]
        metrics: list[str] = []
        for headline in runs.values():
            metrics += [m for m in headline if m not in metrics]
        width = 0.8 / max(len(runs), 1)
        for j, (label, headline) in enumerate(runs.items()):
            xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(metrics))]
            values = [float(headline.get(m) or 0.0) for m in metrics]
            bars = ax.bar(xs, values, width=width, label=label)
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=1)
        ax.set_xticks(range(len(metrics)), metrics, fontsize=8)
        ax.set_title(benchmark)
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
