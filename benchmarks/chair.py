"""CHAIR: object hallucination in image captions (Rohrbach et al., 2018).

A caption's object mentions come from :class:`~mmalign.grounding.objects.ObjectVocabulary`:
the official CHAIR synonym list plus mmalign's own words (``coco``, the default), the
official list alone (``chair``), a list read from a ``synonyms`` file, or the instance
categories for other datasets; all with the CHAIR two-word and special rules. An image's
ground truth is the union of its instance-annotation categories and the objects found in
all its reference captions (run through the same parser). A mention is hallucinated when
its category is not in the ground truth.

- CHAIR_i = hallucinated mentions / all mentions (duplicates count);
- CHAIR_s = captions with at least one hallucinated mention / all captions (a caption
  with no mention counts, as clean);
- Recall = correctly mentioned distinct ground-truth objects / ground-truth objects;
- Length = mean number of words per caption.

Inputs are COCO files: ``instances_*.json`` ({images, annotations, categories}) and
``captions_*.json`` ({images, annotations: [{image_id, caption}]}). Answers are records
with ``image_id`` and the caption text, joined by ``image_id``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.benchmarks.metrics import ratio
from mmalign.benchmarks.protocol import FileVersion, ProtocolCard, vocabulary_card
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
    VOCABULARY_CHOICES,
    Mention,
    ObjectExtractor,
    ObjectVocabulary,
    extractor_label,
    find_mentions,
    resolve_vocabulary,
)
from mmalign.grounding.text import tokenize
from mmalign.io import read_json

#: A digit string or a COCO file name; group 1 is the image number.
_COCO_FILE_ID = re.compile(r"(?:COCO_\w+?_)?(\d+)(?:\.\w+)?")

#: The instruction used for CHAIR captions in recent hallucination papers.
CAPTION_PROMPT = "Please describe this image in detail."



#: The object-word options CHAIR-style benchmarks share (their config fields' metadata).
VOCABULARY_OPTION = {
    "help": "object words: coco (official CHAIR list + mmalign's words), chair (the official list "
    "only), or the instance category names; auto: coco for COCO categories",
    "choices": list(VOCABULARY_CHOICES)}
SYNONYMS_OPTION = {
    "help": "another synonyms file in the CHAIR format (category, then its words, comma-separated, "
    "one category a line) used as the object words"}

@dataclass
class GroundTruth:
    """Per image (keyed by ``str(image_id)``): its file name and its ground-truth categories."""

    vocabulary: ObjectVocabulary
    file_names: dict[str, str] = field(default_factory=dict)
    objects: dict[str, set[str]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    files: list[FileVersion] = field(default_factory=list)


def load_ground_truth(
    instances: str | Path | None = None,
    captions: str | Path | None = None,
    vocabulary: str | ObjectVocabulary = "auto",
) -> GroundTruth:
    """Ground truth = instance categories ∪ objects mentioned in the reference captions."""
    if instances is None and captions is None:
        raise ValueError("CHAIR ground truth needs an instances file, a captions file, or both")
    inst = read_json(instances) if instances is not None else None
    caps = read_json(captions) if captions is not None else None
    names: dict[Any, str] = {}
    if inst is not None:
        for i, cat in enumerate(require(inst, "categories", f"{instances}", list)):
            where = f"{instances} categories[{i}]"
            names[require(cat, "id", where)] = require(cat, "name", where, str)
    vocab = resolve_vocabulary(vocabulary, list(names.values()))
    given = [(role, p) for role, p in (("instances", instances), ("captions", captions)) if p is not None]
    truth = GroundTruth(vocab, sources=[str(p) for _, p in given],
                        files=[FileVersion.of(role, p) for role, p in given])
    for path, data in ((instances, inst), (captions, caps)):
        if data is None:
            continue
        for i, image in enumerate(require(data, "images", f"{path}", list)):
            where = f"{path} images[{i}]"
            key = str(require(image, "id", where))
            truth.file_names[key] = require(image, "file_name", where, str)
            truth.objects.setdefault(key, set())
    if inst is not None:
        for i, ann in enumerate(require(inst, "annotations", f"{instances}", list)):
            where = f"{instances} annotations[{i}]"
            cat_id = require(ann, "category_id", where)
            if cat_id not in names:
                raise ValueError(f"{where}: category_id {cat_id} is not in the categories list")
            category = vocab.category_of(names[cat_id])
            if category is None:
                raise ValueError(f"{where}: category {names[cat_id]!r} is not in vocabulary {vocab.name!r}")
            truth.objects.setdefault(str(require(ann, "image_id", where)), set()).add(category)
    if caps is not None:
        for i, ann in enumerate(require(caps, "annotations", f"{captions}", list)):
            where = f"{captions} annotations[{i}]"
            text = require(ann, "caption", where, str)
            found = {m.category for m in vocab.mentions(text)}
            truth.objects.setdefault(str(require(ann, "image_id", where)), set()).update(found)
    return truth


def choose_vocabulary(vocabulary: str | ObjectVocabulary, synonyms: str | Path | None) -> str | ObjectVocabulary:
    """The configured vocabulary, or the words of a ``synonyms`` file (with the official
    CHAIR rules), which replaces the official list and so only goes with "auto" or "chair"."""
    if synonyms is None:
        return vocabulary
    if vocabulary not in ("auto", "chair"):
        raise ValueError(f"a synonyms file replaces the official CHAIR list; it cannot be combined with "
                         f"vocabulary {vocabulary!r} (use auto or chair)")
    return ObjectVocabulary.chair(synonyms)


def object_card(truth: GroundTruth, synonyms: str | Path | None, extract_objects: ObjectExtractor | None,
                extractor_name: str | None) -> dict[str, Any]:
    """The protocol card's entries for CHAIR-type metrics: the vocabulary, and the object
    extractor as the judge when one (e.g. an LLM) replaces the parser."""
    judge = {"object_extractor": extractor_label(extract_objects, extractor_name)} if extract_objects else None
    return {"vocabulary": vocabulary_card(truth.vocabulary, synonyms), "judge": judge}


@dataclass(frozen=True)
class CaptionScore:
    """One caption against its image's ground truth."""

    mentions: tuple[Mention, ...]
    ground_truth: frozenset[str]
    words: int

    @property
    def hallucinated(self) -> list[Mention]:
        return [m for m in self.mentions if m.category not in self.ground_truth]

    @property
    def covered(self) -> set[str]:
        return {m.category for m in self.mentions} & self.ground_truth


