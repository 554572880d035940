"""AMBER: generative and discriminative hallucination, scored as AMBER's ``inference.py`` does.

Files (official layout, or any folder holding them): ``query_all.json`` (a list of
{id, image, query}), ``annotations.json`` (row ``id - 1`` belongs to query ``id``:
generative rows {type: "generative", truth: [objects], hallu: [absent objects]},
discriminative rows {type, truth: "yes"/"no"}), ``relation.json`` (object -> associated
words) and ``safe_words.txt``. Answers are {id, response}, joined by ``id``.

Generative (per response): the response's nouns that are in AMBER's vocabulary (every
``relation.json`` key and associated word) are checked in order. A safe word is skipped
(it still counts as a noun). A noun equal to a truth object or one of its associated
words covers that object. Otherwise, a noun equal (or similar) to a ``hallu`` object or its
associations marks that object as mentioned; then, unless it is similar to a truth word,
the noun is a hallucination. CHAIR = hallucinated nouns / nouns; Cover = covered truth
objects / truth objects; Hal = responses with a hallucination / responses; Cog = mentioned
``hallu`` objects / ``hallu`` objects.

Two steps of the official code need data that cannot be downloaded here, and have offline
substitutes (named in the report):

- noun extraction (NLTK POS tags NN* + WordNet lemmas): the words of the response,
  singularised by mmalign's singulariser (inflect), kept if in the vocabulary. Case is kept
  as in the official code (a capitalised "Dog" is not the vocabulary word "dog"). A
  vocabulary word used as a verb or adjective ("orange shirt") counts as a noun here.
- word similarity (spaCy ``en_core_web_lg`` vectors, similarity > 0.8): by default words
  are similar only when equal after singularisation, which can only raise CHAIR and Hal
  (synonyms are not rescued). ``similarity`` plugs in any word-similarity function, e.g.
  one backed by locally available word vectors.

Discriminative: answers parsed to yes/no ("first-word" by default; "exact" compares with
"Yes"/"No" as the official script does); "No" is the positive class for precision, recall
and F1. AMBER score = (100 - CHAIR + F1) / 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.benchmarks.metrics import binary_metrics, first_word_yes_no, ratio
from mmalign.benchmarks.protocol import FileVersion, ProtocolCard, sha256_json
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
from mmalign.grounding.text import singularize, tokenize
from mmalign.io import read_json

GENERATIVE = "generative"
#: Discriminative annotation types and the short names used in reports.
DISCRIMINATIVE_TYPES = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "attribute-state",
    "discriminative-attribute-number": "attribute-number",
    "discriminative-attribute-action": "attribute-action",
    "discriminative-relation": "relation",
}
KINDS = ("all", "generative", "discriminative", "existence", "attribute", "relation")

WordSimilarity = Callable[[str, str], float]
NounExtractor = Callable[[str], Sequence[str]]


def exact_similarity(a: str, b: str) -> float:
    """The offline default for the word-vector step: 1.0 for equal words, else 0.0."""
    return 1.0 if a == b else 0.0


def offline_nouns(text: str) -> list[str]:
    """Candidate nouns without a POS tagger: every word, singularised, case kept."""
    return [singularize(w) for w in tokenize(text)]


def parse_yes_no(text: str, mode: str = "first-word") -> str:
    """"yes", "no" or "unknown". ``"exact"``: only "Yes"/"No" exactly (the official
    comparison); ``"first-word"``: the first word, case-folded, punctuation ignored."""
    if mode == "exact":
        return {"Yes": "yes", "No": "no"}.get(text, "unknown")
    if mode == "first-word":
        return first_word_yes_no(text)
    raise ValueError(f"unknown AMBER parsing mode {mode!r}; expected first-word or exact")


@dataclass(frozen=True)
class GenerativeScore:
    """One generative response: its vocabulary nouns, the hallucinated ones, and which truth
    / hallu objects (by index into the annotation's lists) it mentioned."""

    nouns: tuple[str, ...]
    hallucinated: tuple[str, ...]
    covered: frozenset[int]
    cognised: frozenset[int]
    n_truth: int
    n_hallu: int


def score_generative(
    response: str,
    truth: Sequence[str],
    hallu: Sequence[str],
    association: Mapping[str, Sequence[str]],
    safe_words: set[str] | frozenset[str],
    *,
    vocabulary: set[str] | frozenset[str] | None = None,
    similarity: WordSimilarity | None = None,
    threshold: float = 0.8,
    extract_nouns: NounExtractor | None = None,
) -> GenerativeScore:
    """Check one response's nouns against its truth and hallu objects (see the module doc)."""
    vocabulary = vocabulary if vocabulary is not None else amber_vocabulary(association)
    sim = similarity or exact_similarity
    nouns = [n for n in (extract_nouns or offline_nouns)(response) if n in vocabulary]
    # Associated words first, then the objects themselves: the official search order.
    safe = [(w, i) for i, t in enumerate(truth) for w in association.get(t, ())]
    safe += [(t, i) for i, t in enumerate(truth)]
    risky = [(w, i) for i, t in enumerate(hallu) for w in association.get(t, ())]
    risky += [(t, i) for i, t in enumerate(hallu)]

    def first(pairs: list[tuple[str, int]], match: Callable[[str], bool]) -> int | None:
        return next((i for w, i in pairs if match(w)), None)

    covered: set[int] = set()
    cognised: set[int] = set()
    hallucinated: list[str] = []
    for noun in nouns:
        if noun in safe_words:
            continue
        hit = first(safe, lambda w, noun=noun: w == noun)
        if hit is not None:
            covered.add(hit)
            continue
        for match in (lambda w, noun=noun: w == noun, lambda w, noun=noun: sim(noun, w) > threshold):
            hit = first(risky, match)
            if hit is not None:
                cognised.add(hit)
        hit = first(safe, lambda w, noun=noun: sim(noun, w) > threshold)
        if hit is not None:
            covered.add(hit)
            continue
        hallucinated.append(noun)
    return GenerativeScore(tuple(nouns), tuple(hallucinated), frozenset(covered), frozenset(cognised),
                           len(truth), len(hallu))


def generative_metrics(scores: Sequence[GenerativeScore]) -> dict[str, float]:
    """CHAIR, Cover, Hal and Cog in percent."""
    return {
        "chair": 100 * ratio(sum(len(s.hallucinated) for s in scores), sum(len(s.nouns) for s in scores)),
        "cover": 100 * ratio(sum(len(s.covered) for s in scores), sum(s.n_truth for s in scores)),
        "hal": 100 * ratio(sum(bool(s.hallucinated) for s in scores), len(scores)),
        "cog": 100 * ratio(sum(len(s.cognised) for s in scores), sum(s.n_hallu for s in scores)),
        "responses": len(scores),
        "nouns": sum(len(s.nouns) for s in scores),
    }


def discriminative_metrics(truths: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (percent) with "no" as the positive class."""
    metrics = binary_metrics(truths, predictions, positive="no")
    metrics["no_ratio"] = metrics.pop("predicted_positive")
    return metrics


def amber_score(chair: float, f1: float) -> float:
    """(100 - CHAIR + F1) / 2, both in percent."""
    return (100 - chair + f1) / 2


def amber_vocabulary(association: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """Every object word AMBER knows: the relation keys and all their associated words."""
    return frozenset(association) | frozenset(w for words in association.values() for w in words)


@dataclass
class AmberData:
    queries: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    association: dict[str, list[str]]
    safe_words: frozenset[str]
    sources: dict[str, str]

    @classmethod
    def from_dir(cls, folder: str | Path, query_file: str | Path | None = None) -> AmberData:
        """Find the AMBER files in ``folder`` (flat, or the official ``data/`` layout)."""
        folder = Path(folder)

        def find(*candidates: str) -> Path:
            for c in candidates:
                if (folder / c).is_file():
                    return folder / c
            raise FileNotFoundError(f"{folder}: none of {', '.join(candidates)} found")

        paths = {
            "query": Path(query_file) if query_file else find(
                "query_all.json", "query/query_all.json", "data/query/query_all.json"),
            "annotations": find("annotations.json", "data/annotations.json"),
            "relation": find("relation.json", "data/relation.json"),
            "safe_words": find("safe_words.txt", "data/safe_words.txt"),
        }
        queries = read_json(paths["query"])
        annotations = read_json(paths["annotations"])
        association = read_json(paths["relation"])
        for name, value, kind in (("query", queries, list), ("annotations", annotations, list),
                                  ("relation", association, dict)):
            if not isinstance(value, kind):
                raise ValueError(f"{paths[name]}: expected a JSON {kind.__name__}")
        lines = paths["safe_words"].read_text(encoding="utf-8").splitlines()
        return cls(queries, annotations, association, frozenset(w.strip() for w in lines if w.strip()),
                   {k: str(v) for k, v in paths.items()})


@dataclass
class AmberConfig:
    """``data_dir`` holds the AMBER files; ``kinds`` selects the queries (all, generative,
    discriminative, existence, attribute, relation); ``similarity`` replaces the
    word-vector step (default: equality)."""

    data_dir: str | Path = field(metadata={
        "help": "folder with query_all.json, annotations.json, relation.json, safe_words.txt", "flag": "--data"})
    query_file: str | Path | None = field(
        default=None, metadata={"help": "another query file (e.g. query_generative.json)"})
    image_dir: str | Path | None = field(
        default=None, metadata={"help": "image folder (needed with --model)", "flag": "--images"})
    kinds: str = field(default="all", metadata={"help": "queries to evaluate", "choices": list(KINDS)})
    parsing: str = field(default="first-word", metadata={"help": "yes/no parsing of discriminative answers",
                                                         "choices": ["first-word", "exact"]})
    discriminative_suffix: str = field(default="", metadata={"help": "text appended to discriminative queries"})
    similarity: WordSimilarity | None = None
    similarity_name: str | None = None
    similarity_threshold: float = 0.8
    extract_nouns: NounExtractor | None = None

    def __post_init__(self) -> None:
        if self.kinds not in KINDS:
            raise ValueError(f"unknown AMBER kinds {self.kinds!r}; expected one of {', '.join(KINDS)}")
        parse_yes_no("", self.parsing)  # validates the mode


def _selected(kind: str, annotation_type: str) -> bool:
    if kind == "all":
        return True
    if kind == "generative":
        return annotation_type == GENERATIVE
    if kind == "discriminative":
        return annotation_type != GENERATIVE
    return DISCRIMINATIVE_TYPES.get(annotation_type, "").startswith(kind)


class AmberBenchmark(Benchmark):
    name = "amber"
    answer_field = "response"

    def __init__(self, config: AmberConfig):
        self.config = config
        self.data = AmberData.from_dir(config.data_dir, config.query_file)
        self.vocabulary = amber_vocabulary(self.data.association)
        self.queries: list[dict[str, Any]] = []
        self.annotation: dict[str, dict[str, Any]] = {}
        for i, query in enumerate(self.data.queries):
            where = f"{self.data.sources['query']} record {i}"
            qid = require(query, "id", where, int)
            require(query, "query", where, str)
            require(query, "image", where, str)
            annotation = self._annotation_of(qid, where)
            if _selected(config.kinds, annotation["type"]):
                self.queries.append(query)
                self.annotation[str(qid)] = annotation

    def _annotation_of(self, qid: int, where: str) -> dict[str, Any]:
        annotations, source = self.data.annotations, self.data.sources["annotations"]
        if not 1 <= qid <= len(annotations):
            raise ValueError(f"{where}: id {qid} has no row in {source} ({len(annotations)} rows)")
        row = annotations[qid - 1]
        at = f"{source} row {qid - 1}"
        if "id" in row and row["id"] != qid:
            raise ValueError(f"{at}: field 'id' is {row['id']}, expected {qid} (rows are indexed by id - 1)")
        kind = require(row, "type", at, str)
        if kind == GENERATIVE:
            for name in ("truth", "hallu"):
                if not isinstance(row.get(name), list):
                    raise ValueError(f"{at}: generative field {name!r} must be a list of objects")
        elif kind in DISCRIMINATIVE_TYPES:
            if row.get("truth") not in ("yes", "no"):
                raise ValueError(f"{at}: discriminative field 'truth' must be 'yes' or 'no', got {row.get('truth')!r}")
        else:
            raise ValueError(f"{at}: unknown type {kind!r}")
        return row

    def default_generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=512)

    def generation_protocol(self) -> dict[str, Any]:
        return {"discriminative_suffix": self.config.discriminative_suffix}

    def items(self) -> list[Item]:
        image_dir = Path(self.config.image_dir) if self.config.image_dir is not None else None
        items = []
        for q in self.queries:
            key = str(q["id"])
            suffix = "" if self.annotation[key]["type"] == GENERATIVE else self.config.discriminative_suffix
            items.append(Item(key, q["query"] + suffix, resolve_image(image_dir, q["image"], f"AMBER query {key}"),
                              {"id": q["id"], "image": q["image"]}))
        return items

    def answer_key(self, record: Mapping[str, Any], where: str) -> str:
        return str(require(record, "id", where, (int, str)))

    def score(self, answers: list[dict[str, Any]], workdir: Path | None) -> BenchmarkResult:
        keys = [str(q["id"]) for q in self.queries]
        joined = join_by_key(answers, keys, self.answer_key, what="AMBER query",
                             hint=" (to score part of AMBER, set kinds, e.g. kinds='generative')")
        gen_scores: list[GenerativeScore] = []
        truths: dict[str, list[str]] = {}
        predictions: dict[str, list[str]] = {}
        details = []
        for key in keys:
            row = self.annotation[key]
            text = answer_text(joined[key], f"answer to AMBER query {key}", self.answer_field)
            if row["type"] == GENERATIVE:
                s = score_generative(
                    text, row["truth"], row["hallu"], self.data.association, self.data.safe_words,
                    vocabulary=self.vocabulary, similarity=self.config.similarity,
                    threshold=self.config.similarity_threshold, extract_nouns=self.config.extract_nouns,
                )
                gen_scores.append(s)
                details.append({"id": int(key), "type": row["type"], "response": text, "nouns": list(s.nouns),
                                "hallucinated": list(s.hallucinated),
                                "covered": [row["truth"][i] for i in sorted(s.covered)],
                                "mentioned_hallu": [row["hallu"][i] for i in sorted(s.cognised)]})
            else:
                prediction = parse_yes_no(text, self.config.parsing)
                short = DISCRIMINATIVE_TYPES[row["type"]]
                for group in {"all", short, short.split("-")[0]}:
                    truths.setdefault(group, []).append(row["truth"])
                    predictions.setdefault(group, []).append(prediction)
                details.append({"id": int(key), "type": row["type"], "response": text, "truth": row["truth"],
                                "prediction": prediction, "correct": prediction == row["truth"]})
        metrics: dict[str, Any] = {}
        headline: dict[str, float] = {}
        breakdowns: dict[str, dict[str, dict[str, Any]]] = {}
        if gen_scores:
            g = generative_metrics(gen_scores)
            metrics["generative"] = g
            headline.update({"CHAIR": g["chair"], "Cover": g["cover"], "Hal": g["hal"], "Cog": g["cog"]})
        if truths:
            groups = {name: discriminative_metrics(truths[name], predictions[name]) for name in sorted(truths)}
            metrics["discriminative"] = groups
            headline.update({"Accuracy": groups["all"]["accuracy"], "F1": groups["all"]["f1"]})
            columns = ("accuracy", "precision", "recall", "f1", "no_ratio", "unknown", "n")
            breakdowns["Discriminative (positive class: No)"] = {
                name: {c: m[c] for c in columns} for name, m in groups.items()
            }
        if gen_scores and truths:
            metrics["amber_score"] = amber_score(metrics["generative"]["chair"], metrics["discriminative"]["all"]["f1"])
            headline["AMBER"] = metrics["amber_score"]
        similarity = self.config.similarity
        similarity_name = (
            (self.config.similarity_name or getattr(similarity, "__name__", "custom")) if similarity
            else "offline: equality after singularisation (word vectors unavailable)"
        )
        vocabulary = {
            "name": "AMBER relation.json + safe_words.txt",
            "sha256": sha256_json({"relation": self.data.association, "safe_words": sorted(self.data.safe_words)}),
            "noun_extraction": "custom" if self.config.extract_nouns else "offline (inflect)",
            "similarity": similarity_name,
            "similarity_threshold": self.config.similarity_threshold,
        }
        return BenchmarkResult(
            benchmark=self.name,
            headline=headline,
            metrics=metrics,
            breakdowns=breakdowns,
            protocol={
                "kinds": self.config.kinds,
                "files": self.data.sources,
                "discriminative_parsing": self.config.parsing,
                "positive_class": "no",
                "noun_extraction": "custom" if self.config.extract_nouns else
                "offline: words singularised by inflect, kept if in the AMBER vocabulary",
                "similarity": similarity_name,
                "similarity_threshold": self.config.similarity_threshold,
                "join": "by id",
                "units": "percent",
            },
            details=details,
            card=ProtocolCard.build([FileVersion.of(role, path) for role, path in self.data.sources.items()],
                                    len(keys), (q["image"] for q in self.queries), vocabulary=vocabulary),
        )


run_amber = AmberBenchmark.run
