"""POPE: object-existence yes/no questions, scored the way LLaVA-1.5 reported them.

Files are JSON Lines (whatever the extension), one question per line: ``question_id``,
``image`` (file name), ``text`` (the question) and ``label`` ("yes"/"no"). There are three
splits (random, popular, adversarial) in two versions: the one LLaVA-1.5 pinned (random
has 2,910 questions) and the current one (3,000 per split). The report states which.

Answers are joined to questions by key — (split, question_id) — never by line order.
The official parser is the default; the stricter ``"strict"`` mode is an option. Metrics per
split use "yes" as the positive class; the headline is the mean of the split F1s.

Answers from other tools (see :mod:`mmalign.benchmarks.answers`): lmms-eval log samples
carry the split (``doc["category"]``) and the label, which must match the questions'. LLaVA's
``model_vqa_loader`` answers to its combined ``llava_pope_test.jsonl`` carry that file's
ids, unique over the splits but not those of the per-split files: give the combined file as
``llava_questions`` and each answer goes to the question at the same position of the same
split, as LLaVA's ``eval_pope.py`` pairs them. Answers to the per-split files themselves
(ids restarting at 1) come as one file per split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.benchmarks.answers import load_answers
from mmalign.benchmarks.metrics import binary_metrics, first_word_yes_no
from mmalign.benchmarks.protocol import FileVersion, ProtocolCard
from mmalign.benchmarks.report import BenchmarkResult
from mmalign.benchmarks.runner import (
    Benchmark,
    GenerationConfig,
    Item,
    answer_text,
    join_by_key,
    require,
    resolve_image,
)
from mmalign.io import read_records

SPLITS = ("random", "popular", "adversarial")
#: Questions per split in each data version.
DATA_VERSIONS: dict[str, dict[str, int]] = {
    "llava-1.5": {"random": 2910, "popular": 3000, "adversarial": 3000},
    "current": {"random": 3000, "popular": 3000, "adversarial": 3000},
}
#: LLaVA-1.5's short-answer instruction, appended to every question.
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."


def parse_official(text: str) -> str:
    """LLaVA's POPE parser: keep the text before the first ".", delete commas, split on
    spaces; "no" if any token is exactly "No", "no" or "not", else "yes".

    So "NO", "No!", "don't" and an empty answer all count as "yes", as in the official
    numbers.
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def parse_strict(text: str) -> str:
    """Unknown-aware parser: the first word, case-folded, must be "yes" or "no"; any other
    answer is "unknown" and counts as wrong."""
    return first_word_yes_no(text)


PARSERS: dict[str, Callable[[str], str]] = {"official": parse_official, "strict": parse_strict}