def score_caption(
    text: str,
    ground_truth: set[str] | frozenset[str],
    vocabulary: ObjectVocabulary,
    extract_objects: ObjectExtractor | None = None,
) -> CaptionScore:
    mentions = find_mentions(text, vocabulary, extract_objects)
    return CaptionScore(tuple(mentions), frozenset(ground_truth), len(tokenize(text)))


def chair_metrics(scores: Sequence[CaptionScore]) -> dict[str, float]:
    """CHAIR_s, CHAIR_i, recall (percent) and mean length over scored captions."""
    mentions = sum(len(s.mentions) for s in scores)
    hallucinated = sum(len(s.hallucinated) for s in scores)
    return {
        "chair_s": 100 * ratio(sum(bool(s.hallucinated) for s in scores), len(scores)),
        "chair_i": 100 * ratio(hallucinated, mentions),
        "recall": 100 * ratio(sum(len(s.covered) for s in scores), sum(len(s.ground_truth) for s in scores)),
        "length": ratio(sum(s.words for s in scores), len(scores)),
        "captions": len(scores),
        "mentions": mentions,
        "hallucinated_mentions": hallucinated,
    }


@dataclass
class ChairConfig:
    """``instances``/``captions``: COCO files; ``image_ids`` or ``num_images`` (a seeded
    sample of the annotated images) choose what to caption and then every chosen image must
    be answered; without them, any annotated image may be answered. ``extract_objects``
    (e.g. an LLM) lists the objects of a caption instead of the parser."""

    instances: str | Path | None = field(default=None, metadata={"help": "COCO instances JSON"})
    captions: str | Path | None = field(default=None, metadata={"help": "COCO captions JSON"})
    image_dir: str | Path | None = field(
        default=None, metadata={"help": "image folder (needed with --model)", "flag": "--images"})
    image_ids: Sequence[int | str] | None = field(default=None, metadata={"help": "caption exactly these images"})
    num_images: int | None = field(
        default=None, metadata={"help": "caption a seeded random sample of this many images"})
    seed: int = field(default=0, metadata={"help": "seed of the --num-images sample", "flag": "--sample-seed"})
    prompt: str = field(default=CAPTION_PROMPT, metadata={"help": "captioning prompt"})
    vocabulary: str | ObjectVocabulary = field(default="auto", metadata=VOCABULARY_OPTION)
    synonyms: str | Path | None = field(default=None, metadata=SYNONYMS_OPTION)
    extract_objects: ObjectExtractor | None = None
    extractor_name: str | None = None  # recorded in the report (default: the callable's name)


