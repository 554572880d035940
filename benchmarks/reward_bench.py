"""Reward-model benchmarks: VL-RewardBench and Multimodal RewardBench, scored by a reward model.

Both benchmarks are (image, prompt, two responses, human preference) records; a reward model
passes a pair when it scores the preferred response strictly higher (a tie counts as wrong,
and the report counts ties apart). Files are read locally, in each benchmark's public layout:

**VL-RewardBench** (Li et al., CVPR 2025; ``MMInstruction/VL-RewardBench``): JSON, JSON Lines
or the dataset's parquet files, one record per pair with ``id``, ``query`` (the prompt),
``response`` (two answers) and ``human_ranking`` (each answer's rank: ``[0, 1]`` means the
first is preferred, ``[1, 0]`` the second). The image is the parquet's ``image``
(``{"bytes", "path"}``: the bytes, else the path) or a path in ``image`` or ``image_path``
(the GitHub ``data.jsonl``), relative to the image folder. Its category is, in this order:
a ``category`` field (mmalign's scene-world export writes one; the public files have none);
the dataset folder of ``image_path`` as the official ``cal.py`` maps it; the ``id``'s prefix
as lmms-eval maps it; else "general", lmms-eval's fallback. The headline is the overall
accuracy and the macro average over the categories, as the paper reports them.

**Multimodal RewardBench** (Yasunaga et al., 2025; ``facebookresearch/multimodal_rewardbench``):
its ``all_data.json`` (a JSON list; JSON Lines is read too), one record per pair with ``ID``,
``Text`` (the prompt), ``Image`` (a path relative to the image folder, e.g.
``images/nocaps/1.jpg`` under ``data/``), ``Output1``, ``Output2``, ``Better``
(``"Output1"`` or ``"Output2"``) and ``Category``. The headline is the overall accuracy (all
pairs pooled, the official ``2_get_accuracy.py``'s "all") and the accuracy per category;
the official script's finer split (safety into bias: ``ID`` starting with "pairs", and
toxicity; reasoning into math: ``ID`` starting with "math", and coding) is a breakdown.

Scoring: any ``scorer(images, prompts, responses, facts=None) -> list[float]``
(:class:`mmalign.reward.RewardScorer`'s call). Scores are cached per batch in
``OUT/scores.jsonl``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mmalign.benchmarks.judges import judge_name
from mmalign.benchmarks.protocol import FileVersion, ProtocolCard, sha256_bytes, sha256_json
from mmalign.benchmarks.report import BenchmarkResult, write_report
from mmalign.benchmarks.resumable import cached_map
from mmalign.benchmarks.runner import load_image, require, resolve_image
from mmalign.benchmarks.safety import scorer_label
from mmalign.io import read_records

Scorer = Callable[..., Sequence[float]]
VL_REWARDBENCH = "vl-rewardbench"
MM_REWARDBENCH = "mm-rewardbench"
#: VL-RewardBench's three categories in the paper's order.
VL_CATEGORIES = ("general", "hallucination", "reasoning")
#: Dataset folder of ``image_path`` -> category (the official ``cal.py``).
VL_DATASET_CATEGORY = {
    "vlfeedback": "general", "wildvision-battle": "general", "povid": "hallucination",
    "rlhf-v": "hallucination", "rlaif-v": "hallucination", "reasoning_tasks": "reasoning",
}
#: Lower-cased ``id`` prefix (before the first "-" and "_") -> category (lmms-eval).
VL_ID_CATEGORY = {
    "mathverse": "reasoning", "mmmu": "reasoning", "hallucination": "hallucination", "rlhf": "hallucination",
    "rlaif": "hallucination", "wildvision": "general", "vlfeedback": "general",
}
#: Multimodal RewardBench's categories in its leaderboard's order, with the leaderboard's names.
MM_CATEGORIES = {
    "open_generation/correctness_task": "General Correctness",
    "open_generation/preference_task": "General Preference",
    "knowledge": "Knowledge",
    "reasoning": "Reasoning",
    "safety": "Safety",
    "vqa": "VQA",
}


@dataclass(frozen=True)
class RewardPair:
    """One benchmark record as a preference pair. ``images``: the image sources in order (a
    file inside the image folder or encoded bytes); ``subcategory``: a finer group, if the
    benchmark has one."""

    key: str
    images: tuple[Path | bytes, ...]
    prompt: str
    chosen: str
    rejected: str
    category: str
    subcategory: str | None = None

    def image_ids(self) -> list[str]:
        """Names for the protocol card: a file's name, or the hash of encoded bytes."""
        return [sha256_bytes(s) if isinstance(s, bytes) else s.name for s in self.images]