def pope_metrics(labels: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (share of *predicted* yes), in percent."""
    metrics = binary_metrics(labels, predictions, positive="yes")
    metrics["yes_ratio"] = metrics.pop("predicted_positive")
    return metrics


@dataclass(frozen=True)
class PopeQuestion:
    split: str
    question_id: int | str
    image: str
    text: str
    label: str

    @property
    def key(self) -> str:
        return f"{self.split}/{self.question_id}"


def _split_of_file(path: Path) -> str:
    stem = path.name.split(".")[0]
    for split in SPLITS:
        if stem == split or stem.endswith("_" + split):
            return split
    return stem


def _find_split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split in SPLITS:
        matches = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl")
            and _split_of_file(p) == split
        )
        if len(matches) > 1:
            raise ValueError(f"{folder}: several files for POPE split {split!r}: {', '.join(m.name for m in matches)}")
        if matches:
            found[split] = matches[0]
    if not found:
        raise ValueError(
            f"{folder}: no POPE files (expected names ending in _random.json, _popular.json, _adversarial.json)"
        )
    return found


def pope_files(source: str | Path | Mapping[str, str | Path]) -> list[tuple[str | None, Path]]:
    """The question files of a folder of split files, one file, or a {split: file} mapping,
    each with its split (``None``: read from the records or the file name)."""
    if isinstance(source, Mapping):
        return [(str(s), Path(p)) for s, p in source.items()]
    if Path(source).is_dir():
        return list(_find_split_files(Path(source)).items())
    return [(None, Path(source))]


def load_pope(source: str | Path | Mapping[str, str | Path]) -> list[PopeQuestion]:
    """POPE questions from a folder of split files, one file, or a {split: file} mapping.

    A single file's split comes from a ``category`` field on each record (LLaVA's combined
    format) or else from the file name (``coco_pope_random.json`` -> random).
    """
    questions: list[PopeQuestion] = []
    seen: set[str] = set()
    for split, path in pope_files(source):
        for i, record in enumerate(read_records(path)):
            where = f"{path} record {i}"
            record_split = split or record.get("category") or _split_of_file(path)
            if record.get("label") is None and "category" in record:
                raise ValueError(
                    f"{where}: missing field 'label': LLaVA's combined llava_pope_test.jsonl has no labels; "
                    "give the folder of coco_pope_*.json files as the questions and this file as llava_questions"
                )
            label = require(record, "label", where, str).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"{where}: field 'label' must be 'yes' or 'no', got {record['label']!r}")
            q = PopeQuestion(
                split=str(record_split),
                question_id=require(record, "question_id", where, (int, str)),
                image=require(record, "image", where, str),
                text=require(record, "text", where, str),
                label=label,
            )
            if q.key in seen:
                raise ValueError(f"{where}: duplicate question_id {q.question_id} in split {q.split!r}")
            seen.add(q.key)
            questions.append(q)
    return questions


def split_counts(questions: Sequence[PopeQuestion]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in questions:
        counts[q.split] = counts.get(q.split, 0) + 1
    return counts


def detect_data_version(counts: Mapping[str, int]) -> str:
    """Which POPE version these split sizes are: "llava-1.5" (random has 2,910), "current"
    (3,000 each) or "custom" (anything else, e.g. a subset or another dataset)."""
    matching = [
        name for name, expected in DATA_VERSIONS.items()
        if counts and all(counts[s] == expected.get(s) for s in counts)
    ]
    if not matching:
        return "custom"
    if len(matching) == 1:
        return matching[0]
    return "llava-1.5 or current (identical without the random split)"


def check_data_version(version: str, counts: Mapping[str, int]) -> str:
    """Resolve ``"auto"``; for a named version, insist that the split sizes match it, since
    mixing versions silently changes the numbers."""
    if version == "auto":
        return detect_data_version(counts)
    if version == "custom":
        return version
    if version not in DATA_VERSIONS:
        raise ValueError(
            f"unknown POPE data_version {version!r}; expected auto, custom or one of {', '.join(DATA_VERSIONS)}"
        )
    expected = DATA_VERSIONS[version]
    for split, n in counts.items():
        if expected.get(split) != n:
            raise ValueError(
                f"POPE data_version {version!r} has {expected.get(split, 'no')} questions in split "
                f"{split!r}, the questions file has {n}: are you mixing data versions?"
            )
    return version


def llava_question_keys(path: str | Path, questions: Sequence[PopeQuestion]) -> dict[str, str]:
    """``question_id`` of LLaVA's combined ``llava_pope_test.jsonl`` -> key of the per-split
    question at the same position of the same split (``category``), the pairing of LLaVA's
    ``eval_pope.py``. The images must agree; splits not among ``questions`` are left out."""
    by_split: dict[str, list[PopeQuestion]] = {}
    for q in questions:
        by_split.setdefault(q.split, []).append(q)
    positions: dict[str, int] = {}
    keys: dict[str, str] = {}
    for i, record in enumerate(read_records(path)):
        where = f"{path} record {i}"
        qid = str(require(record, "question_id", where, (int, str)))
        split = require(record, "category", where, str)
        if qid in keys:
            raise ValueError(f"{where}: duplicate question_id {qid}")
        if split not in by_split:  # a split not evaluated: its answers have no question to join
            keys[qid] = f"{split}/llava-{qid}"
            continue
        position = positions.get(split, 0)
        positions[split] = position + 1
        if position >= len(by_split[split]):
            raise ValueError(f"{where}: split {split!r} has more questions here than the "
                             f"{len(by_split[split])} of its per-split file")
        q = by_split[split][position]
        image = require(record, "image", where, str)
        if image != q.image:
            raise ValueError(f"{where}: image {image!r}, but question {position + 1} of split {split!r} "
                             f"({q.key}) is about {q.image!r}: the files do not belong together")
        keys[qid] = q.key
    return keys


@dataclass
class PopeConfig:
    """What to evaluate and how. ``questions``: a folder of split files, a file, or a
    {split: file} mapping; ``splits`` keeps only those splits; ``parsing`` is "official"
    (default) or "strict"; ``data_version`` is "auto", "llava-1.5", "current" or "custom"."""

    questions: str | Path | Mapping[str, str | Path] = field(metadata={
        "help": "folder of coco_pope_{random,popular,adversarial}.json files, one file, or SPLIT=FILE pairs"})
    image_dir: str | Path | None = field(
        default=None, metadata={"help": "image folder (needed with --model)", "flag": "--images"})
    splits: Sequence[str] | None = field(default=None, metadata={"help": "evaluate only these splits"})
    parsing: str = field(default="official", metadata={"help": "yes/no parsing of the answers",
                                                       "choices": list(PARSERS)})
    data_version: str = field(default="auto", metadata={
        "help": "POPE version the split sizes must match", "choices": ["auto", *DATA_VERSIONS, "custom"]})
    llava_questions: str | Path | None = field(default=None, metadata={
        "help": "LLaVA's combined llava_pope_test.jsonl, whose ids the answers carry: each answer goes to the "
        "question at the same position of the same split, as LLaVA's eval_pope.py pairs them"})
    prompt_suffix: str = PROMPT_SUFFIX

    def __post_init__(self) -> None:
        if self.parsing not in PARSERS:
            raise ValueError(f"unknown POPE parsing mode {self.parsing!r}; expected one of {', '.join(PARSERS)}")


class PopeBenchmark(Benchmark):
    name = "pope"
    answer_field = "text"

    def __init__(self, config: PopeConfig):
        self.config = config
        questions = load_pope(config.questions)
        if config.splits is not None:
            unknown = sorted(set(config.splits) - {q.split for q in questions})
            if unknown:
                raise ValueError(f"POPE splits {unknown} are not in the questions file(s)")
            questions = [q for q in questions if q.split in config.splits]
        self.questions = questions
        evaluated = {q.split for q in questions}
        self.files = [FileVersion.of(f"questions ({split})" if split else "questions", path)
                      for split, path in pope_files(config.questions) if split is None or split in evaluated]
        if config.llava_questions:
            self.files.append(FileVersion.of("llava questions", config.llava_questions))
        self.data_version = check_data_version(config.data_version, split_counts(questions))
        self._keys_by_id: dict[str, list[str]] = {}
        for q in questions:
            self._keys_by_id.setdefault(str(q.question_id), []).append(q.key)
        self._llava_keys = llava_question_keys(config.llava_questions, questions) if config.llava_questions else {}

    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=128)

    def generation_protocol(self) -> dict[str, Any]:
        return {"prompt_suffix": self.config.prompt_suffix}

    def items(self) -> list[Item]:
        image_dir = Path(self.config.image_dir) if self.config.image_dir is not None else None
        return [
            Item(
                key=q.key,
                prompt=q.text + self.config.prompt_suffix,
                image=resolve_image(image_dir, q.image, f"POPE question {q.key}"),
                record={"question_id": q.question_id, "split": q.split, "image": q.image, "question": q.text},
            )
            for q in self.questions
        ]

    def answer_key(self, record: Mapping[str, Any], where: str) -> str:
        qid = str(require(record, "question_id", where, (int, str)))
        split = record.get("split") or record.get("category")
        if split is not None:
            return f"{split}/{qid}"
        if self._llava_keys:
            if qid not in self._llava_keys:
                raise ValueError(f"{where}: question_id {qid} is not in {self.config.llava_questions}")
            return self._llava_keys[qid]
        keys = self._keys_by_id.get(qid, [])
        if not keys:
            raise ValueError(f"{where}: question_id {qid} is not in the POPE questions file")
        if len(keys) > 1:
            splits = ", ".join(k.split("/")[0] for k in keys)
            raise ValueError(
                f"{where}: question_id {qid} is in several splits ({splits}); add a 'split' "
                "field to the answers or give one answers file per split"
            )
        return keys[0]

    def read_answers(self, source: Any, answers_format: str = "auto") -> list[dict[str, Any]]:
        """A file (records may carry ``split``), several files, or a {split: file} mapping."""
        if isinstance(source, Mapping):
            formats, records = [], []
            for split, path in source.items():
                fmt, part = load_answers(path, answers_format)
                formats.append(fmt)
                records += [{**record, "split": str(split)} for record in part]
            self.answers_format = "+".join(dict.fromkeys(formats))
            return records
        return super().read_answers(source, answers_format)

    def score(self, answers: list[dict[str, Any]], workdir: Path | None) -> BenchmarkResult:
        parse = PARSERS[self.config.parsing]
        joined = join_by_key(answers, [q.key for q in self.questions], self.answer_key, what="POPE question")
        per_split: dict[str, tuple[list[str], list[str]]] = {}
        details = []
        for q in self.questions:
            where = f"answer to POPE question {q.key}"
            reference = joined[q.key].get("reference_answer")
            if isinstance(reference, str) and reference.strip().lower() != q.label:
                raise ValueError(f"{where}: the answers file gives the label {reference!r} but the question's is "
                                 f"{q.label!r}: were the answers made on another POPE version?")
            text = answer_text(joined[q.key], where, self.answer_field)
            prediction = parse(text)
            labels, predictions = per_split.setdefault(q.split, ([], []))
            labels.append(q.label)
            predictions.append(prediction)
            details.append(
                {"split": q.split, "question_id": q.question_id, "question": q.text, "label": q.label,
                 "answer": text, "prediction": prediction, "correct": prediction == q.label}
            )
        splits = {split: pope_metrics(*lp) for split, lp in per_split.items()}
        mean = {m: sum(s[m] for s in splits.values()) / len(splits) for m in ("f1", "accuracy", "yes_ratio")}
        headline = {"F1 (mean of splits)": mean["f1"]}
        headline.update({f"F1 {split}": s["f1"] for split, s in splits.items()})
        headline["Accuracy (mean)"] = mean["accuracy"]
        headline["Yes-ratio (mean)"] = mean["yes_ratio"]
        columns = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown", "n")
        return BenchmarkResult(
            benchmark=self.name,
            headline=headline,
            metrics={"splits": splits, "mean_f1": mean["f1"], "mean_accuracy": mean["accuracy"],
                     "mean_yes_ratio": mean["yes_ratio"]},
            breakdowns={"Per split": {split: {c: s[c] for c in columns} for split, s in splits.items()}},
            protocol={
                "data_version": self.data_version,
                "questions_per_split": split_counts(self.questions),
                "parsing": self.config.parsing,
                "positive_class": "yes",
                "join": "by (split, question_id)",
                "units": "percent",
            },
            details=details,
            card=ProtocolCard.build(self.files, len(self.questions), (q.image for q in self.questions)),
        )


run_pope = PopeBenchmark.run
