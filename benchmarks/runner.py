"""The one runner every benchmark shares: batched, resumable generation and scoring.

A benchmark module (``pope.py``, ``chair.py``...) declares only what is specific to it — its
file formats, prompts, answer parsing and metrics — as a :class:`Benchmark` subclass.
:func:`run_benchmark` does the rest: it either generates answers with a model adapter (in
batches, with a progress bar, caching every finished batch so an interrupted run resumes
where it stopped and ends with the same file) or reads an answers file produced elsewhere,
joins the answers to the questions by key, scores them and writes the reports.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mmalign.benchmarks.answers import load_answers
from mmalign.benchmarks.protocol import FileVersion, sha256_json
from mmalign.benchmarks.report import BenchmarkResult, write_report
from mmalign.benchmarks.resumable import cached_map
from mmalign.data_builders.images import ImageError, resolve_inside

#: Fields that may hold the answer text in an answers file, tried in this order after the
#: benchmark's own field (LLaVA writes "text", AMBER "response", MMHal "model_answer").
ANSWER_FIELDS = ("text", "answer", "response", "caption", "model_answer", "output", "prediction")


@dataclass
class GenerationConfig:
    """Decoding settings; recorded in every report and checked when a run resumes."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0  # sampled runs seed each batch with seed + batch index

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def card(self, prompt: Mapping[str, Any]) -> dict[str, Any]:
        """The protocol card's generation entry; ``prompt`` is what the benchmark adds to
        its questions (empty: they are asked as they are). Temperature, top_p and seed are
        named only for sampling, where they change the answers."""
        sampled = self.do_sample
        return {
            "max_new_tokens": self.max_new_tokens,
            "decoding": "sampling" if sampled else "greedy",
            "temperature": self.temperature if sampled else None,
            "top_p": self.top_p if sampled else None,
            "seed": self.seed if sampled else None,
            "batch_size": self.batch_size,
            "prompt": dict(prompt) or "questions as they are",
        }


@dataclass(frozen=True)
class Item:
    """One prompt to answer: its key, the prompt text, the image (a file, encoded bytes, a
    tuple of those for a prompt with several ``<image>`` placeholders, in their order, or
    ``None`` for text-only) and the fields copied into its answer record."""

    key: str
    prompt: str
    image: Path | bytes | tuple[Path | bytes, ...] | None
    record: dict[str, Any]


class Benchmark(ABC):
    """What a benchmark declares: ``name``, ``answer_field``, its prompts, join key and
    scoring; the rest (generation, resume, reports) is the runner's."""

    name: str = ""
    answer_field: str = "text"  # field the answer text is written to in the answers file
    progress: bool = True  # progress bars for work done while scoring (e.g. judging)
    answers_format: str = "mmalign"  # format of the answers read (set by read_answers)
    scores_answers: bool = True  # False: it measures the model itself (log-probs): no answers file to score

    def default_generation(self) -> GenerationConfig:
        return GenerationConfig()

    @classmethod
    def run(
        cls,
        config: Any,
        *,
        adapter: Any = None,
        answers: Any = None,
        out: str | Path | None = None,
        generation: GenerationConfig | None = None,
        model_name: str | None = None,
        progress: bool = True,
        answers_format: str = "auto",
    ) -> BenchmarkResult:
        """Build the benchmark from ``config``, then generate answers with ``adapter`` or
        score ``answers``; see :func:`run_benchmark`. Each module exposes this as ``run_<name>``."""
        return run_benchmark(
            cls(config), adapter=adapter, answers=answers, out=out,
            generation=generation, model_name=model_name, progress=progress, answers_format=answers_format,
        )

    @abstractmethod
    def items(self) -> list[Item]:
        """The prompts to answer, in the benchmark's order."""

    def generation_protocol(self) -> dict[str, Any]:
        """Settings besides decoding that shape the answers (e.g. the prompt suffix)."""
        return {}

    def collect(self, adapter: Any, generation: GenerationConfig, *, cache: Path | None, model_name: str,
                progress: bool) -> list[dict[str, Any]]:
        """The records :meth:`score` reads, made with ``adapter``: the answers it generates to
        :meth:`items` (cached in ``cache``). A benchmark that also measures the model another
        way (log-probs of given responses) extends this."""
        return generate_answers(adapter, self, generation, cache=cache, model_name=model_name, progress=progress)

    @abstractmethod
    def answer_key(self, record: Mapping[str, Any], where: str) -> str:
        """The key joining an answer record to its question."""

    def read_answers(self, source: Any, answers_format: str = "auto") -> list[dict[str, Any]]:
        """Answer records from a file produced elsewhere (mmalign's, LLaVA's or lmms-eval's;
        see :mod:`mmalign.benchmarks.answers`), several files, or records already in memory."""
        self.answers_format, records = load_answers(source, answers_format)
        return records

    @abstractmethod
    def score(self, answers: list[dict[str, Any]], workdir: Path | None) -> BenchmarkResult:
        """Join ``answers`` to the questions by key and compute the metrics."""