# --------------------------------------------------------------------------- readers


def _records(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet file, or records of a JSON / JSON Lines file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return read_records(path)


def _keyed(records: Sequence[dict[str, Any]], path: Path, key_field: str):
    """(where, key, record) of each record: ``where`` names the file, record number and key
    for error messages; a missing or repeated key is an error."""
    seen: set[str] = set()
    for i, record in enumerate(records):
        where = f"{path} record {i}"
        key = str(require(record, key_field, where, (str, int)))
        where = f"{where} ({key_field} {key})"
        if key in seen:
            raise ValueError(f"{where}: duplicate {key_field}")
        seen.add(key)
        yield where, key, record


def _text(record: Mapping[str, Any], name: str, where: str) -> str:
    value = require(record, name, where, str)
    if not value.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return value


def _image_file(image_dir: Path | None, name: str, where: str, field: str) -> Path:
    path = resolve_image(image_dir, name, f"{where}, field {field!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{where}, field {field!r}: image file {path} not found")
    return path


def _vl_image(record: Mapping[str, Any], image_dir: Path | None, where: str) -> Path | bytes:
    """The image of a VL-RewardBench record: the parquet's bytes, else a path."""
    image = record.get("image")
    if isinstance(image, Mapping):
        if isinstance(image.get("bytes"), bytes) and image["bytes"]:
            return image["bytes"]
        if isinstance(image.get("path"), str) and image["path"]:
            return _image_file(image_dir, image["path"], where, "image")
        raise ValueError(f"{where}: field 'image' has neither bytes nor a path")
    if isinstance(image, str):
        return _image_file(image_dir, image, where, "image")
    if image is not None:
        raise ValueError(f"{where}: field 'image' must be a path or {{'bytes', 'path'}}, got {type(image).__name__}")
    return _image_file(image_dir, require(record, "image_path", where, str), where, "image_path")


def vl_category(record: Mapping[str, Any], key: str) -> str:
    """A VL-RewardBench record's category (see the module docstring for the order)."""
    if isinstance(record.get("category"), str) and record["category"]:
        return record["category"]
    parts = str(record.get("image_path") or "").split("/")
    if len(parts) > 2 and parts[1] in VL_DATASET_CATEGORY:
        return VL_DATASET_CATEGORY[parts[1]]
    prefix = key.split("-")[0].split("_")[0].lower()
    return VL_ID_CATEGORY.get(prefix, "general")


def load_vl_rewardbench(path: str | Path, image_dir: str | Path | None = None) -> list[RewardPair]:
    """VL-RewardBench pairs from a local JSON, JSON Lines or parquet file.

    ``human_ranking`` gives each response's rank, 0 the preferred: the chosen response is the
    one ranked 0, the rejected the one ranked 1. Errors name the record and the field.
    """
    path = Path(path)
    folder = Path(image_dir) if image_dir is not None else None
    pairs: list[RewardPair] = []
    for where, key, record in _keyed(_records(path), path, "id"):
        responses = require(record, "response", where, list)
        if len(responses) != 2 or not all(isinstance(r, str) for r in responses):
            raise ValueError(f"{where}: field 'response' must be a list of two strings, got {responses!r}")
        ranking = require(record, "human_ranking", where, list)
        if sorted(ranking) != [0, 1] or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking):
            raise ValueError(f"{where}: field 'human_ranking' must be [0, 1] (first preferred) or [1, 0] "
                             f"(second preferred), got {ranking!r}")
        pairs.append(RewardPair(
            key=key,
            images=(_vl_image(record, folder, where),),
            prompt=_text(record, "query", where),
            chosen=responses[ranking.index(0)],
            rejected=responses[ranking.index(1)],
            category=vl_category(record, key),
        ))
    if not pairs:
        raise ValueError(f"{path}: no records")
    return pairs


def mm_subcategory(category: str, key: str) -> str | None:
    """The official accuracy script's finer group of a Multimodal RewardBench pair."""
    lowered = key.lower()
    if category == "safety":
        return "safety/bias" if lowered.startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if lowered.startswith("math") else "reasoning/coding"
    return None


