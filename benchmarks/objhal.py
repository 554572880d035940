"""Object HalBench (RLHF-V): object hallucination in detailed image descriptions.

300 COCO images, each asked one of eight "describe in detail" instructions (RLHF-V decodes
with beam search, 3 beams). Each response's *unique* objects are compared with the image's
ground truth (instance categories ∪ reference-caption objects, as in CHAIR):

- Response Hall = responses with at least one hallucinated object / responses that mention
  at least one object of the vocabulary;
- Object Hall = hallucinated unique objects / unique objects, summed over responses.

RLHF-V's official path first asks an LLM to list the objects a response mentions. Here the
deterministic path (the CHAIR parser on the response) is the default, and
``extract_objects`` plugs in any extractor: a callable from a response to object words or
phrases, each then mapped to categories by the same parser.

Questions: JSON or JSON Lines records with ``image_id``, the instruction (``question``,
``text`` or ``prompt``), optionally ``question_id`` (the key when every record has one;
otherwise ``image_id`` is) and ``image`` (a file name, or the image as base64 text as in
RLHF-V's file; without it, the COCO file name of ``image_id`` is used).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.benchmarks.chair import (
    SYNONYMS_OPTION,
    VOCABULARY_OPTION,
    GroundTruth,
    choose_vocabulary,
    load_ground_truth,
    object_card,
)
from mmalign.benchmarks.metrics import ratio
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
from mmalign.grounding.objects import (
    ObjectExtractor,
    ObjectVocabulary,
    extractor_label,
    find_mentions,
)
from mmalign.io import read_records

_QUESTION_FIELDS = ("question", "text", "prompt", "instruction")


def response_objects(
    text: str, vocabulary: ObjectVocabulary, extract_objects: ObjectExtractor | None = None
) -> set[str]:
    """The unique categories a response mentions, via the parser or an extractor."""
    return {m.category for m in find_mentions(text, vocabulary, extract_objects)}


def objhal_metrics(objects: Sequence[set[str]], ground_truths: Sequence[set[str]]) -> dict[str, float]:
    """Response-level and object-level hallucination rates (percent) over responses."""
    if len(objects) != len(ground_truths):
        raise ValueError(f"{len(objects)} responses but {len(ground_truths)} ground truths")
    hallucinated = [found - truth for found, truth in zip(objects, ground_truths)]
    with_objects = sum(bool(found) for found in objects)
    return {
        "response_hall": 100 * ratio(sum(bool(h) for h in hallucinated), with_objects),
        "object_hall": 100 * ratio(sum(len(h) for h in hallucinated), sum(len(f) for f in objects)),
        "recall": 100 * ratio(sum(len(f & t) for f, t in zip(objects, ground_truths)),
                              sum(len(t) for t in ground_truths)),
        "responses": len(objects),
        "responses_with_objects": with_objects,
        "unique_objects": sum(len(f) for f in objects),
        "hallucinated_objects": sum(len(h) for h in hallucinated),
    }


@dataclass
class ObjHalConfig:
    questions: str | Path = field(metadata={"help": "Object HalBench questions (JSON or JSON Lines)"})
    instances: str | Path | None = field(default=None, metadata={"help": "COCO instances JSON"})
    captions: str | Path | None = field(default=None, metadata={"help": "COCO captions JSON"})
    image_dir: str | Path | None = field(default=None, metadata={
        "help": "image folder (needed with --model unless images are inline)", "flag": "--images"})
    vocabulary: str | ObjectVocabulary = field(default="auto", metadata=VOCABULARY_OPTION)
    synonyms: str | Path | None = field(default=None, metadata=SYNONYMS_OPTION)
    extract_objects: ObjectExtractor | None = None
    extractor_name: str | None = None  # recorded in the report (default: the callable's name)


@dataclass(frozen=True)
class _Question:
    key: str
    image_id: int | str
    text: str
    image: str | None
    record_id: dict[str, Any]


class ObjHalBenchmark(Benchmark):
    name = "objhal"
    answer_field = "text"

    def __init__(self, config: ObjHalConfig):
        self.config = config
        self.truth: GroundTruth = load_ground_truth(config.instances, config.captions,
                                                    choose_vocabulary(config.vocabulary, config.synonyms))
        records = read_records(config.questions)
        self.key_field = "question_id" if records and all("question_id" in r for r in records) else "image_id"
        self.questions: list[_Question] = []
        seen: set[str] = set()
        for i, record in enumerate(records):
            where = f"{config.questions} record {i}"
            image_id = require(record, "image_id", where, (int, str))
            if str(image_id) not in self.truth.objects:
                raise ValueError(f"{where}: image_id {image_id} is not in the annotation files")
            key = str(require(record, self.key_field, where, (int, str)))
            if key in seen:
                raise ValueError(f"{where}: duplicate {self.key_field} {key}")
            seen.add(key)
            text = next((record[f] for f in _QUESTION_FIELDS if isinstance(record.get(f), str)), None)
            if text is None:
                raise ValueError(f"{where}: missing the instruction (one of the fields {', '.join(_QUESTION_FIELDS)})")
            self.questions.append(
                _Question(key, image_id, text, record.get("image"), {self.key_field: record[self.key_field]})
            )

    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=512)

    def _image(self, q: _Question) -> Path | bytes:
        where = f"Object HalBench question {q.key}"
        image_dir = Path(self.config.image_dir) if self.config.image_dir is not None else None
        if q.image is None:
            name = self.truth.file_names.get(str(q.image_id))
            if name is None:
                raise ValueError(f"{where}: no 'image' field and no file name for image_id {q.image_id}")
            return resolve_image(image_dir, name, where)
        if len(q.image) > 512:  # file names are short; RLHF-V ships images as base64 text
            try:
                return base64.b64decode(q.image, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: field 'image' is neither a file name nor base64 image data") from None
        return resolve_image(image_dir, q.image, where)

    def items(self) -> list[Item]:
        return [
            Item(q.key, q.text, self._image(q), {**q.record_id, "image_id": q.image_id, "question": q.text})
            for q in self.questions
        ]

    def answer_key(self, record: Mapping[str, Any], where: str) -> str:
        return str(require(record, self.key_field, where, (int, str)))

    def score(self, answers: list[dict[str, Any]], workdir: Path | None) -> BenchmarkResult:
        joined = join_by_key(answers, [q.key for q in self.questions], self.answer_key, what=self.key_field)
        vocab = self.truth.vocabulary
        found_all, truths, details = [], [], []
        for q in self.questions:
            text = answer_text(joined[q.key], f"answer to Object HalBench question {q.key}", self.answer_field)
            found = response_objects(text, vocab, self.config.extract_objects)
            truth = self.truth.objects[str(q.image_id)]
            found_all.append(found)
            truths.append(truth)
            details.append(
                {**q.record_id, "image_id": q.image_id, "response": text, "objects": sorted(found),
                 "hallucinated": sorted(found - truth), "ground_truth": sorted(truth)}
            )
        metrics = objhal_metrics(found_all, truths)
        return BenchmarkResult(
            benchmark=self.name,
            headline={"Response Hall": metrics["response_hall"], "Object Hall": metrics["object_hall"]},
            metrics=metrics,
            protocol={
                "vocabulary": vocab.describe(),
                "object_extractor": extractor_label(self.config.extract_objects, self.config.extractor_name),
                "ground_truth": "instance categories + objects in reference captions",
                "ground_truth_files": self.truth.sources,
                "join": f"by {self.key_field}",
                "units": "percent",
            },
            details=details,
            card=ProtocolCard.build(
                [FileVersion.of("questions", self.config.questions), *self.truth.files], len(self.questions),
                (q.image_id for q in self.questions),
                **object_card(self.truth, self.config.synonyms, self.config.extract_objects,
                              self.config.extractor_name)),
        )


run_objhal = ObjHalBenchmark.run