# --------------------------------------------------------------------------- files


def require(record: Mapping[str, Any], name: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``record[name]``, or an error naming the record and the field."""
    if name not in record or record[name] is None:
        raise ValueError(f"{where}: missing field {name!r}")
    value = record[name]
    if kind is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: field {name!r} must be {expected}, got {value!r}")
    return value


def answer_text(record: Mapping[str, Any], where: str, preferred: str = "text") -> str:
    """The answer text of an answer record, from the first answer field present."""
    for name in (preferred, *ANSWER_FIELDS):
        if name in record and record[name] is not None:
            value = record[name]
            if not isinstance(value, str):
                raise ValueError(f"{where}: field {name!r} must be a string, got {value!r}")
            return value
    fields = ", ".join(dict.fromkeys((preferred, *ANSWER_FIELDS)))
    raise ValueError(f"{where}: no answer text (expected one of the fields {fields})")


def join_by_key(
    answers: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    key_of: Callable[[Mapping[str, Any], str], str],
    *,
    what: str = "question",
    require_all: bool = True,
    hint: str = "",
) -> dict[str, Mapping[str, Any]]:
    """Map each question key to its answer record, never by position.

    Errors name the record: an answer whose key is not a question, two answers for one
    question, and (with ``require_all``) questions left without an answer.
    """
    known = set(keys)
    joined: dict[str, Mapping[str, Any]] = {}
    for i, record in enumerate(answers):
        where = f"answers record {i}"
        key = key_of(record, where)
        if key not in known:
            raise ValueError(f"{where}: there is no {what} {key}")
        if key in joined:
            raise ValueError(f"{where}: a second answer for {key}")
        joined[key] = record
    if require_all:
        missing = [k for k in keys if k not in joined]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"answers file has no answer for {len(missing)} {what}(s): {shown}{hint}")
    return joined


def load_image(source: Path | bytes | None, where: str) -> Image.Image | None:
    """An RGB image from a file or encoded bytes; ``None`` stays ``None`` (text-only)."""
    if source is None:
        return None
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"{where}: image file {source} not found")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read image: {err}") from None


def item_images(source: Path | bytes | tuple[Path | bytes, ...] | None,
                where: str) -> Image.Image | list[Image.Image] | None:
    """An item's image, or its images in order when it has several (a tuple of sources)."""
    if isinstance(source, tuple):
        return [load_image(s, f"{where} image {k}") for k, s in enumerate(source)]
    return load_image(source, where)


def resolve_image(image_dir: Path | None, name: str, where: str) -> Path:
    """``image_dir / name``, confined to the image folder: a question file naming an absolute
    path or one that climbs out with ``..`` (symlinks resolved) is refused."""
    if image_dir is None:
        raise ValueError(f"{where}: image {name!r} needs an image folder, but no image folder was given")
    try:
        return resolve_inside(Path(image_dir), name)
    except ImageError as err:
        raise ValueError(f"{where}: {err}") from None


def generate_answers(
    adapter: Any,
    benchmark: Benchmark,
    generation: GenerationConfig,
    *,
    cache: Path | None = None,
    model_name: str = "",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Answer every item of ``benchmark`` with ``adapter.generate``, resumably.

    Answers are stripped of surrounding whitespace (as LLaVA's evaluation scripts do) and
    stored in the benchmark's answer field beside the item's fields and the prompt.
    """
    items = benchmark.items()
    settings = {
        "benchmark": benchmark.name,
        "model": model_name,
        "decoding": generation.to_dict(),
        **benchmark.generation_protocol(),
    }

    def compute(batch: list[Item], batch_index: int) -> list[dict[str, Any]]:
        if generation.do_sample:
            import torch

            torch.manual_seed(generation.seed + batch_index)
        images = [item_images(it.image, f"{benchmark.name} item {it.key}") for it in batch]
        texts = adapter.generate(
            images,
            [it.prompt for it in batch],
            max_new_tokens=generation.max_new_tokens,
            do_sample=generation.do_sample,
            temperature=generation.temperature,
            top_p=generation.top_p,
        )
        return [
            {**it.record, "prompt": it.prompt, benchmark.answer_field: text.strip()}
            for it, text in zip(batch, texts, strict=True)
        ]

    return cached_map(
        items,
        [it.key for it in items],
        compute,
        key_of=benchmark.answer_key,
        path=cache,
        settings=settings,
        batch_size=generation.batch_size,
        desc=f"{benchmark.name}: generating",
        progress=progress,
    )


def run_benchmark(
    benchmark: Benchmark,
    *,
    adapter: Any = None,
    answers: Any = None,
    out: str | Path | None = None,
    generation: GenerationConfig | None = None,
    model_name: str | None = None,
    progress: bool = True,
    answers_format: str = "auto",
) -> BenchmarkResult:
    """Generate answers with ``adapter`` (cached in ``out/answers.jsonl``) or read
    ``answers`` (a file produced elsewhere, in ``answers_format``: auto, mmalign, llava or
    lmms-eval), score them, and write the reports to ``out``.
    """
    if (adapter is None) == (answers is None):
        raise ValueError("give exactly one of adapter (to generate answers) or answers (to score a file)")
    if answers is not None and not benchmark.scores_answers:
        raise ValueError(f"{benchmark.name} measures the model itself: give adapter=, there are no answers to score")
    workdir = Path(out) if out is not None else None
    benchmark.progress = progress
    if adapter is not None:
        generation = generation or benchmark.default_generation()
        name = model_name or _model_label(adapter)
        records = benchmark.collect(
            adapter,
            generation,
            cache=workdir / "answers.jsonl" if workdir is not None else None,
            model_name=name,
            progress=progress,
        )
        source = {"answers": "generated by the model", "decoding": generation.to_dict(),
                  **benchmark.generation_protocol()}
        origin = {"source": "generated by mmalign", "model": name, "model_path": _loaded_from(adapter) or None}
        decoding: dict[str, Any] | None = generation.card(benchmark.generation_protocol())
    else:
        records = benchmark.read_answers(answers, answers_format)
        name = model_name or _answers_label(answers)
        source = {"answers": _describe_source(answers), "answers_format": benchmark.answers_format,
                  "decoding": "not recorded (answers produced elsewhere)"}
        origin = _answers_origin(answers, benchmark.answers_format)
        decoding = None
    result = benchmark.score(records, workdir)
    result.model = name
    result.protocol = {**result.protocol, **source}
    if result.card is not None:
        result.card.answers = origin
        result.card.generation = decoding
    if workdir is not None:
        write_report(result, workdir)
    return result


def _loaded_from(adapter: Any) -> str:
    """The folder or hub id the adapter's model was loaded from ("" when it does not say)."""
    return str(getattr(getattr(adapter, "base_model", None), "name_or_path", "") or "")


def _model_label(adapter: Any) -> str:
    """The folder or hub id the model was loaded from (a card name says too little: every
    fine-tuned LLaVA shares one)."""
    loaded_from = _loaded_from(adapter)
    if loaded_from:
        return Path(loaded_from).name
    return getattr(getattr(adapter, "card", None), "name", None) or "model"


def _answers_label(answers: Any) -> str:
    if isinstance(answers, str | Path):
        return Path(answers).stem
    return "answers"


def _answers_origin(answers: Any, answers_format: str) -> dict[str, Any]:
    """The protocol card's answers entry for answers made elsewhere: the files with their
    hashes (records given in Python: their count and a hash of their content)."""
    if isinstance(answers, str | Path):
        files = [FileVersion.of("answers", answers)]
    elif isinstance(answers, Mapping):
        files = [FileVersion.of(f"answers ({split})", path) for split, path in answers.items()]
    elif isinstance(answers, Sequence) and answers and all(isinstance(a, str | Path) for a in answers):
        files = [FileVersion.of("answers", path) for path in answers]
    else:
        records = [dict(r) for r in answers]
        return {"source": "records given in Python", "format": answers_format, "records": len(records),
                "sha256": sha256_json(records)}
    return {"source": "answers file", "format": answers_format, "files": [asdict(f) for f in files]}


def _describe_source(answers: Any) -> Any:
    if isinstance(answers, str | Path):
        return str(answers)
    if isinstance(answers, Mapping):
        return {str(k): str(v) for k, v in answers.items()}
    if isinstance(answers, Sequence) and answers and all(isinstance(a, str | Path) for a in answers):
        return [str(a) for a in answers]
    return "records given in Python"