def load_mm_rewardbench(path: str | Path, image_dir: str | Path | None = None) -> list[RewardPair]:
    """Multimodal RewardBench pairs from its ``all_data.json`` (or JSON Lines); ``Better``
    names the preferred output, "Output1" or "Output2". Errors name the record and the field."""
    path = Path(path)
    folder = Path(image_dir) if image_dir is not None else None
    pairs: list[RewardPair] = []
    for where, key, record in _keyed(read_records(path), path, "ID"):
        better = require(record, "Better", where, str)
        if better not in ("Output1", "Output2"):
            raise ValueError(f"{where}: field 'Better' must be 'Output1' or 'Output2', got {better!r}")
        worse = "Output2" if better == "Output1" else "Output1"
        category = _text(record, "Category", where)
        pairs.append(RewardPair(
            key=key,
            images=(_image_file(folder, require(record, "Image", where, str), where, "Image"),),
            prompt=_text(record, "Text", where),
            chosen=require(record, better, where, str),
            rejected=require(record, worse, where, str),
            category=category,
            subcategory=mm_subcategory(category, key),
        ))
    if not pairs:
        raise ValueError(f"{path}: no records")
    return pairs


#: Each reward benchmark's reader, by the name ``mmalign bench NAME`` gives it.
REWARD_BENCHMARKS: dict[str, Callable[[str | Path, str | Path | None], list[RewardPair]]] = {
    VL_REWARDBENCH: load_vl_rewardbench,
    MM_REWARDBENCH: load_mm_rewardbench,
}


# --------------------------------------------------------------------------- metrics


def _group(flags: Sequence[bool], ties: Sequence[bool]) -> dict[str, Any]:
    return {"accuracy": 100.0 * sum(flags) / len(flags), "correct": sum(flags), "ties": sum(ties), "n": len(flags)}


def pair_accuracy(pairs: Sequence[RewardPair], chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, Any]:
    """Accuracy (percent of pairs whose chosen response scores strictly higher; a tie is
    wrong) overall, per category and per subcategory, and the macro average over categories."""
    if not (len(pairs) == len(chosen) == len(rejected)) or not pairs:
        raise ValueError(f"{len(chosen)} chosen and {len(rejected)} rejected scores for {len(pairs)} pairs")
    correct = [c > r for c, r in zip(chosen, rejected, strict=True)]
    ties = [c == r for c, r in zip(chosen, rejected, strict=True)]

    def groups(label: Callable[[RewardPair], str | None]) -> dict[str, dict[str, Any]]:
        members: dict[str, list[int]] = {}
        for i, pair in enumerate(pairs):
            name = label(pair)
            if name is not None:
                members.setdefault(name, []).append(i)
        return {name: _group([correct[i] for i in rows], [ties[i] for i in rows]) for name, rows in members.items()}

    per_category = groups(lambda p: p.category)
    return {
        "overall": _group(correct, ties),
        "macro_accuracy": sum(c["accuracy"] for c in per_category.values()) / len(per_category),
        "per_category": per_category,
        "per_subcategory": groups(lambda p: p.subcategory),
    }


def _ordered(table: Mapping[str, Any], first: Sequence[str]) -> dict[str, Any]:
    """``table`` with the benchmark's own categories first, in its order, then the rest sorted."""
    return {k: table[k] for k in [*(f for f in first if f in table), *sorted(set(table) - set(first))]}