class ChairBenchmark(Benchmark):
    name = "chair"
    answer_field = "caption"

    def __init__(self, config: ChairConfig):
        self.config = config
        self.truth = load_ground_truth(config.instances, config.captions,
                                       choose_vocabulary(config.vocabulary, config.synonyms))
        self.selection = self._select()

    def _select(self) -> list[str] | None:
        config = self.config
        if config.image_ids is not None:
            keys = [str(i) for i in config.image_ids]
            unknown = [k for k in keys if k not in self.truth.objects]
            if unknown:
                raise ValueError(f"CHAIR image_ids not in the annotation files: {', '.join(unknown[:5])}")
            return keys
        if config.num_images is not None:
            annotated = sorted(self.truth.file_names, key=_id_order)
            if config.num_images > len(annotated):
                raise ValueError(f"num_images={config.num_images} but only {len(annotated)} images are annotated")
            return sorted(random.Random(config.seed).sample(annotated, config.num_images), key=_id_order)
        return None

    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=512)

    def generation_protocol(self) -> dict[str, Any]:
        return {"prompt": self.config.prompt}

    def items(self) -> list[Item]:
        keys = self.selection if self.selection is not None else sorted(self.truth.file_names, key=_id_order)
        image_dir = Path(self.config.image_dir) if self.config.image_dir is not None else None
        items = []
        for key in keys:
            if key not in self.truth.file_names:
                raise ValueError(f"CHAIR image {key}: no file name in the annotation files' images list")
            name = self.truth.file_names[key]
            items.append(
                Item(key, self.config.prompt, resolve_image(image_dir, name, f"CHAIR image {key}"),
                     {"image_id": _as_id(key), "image": name})
            )
        return items

    def answer_key(self, record: Mapping[str, Any], where: str) -> str:
        """``image_id``, else ``question_id`` (LLaVA's caption files and lmms-eval's
        coco_cap_chair use the image id, or the COCO file name, as the question id)."""
        for name in ("image_id", "question_id"):
            if record.get(name) is not None:
                value = require(record, name, where, (int, str))
                return str(value) if str(value) in self.truth.objects else _image_key(value, where, name)
        raise ValueError(f"{where}: missing field 'image_id' (or a 'question_id' holding the image id)")

    def score(self, answers: list[dict[str, Any]], workdir: Path | None) -> BenchmarkResult:
        keys = self.selection if self.selection is not None else list(self.truth.objects)
        joined = join_by_key(answers, keys, self.answer_key, what="annotated image",
                             require_all=self.selection is not None)
        order = keys if self.selection is not None else sorted(joined, key=_id_order)
        scores, details = [], []
        for key in order:
            text = answer_text(joined[key], f"caption of image {key}", self.answer_field)
            s = score_caption(text, self.truth.objects[key], self.truth.vocabulary, self.config.extract_objects)
            scores.append(s)
            details.append(
                {"image_id": _as_id(key), "caption": text,
                 "mentions": [m.category for m in s.mentions],
                 "hallucinated": [m.category for m in s.hallucinated],
                 "ground_truth": sorted(s.ground_truth)}
            )
        metrics = chair_metrics(scores)
        return BenchmarkResult(
            benchmark=self.name,
            headline={"CHAIR_s": metrics["chair_s"], "CHAIR_i": metrics["chair_i"],
                      "Recall": metrics["recall"], "Length (words)": metrics["length"]},
            metrics=metrics,
            protocol={
                "vocabulary": self.truth.vocabulary.describe(),
                "ground_truth": "instance categories + objects in reference captions",
                "ground_truth_files": self.truth.sources,
                "images": "all answered" if self.selection is None else f"{len(self.selection)} selected",
                "sample_seed": self.config.seed if self.config.num_images is not None else None,
                "object_extractor": extractor_label(self.config.extract_objects, self.config.extractor_name),
                "singulariser": "inflect (offline)",
                "units": "percent (length in words)",
            },
            details=details,
            card=ProtocolCard.build(self.truth.files, len(order), order,
                                    **object_card(self.truth, self.config.synonyms, self.config.extract_objects,
                                                  self.config.extractor_name)),
        )


def _image_key(value: int | str, where: str, name: str) -> str:
    """An image id as the ground truth keys it: the number of a digit string or of a COCO file
    name ("COCO_val2014_000000000042.jpg" -> "42"); other strings as they are."""
    if isinstance(value, int):
        return str(value)
    match = _COCO_FILE_ID.fullmatch(value.strip())
    if match is None:
        if not value.strip():
            raise ValueError(f"{where}: field {name!r} is empty")
        return value.strip()
    return str(int(match.group(1)))


def _id_order(key: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then other ids by name."""
    return (0, int(key)) if key.isdigit() else (1, key)


def _as_id(key: str) -> int | str:
    return int(key) if key.isdigit() else key


run_chair = ChairBenchmark.run