def headline(benchmark: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers each benchmark's paper reports."""
    out = {"Overall accuracy": metrics["overall"]["accuracy"]}
    if benchmark == VL_REWARDBENCH:
        out["Macro accuracy"] = metrics["macro_accuracy"]
        out.update({c: m["accuracy"] for c, m in _ordered(metrics["per_category"], VL_CATEGORIES).items()})
    else:
        out.update({MM_CATEGORIES.get(c, c): m["accuracy"]
                    for c, m in _ordered(metrics["per_category"], list(MM_CATEGORIES)).items()})
    return out


# --------------------------------------------------------------------------- scoring


def load_reward_scorer(path: str | Path, base: str | Path | None = None, *, batch_size: int = 8,
                       aggregation: str | None = None, uncertainty_weight: float | None = None,
                       **adapter_kwargs: Any) -> Scorer:
    """A saved reward model or ensemble as a scorer, on the base it was trained on unless
    ``base`` is given; an ensemble scores with ``aggregation`` (default: its own), which its
    name then carries, so cached scores of another aggregation are never reused."""
    from mmalign.reward import RewardEnsemble, RewardScorer, load_reward_model

    model = load_reward_model(path, base, aggregation=aggregation, uncertainty_weight=uncertainty_weight,
                              **adapter_kwargs)
    name = scorer_label(path)
    if isinstance(model, RewardEnsemble):
        weight = f" λ={model.uncertainty_weight:g}" if model.aggregation == "uncertainty_weighted" else ""
        name = f"{name} ({len(model)} members, {model.aggregation}{weight})"
    return RewardScorer(model, batch_size=batch_size, name=name)


def _pair_images(pair: RewardPair) -> list[Image.Image]:
    return [load_image(source, f"pair {pair.key} image {k}") for k, source in enumerate(pair.images)]


def score_pairs(pairs: Sequence[RewardPair], scorer: Scorer, *, batch_size: int = 8, cache: Path | None = None,
                settings: Mapping[str, Any] | None = None, desc: str = "scoring pairs",
                progress: bool = True) -> list[dict[str, Any]]:
    """``{"id", "chosen_score", "rejected_score"}`` per pair: each batch's chosen and rejected
    responses in one scorer call, with a progress bar; cached in ``cache`` (resumable)."""
    name = judge_name(scorer)

    def compute(batch: list[RewardPair], _: int) -> list[dict[str, Any]]:
        images = [_pair_images(p) for p in batch]
        prompts = [p.prompt for p in batch]
        scores = list(scorer(images + images, prompts + prompts, [p.chosen for p in batch] +
                             [p.rejected for p in batch]))
        if len(scores) != 2 * len(batch):
            raise RuntimeError(f"scorer {name} returned {len(scores)} scores for {2 * len(batch)} responses")
        values = [float(s) for s in scores]
        for pair, c, r in zip(batch, values, values[len(batch):]):
            if not (math.isfinite(c) and math.isfinite(r)):
                raise RuntimeError(f"scorer {name} gave pair {pair.key} a non-finite score ({c}, {r})")
        return [{"id": p.key, "chosen_score": c, "rejected_score": r}
                for p, c, r in zip(batch, values, values[len(batch):])]

    return cached_map(list(pairs), [p.key for p in pairs], compute, key_of=lambda r, where: str(require(r, "id", where)),
                      path=cache, settings=dict(settings or {}), batch_size=batch_size, desc=desc, progress=progress)


def run_reward_bench(
    benchmark: str,
    data: str | Path,
    scorer: Scorer,
    *,
    image_dir: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    model_name: str | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Score every pair of ``data`` (in ``benchmark``'s layout: "vl-rewardbench" or
    "mm-rewardbench") with ``scorer`` and report accuracy overall and per category; with
    ``out``, scores are cached in ``out/scores.jsonl`` and the reports written there."""
    if benchmark not in REWARD_BENCHMARKS:
        raise ValueError(f"unknown reward benchmark {benchmark!r}; expected one of {', '.join(REWARD_BENCHMARKS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pairs = REWARD_BENCHMARKS[benchmark](data, image_dir)
    name = model_name or judge_name(scorer)
    content = sha256_json([asdict(p) | {"images": p.image_ids()} for p in pairs])
    workdir = Path(out) if out is not None else None
    records = score_pairs(
        pairs, scorer, batch_size=batch_size, cache=workdir / "scores.jsonl" if workdir is not None else None,
        settings={"benchmark": benchmark, "scorer": name, "pairs_sha256": content, "batch_size": batch_size},
        desc=f"{benchmark}: scoring pairs", progress=progress)
    chosen = [r["chosen_score"] for r in records]
    rejected = [r["rejected_score"] for r in records]
    metrics = pair_accuracy(pairs, chosen, rejected)
    breakdowns = {"Per category": metrics["per_category"]}
    if metrics["per_subcategory"]:
        breakdowns["Per subcategory"] = metrics["per_subcategory"]
    details = [{"id": p.key, "category": p.category, "subcategory": p.subcategory, "prompt": p.prompt,
                "chosen": p.chosen, "rejected": p.rejected, "chosen_score": c, "rejected_score": r,
                "margin": c - r, "correct": c > r, "tie": c == r}
               for p, c, r in zip(pairs, chosen, rejected, strict=True)]
    card = ProtocolCard.build([FileVersion.of("pairs", data)], len(pairs),
                              (i for p in pairs for i in p.image_ids()))
    card.answers = {"source": "the responses of the benchmark file", "scorer": judge_name(scorer)}
    result = BenchmarkResult(
        benchmark=benchmark,
        headline=headline(benchmark, metrics),
        metrics=metrics,
        protocol={
            "pairs": len(pairs),
            "label": "human_ranking: rank 0 is preferred" if benchmark == VL_REWARDBENCH
            else "Better names the preferred output",
            "correct": "the chosen response scores strictly higher; a tie counts as wrong",
            "overall": "all pairs pooled",
            "macro": "mean of the per-category accuracies",
            "categories": sorted(metrics["per_category"]),
            "units": "percent",
        },
        breakdowns=breakdowns,
        details=details,
        model=name,
        card=card,
    )
    if workdir is not None:
        write_report(result, workdir)
    return result
