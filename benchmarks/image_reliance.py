"""Image reliance: does a model's preference between two answers depend on the image?

Offline multimodal DPO can learn preferences from the text alone (mDPO, Wang et al., EMNLP
2024): a model that ignores the image scores a pair the same with any image or none, and its
preference accuracy says nothing about whether it looks. This diagnostic scores every pair of
a preference dataset with its own images (``true``) and with stand-ins — a mid-grey image of
the same size (``blank``), the images of another row (``shuffled``: a seeded derangement
among rows with as many images, never a row's own images) and a seeded corruption
(``corrupted``) — and reports per condition:

- the preference accuracy (share of pairs with log p(chosen) > log p(rejected)) and the mean
  margin; for a model with LoRA adapters also the DPO implicit reward margin
  β·[(π_c − ref_c) − (π_r − ref_r)], the reference being the same model with its adapters
  disabled;
- the image reliance: log p(chosen | true images) − log p(chosen | condition), averaged over
  the pairs in total and per response token, and the share of pairs whose chosen answer is
  more likely with the true images. A model that ignores the image scores exactly 0.

With POPE questions it also answers POPE with the true and with blank images (the POPE
benchmark's own prompts and scoring): an F1 that barely drops without the image means the
answers come from the question, not from the image.

The pairs' log-probs are the records this benchmark collects (``pair_scores.jsonl``, cached
per batch so an interrupted run resumes); the POPE answers go to ``answers.jsonl`` as in
``mmalign bench pope``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from mmalign.benchmarks.pope import PopeBenchmark, PopeConfig
from mmalign.benchmarks.protocol import FileVersion, ProtocolCard, sha256_bytes, sha256_json
from mmalign.benchmarks.report import BenchmarkResult
from mmalign.benchmarks.resumable import cached_map
from mmalign.benchmarks.runner import Benchmark, GenerationConfig, Item, join_by_key, require
from mmalign.chat import response_text
from mmalign.data_builders.corruptions import CORRUPTIONS, corrupt_image
from mmalign.data_builders.storage import iter_records, load_preference_dataset, validate_dataset

TRUE = "true"
#: The stand-ins for a row's images, compared with its true images.
CONDITIONS = ("blank", "shuffled", "corrupted")
#: The order of the headline's reliance numbers: the corrupted image keeps the most of the
#: image's look, so it is the hardest test of whether the model reads its content.
HEADLINE_ORDER = ("corrupted", "blank", "shuffled")
GREY = (128, 128, 128)
POPE_IMAGES = (TRUE, "blank")

#: Which way each metric is better (the report's direction table says why).
BETTER: dict[str, tuple[str, str]] = {
    "accuracy": ("higher with the true images; lower with the others than with the true ones",
                 "share of pairs whose chosen response is more likely than the rejected one (%)"),
    "mean_margin": ("higher with the true images", "mean of log p(chosen) - log p(rejected) (nats)"),
    "reliance": ("higher (0: the image is ignored)",
                 "mean of log p(chosen | true images) - log p(chosen | condition) (nats)"),
    "reliance_per_token": ("higher (0: the image is ignored)",
                           "the same, each pair's difference divided by its chosen response's tokens"),
    "true_preferred": ("higher", "share of pairs whose chosen response is more likely with the true images (%)"),
    "reward_accuracy": ("higher with the true images",
                        "share of pairs with a positive DPO implicit reward margin (%; models with LoRA)"),
    "mean_reward_margin": ("higher with the true images",
                           "mean of beta * [(pi_c - ref_c) - (pi_r - ref_r)], ref = adapters disabled"),
    "POPE f1": ("higher with the true images", "POPE F1, mean of the splits (%)"),
    "POPE accuracy": ("higher with the true images", "POPE accuracy, mean of the splits (%)"),
    "POPE yes_ratio": ("closer to 50 (the labels' share)", "share of yes answers, mean of the splits (%)"),
    "POPE drop": ("higher for f1 and accuracy", "true images minus blank images: what the image adds"),
}


# --------------------------------------------------------------------------- the maths


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def share(flags: Iterable[bool]) -> float | None:
    """Percentage of true flags (``None`` for none)."""
    flags = list(flags)
    return 100.0 * sum(flags) / len(flags) if flags else None


def dpo_reward_margin(beta: float, policy: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """DPO's implicit reward margin β·[(π_c − ref_c) − (π_r − ref_r)] of one pair."""
    return beta * ((policy["chosen"] - reference["chosen"]) - (policy["rejected"] - reference["rejected"]))


def pair_details(record: Mapping[str, Any], beta: float) -> dict[str, Any]:
    """One scored pair with its margins per condition, its reliance on the true images per
    other condition (total and per chosen token) and, with reference scores, its DPO reward
    margins."""
    logps: Mapping[str, Mapping[str, float]] = record["logps"]
    true = logps[TRUE]["chosen"]
    out = dict(record)
    out["margin"] = {c: s["chosen"] - s["rejected"] for c, s in logps.items()}
    out["reliance"] = {c: true - s["chosen"] for c, s in logps.items() if c != TRUE}
    out["reliance_per_token"] = {c: r / record["chosen_tokens"] for c, r in out["reliance"].items()}
    if "ref_logps" in record:
        out["reward_margin"] = {c: dpo_reward_margin(beta, s, record["ref_logps"][c]) for c, s in logps.items()}
    return out


def condition_metrics(pairs: Sequence[Mapping[str, Any]], condition: str) -> dict[str, Any]:
    """The metrics of one condition over the pairs scored under it."""
    scored = [p for p in pairs if condition in p["margin"]]
    metrics: dict[str, Any] = {
        "pairs": len(scored),
        "accuracy": share(p["margin"][condition] > 0 for p in scored),
        "mean_margin": mean(p["margin"][condition] for p in scored),
    }
    if condition != TRUE:
        metrics["reliance"] = mean(p["reliance"][condition] for p in scored)
        metrics["reliance_per_token"] = mean(p["reliance_per_token"][condition] for p in scored)
        metrics["true_preferred"] = share(p["reliance"][condition] > 0 for p in scored)
    if scored and "reward_margin" in scored[0]:
        metrics["reward_accuracy"] = share(p["reward_margin"][condition] > 0 for p in scored)
        metrics["mean_reward_margin"] = mean(p["reward_margin"][condition] for p in scored)
    return metrics


# --------------------------------------------------------------------------- the images


def blank_image(size: tuple[int, int]) -> Image.Image:
    """A mid-grey image of ``size``: an image's place in the prompt, none of its content."""
    return Image.new("RGB", size, GREY)


def image_seed(seed: int, row: int, image: int) -> int:
    """The corruption seed of one image of one row: the same on every machine and run, different
    for every (run seed, row, image)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{row}/{image}".encode()).digest()[:8], "big")


def derangement(keys: Sequence[Hashable], seed: int | str) -> list[int | None]:
    """``donor[i]``: the position whose images position ``i`` is shown with — a seeded shuffle in
    which nobody gets images equal to its own (equal ``keys``); ``None`` where no one is left to
    swap with (every other position has the same images)."""
    rng = random.Random(seed)
    donors: list[int | None] = list(range(len(keys)))
    rng.shuffle(donors)
    for i, key in enumerate(keys):
        own = donors[i]
        if keys[own] != key:
            continue
        swaps = [j for j, other in enumerate(donors)
                 if other is not None and keys[other] != key and keys[j] != keys[own]]
        if swaps:
            j = rng.choice(swaps)
            donors[i], donors[j] = donors[j], own
        else:
            donors[i] = None
    return donors


def shuffle_donors(images: Mapping[int, tuple[str, ...]], seed: int) -> dict[int, int | None]:
    """For each row (by its images' content hashes), the row whose images it gets under
    ``shuffled``: a derangement among the rows with as many images (``None``: there is none
    with other images)."""
    groups: dict[int, list[int]] = {}
    for row, hashes in images.items():
        groups.setdefault(len(hashes), []).append(row)
    donors: dict[int, int | None] = {}
    for count, rows in groups.items():
        picked = derangement([images[r] for r in rows], f"{seed}/{count}")
        donors.update({row: None if d is None else rows[d] for row, d in zip(rows, picked)})
    return donors


# --------------------------------------------------------------------------- scoring


_ROW = re.compile(r"^row (\d+)")


def response_scores(adapter: Any, images: Sequence[list[Image.Image]], prompts: Sequence[Any],
                    chosen: Sequence[str], rejected: Sequence[str]) -> list[dict[str, float]]:
    """Summed response-token log-probs of the chosen and the rejected response of each row
    (and their token counts), with ``images``; the images go through the vision tower once."""
    import torch

    with torch.no_grad():
        batches = [adapter.encode(images, prompts, responses).to(adapter.device) for responses in (chosen, rejected)]
        features = adapter.image_features(batches[0], grad=False)
        sides = []
        for batch in batches:
            logps, mask = adapter.response_logprobs(batch, features)
            sides.append((logps.float().sum(-1).tolist(), mask.sum(-1).tolist()))
    (c, nc), (r, nr) = sides
    return [{"chosen": c[i], "rejected": r[i], "chosen_tokens": int(nc[i]), "rejected_tokens": int(nr[i])}
            for i in range(len(prompts))]


def has_lora(adapter: Any) -> bool:
    """Whether the model carries LoRA adapters, so that disabling them gives DPO's reference."""
    from peft import PeftModel

    return isinstance(adapter.model, PeftModel)


@dataclass
class ImageRelianceConfig:
    """What to score and how. ``data``: a preference dataset folder (canonical or TRL format,
    read by :func:`~mmalign.data_builders.storage.load_preference_dataset`) or a
    ``datasets.Dataset``; ``conditions``: the stand-ins compared with the true images;
    ``pope_questions`` (with ``image_dir``): POPE answered with the true and with blank images.
    Pairs are scored in batches of the run's ``GenerationConfig.batch_size`` (``--batch-size``)."""

    data: Any = field(metadata={
        "help": "preference dataset folder (images, prompt, chosen, rejected), e.g. from mmalign data build"})
    split: str | None = field(default=None, metadata={"help": "split of a dataset folder that holds several"})
    max_pairs: int | None = field(default=None, metadata={"help": "score only the first N pairs with images"})
    conditions: Sequence[str] = field(default=CONDITIONS, metadata={
        "help": "stand-ins for the true images", "choices": list(CONDITIONS)})
    corruption: str = field(default="crop", metadata={
        "help": "corruption of the corrupted condition", "choices": list(CORRUPTIONS)})
    corruption_strength: float = field(default=0.8, metadata={"help": "strength of the corruption, 0 to 1"})
    seed: int = field(default=0, metadata={"help": "seed of the shuffled and corrupted images",
                                           "flag": "--image-seed"})
    beta: float = field(default=0.1, metadata={
        "help": "beta of the DPO implicit reward margin (models with LoRA adapters; reference: adapters disabled)"})
    pope_questions: str | Path | Mapping[str, str | Path] | None = field(default=None, metadata={
        "help": "also answer these POPE questions (as bench pope --questions) with the true and with blank images",
        "flag": "--pope"})
    image_dir: str | Path | None = field(default=None, metadata={
        "help": "image folder of the POPE questions", "flag": "--images"})
    pope_splits: Sequence[str] | None = field(default=None, metadata={"help": "answer only these POPE splits"})

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown or not self.conditions:
            raise ValueError(f"image conditions must be some of {', '.join(CONDITIONS)}, got {list(self.conditions)}")
        self.conditions = tuple(c for c in CONDITIONS if c in self.conditions)
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {self.corruption!r}; choose from {', '.join(CORRUPTIONS)}")
        if not 0 <= self.corruption_strength <= 1:
            raise ValueError(f"corruption_strength must be in [0, 1], got {self.corruption_strength}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1, got {self.max_pairs}")


def _image_hash(image: Mapping[str, Any]) -> str:
    """A stored image's content hash, from its encoded bytes (its path when the dataset keeps none)."""
    return sha256_bytes(image["bytes"] if image.get("bytes") else str(image["path"]).encode())


class ImageRelianceBenchmark(Benchmark):
    """Preference pairs scored under image conditions, and optionally POPE without the image."""

    name = "image-reliance"
    scores_answers = False

    def __init__(self, config: ImageRelianceConfig):
        self.config = config
        from datasets import Dataset

        if isinstance(config.data, str | Path):
            self.source = str(config.data)
            self.data = load_preference_dataset(config.data, split=config.split)
        elif isinstance(config.data, Dataset):
            self.source = "a datasets.Dataset given in Python"
            validate_dataset(config.data)  # strict: the first bad row is an error naming row and field
            self.data = config.data
        else:
            raise TypeError(f"data must be a dataset folder or a datasets.Dataset, got {type(config.data).__name__}")
        if "images" not in self.data.column_names:
            raise ValueError(f"{self.source}: the dataset has no column 'images'")
        self.skipped = {"text-only": 0, "image-contrast": 0}
        self.image_hashes: dict[int, tuple[str, ...]] = {}
        content = []
        for row, record in enumerate(iter_records(self.data)):
            if config.max_pairs is not None and len(self.image_hashes) == config.max_pairs:
                break
            if not record["images"]:
                self.skipped["text-only"] += 1
            elif record.get("rejected_images"):  # its preference is between images, not responses
                self.skipped["image-contrast"] += 1
            else:
                self.image_hashes[row] = tuple(_image_hash(im) for im in record["images"])
                content.append([self.image_hashes[row], record["prompt"], record["chosen"], record["rejected"]])
        if not self.image_hashes:
            raise ValueError(f"{self.source}: no pair with images to score ({self.skipped['text-only']} text-only, "
                             f"{self.skipped['image-contrast']} image-contrast rows skipped)")
        self.rows = list(self.image_hashes)
        self.pairs_sha256 = sha256_json(content)
        self.donors = shuffle_donors(self.image_hashes, config.seed) if "shuffled" in config.conditions else {}
        self.pope = None
        if config.pope_questions is not None:
            self.pope = PopeBenchmark(PopeConfig(config.pope_questions, image_dir=config.image_dir,
                                                 splits=config.pope_splits))

    # ------------------------------------------------------------------ images
    def images(self, condition: str, row: int) -> list[Image.Image] | None:
        """The images dataset row ``row`` is scored with under ``condition`` (``None``: shuffled
        found no row with as many images and other pixels)."""
        return self._condition_images(condition, row, self.data[row]["images"])

    def _condition_images(self, condition: str, row: int, own: list[Image.Image]) -> list[Image.Image] | None:
        if condition == TRUE:
            return own
        if condition == "blank":
            return [blank_image(image.size) for image in own]
        if condition == "corrupted":
            return [corrupt_image(image, self.config.corruption, strength=self.config.corruption_strength,
                                  seed=image_seed(self.config.seed, row, k)) for k, image in enumerate(own)]
        donor = self.donors[row]
        return None if donor is None else self.data[donor]["images"]

    # ------------------------------------------------------------------ POPE with and without the image
    def default_generation(self) -> GenerationConfig:
        return self.pope.default_generation() if self.pope is not None else GenerationConfig()

    def generation_protocol(self) -> dict[str, Any]:
        if self.pope is None:
            return {}
        return {**self.pope.generation_protocol(), "pope_images": list(POPE_IMAGES)}

    def items(self) -> list[Item]:
        """The POPE questions, once with their images and once with a grey image of each one's size."""
        if self.pope is None:
            return []
        items = self.pope.items()
        blanks: dict[Path, bytes] = {}
        out = [replace(it, key=f"{TRUE}/{it.key}", record={**it.record, "images": TRUE}) for it in items]
        for it in items:
            if it.image not in blanks:
                blanks[it.image] = _png(blank_image(_image_size(it.image, f"POPE question {it.key}")))
            out.append(replace(it, key=f"blank/{it.key}", image=blanks[it.image],
                               record={**it.record, "images": "blank"}))
        return out

    def answer_key(self, record: Mapping[str, Any], where: str) -> str:
        if "row" in record:
            return f"pair/{require(record, 'row', where, int)}"
        if self.pope is None:
            raise ValueError(f"{where}: a POPE answer, but no POPE questions were given")
        return f"{require(record, 'images', where, str)}/{self.pope.answer_key(record, where)}"

    # ------------------------------------------------------------------ collecting and scoring
    def collect(self, adapter: Any, generation: GenerationConfig, *, cache: Path | None, model_name: str,
                progress: bool) -> list[dict[str, Any]]:
        """Every pair's log-probs under each condition (``pair_scores.jsonl``, resumable), then
        the POPE answers with the true and with blank images."""
        reference = has_lora(adapter)
        settings = {
            "benchmark": self.name, "model": model_name, "pairs_sha256": self.pairs_sha256,
            "conditions": list(self.config.conditions), "corruption": self.config.corruption,
            "corruption_strength": self.config.corruption_strength, "seed": self.config.seed,
            "batch_size": generation.batch_size, "reference": reference,
        }
        training = adapter.model.training
        adapter.model.eval()  # no dropout: the same scores on every run
        try:
            pairs = cached_map(
                self.rows, [f"pair/{row}" for row in self.rows],
                lambda rows, _: self._score_rows(adapter, rows, reference),
                key_of=self.answer_key, path=cache.with_name("pair_scores.jsonl") if cache is not None else None,
                settings=settings, batch_size=generation.batch_size, desc=f"{self.name}: scoring pairs",
                progress=progress,
            )
        finally:
            adapter.model.train(training)
        if self.pope is None:
            return pairs
        return pairs + super().collect(adapter, generation, cache=cache, model_name=model_name, progress=progress)

    def _score_rows(self, adapter: Any, rows: list[int], reference: bool) -> list[dict[str, Any]]:
        """The records of some pairs: log-probs per condition (and with adapters disabled)."""
        decoded = [self.data[row] for row in rows]
        prompts = [d["prompt"] for d in decoded]
        chosen = [response_text(d["chosen"]) for d in decoded]
        rejected = [response_text(d["rejected"]) for d in decoded]
        records: list[dict[str, Any]] = [{"row": row, "logps": {}} for row in rows]
        if "shuffled" in self.config.conditions:
            for record in records:
                record["shuffled_from"] = self.donors[record["row"]]
        if reference:
            for record in records:
                record["ref_logps"] = {}
        for condition in (TRUE, *self.config.conditions):
            images = [self._condition_images(condition, row, d["images"]) for row, d in zip(rows, decoded)]
            keep = [i for i, im in enumerate(images) if im is not None]
            if not keep:
                continue
            args = ([images[i] for i in keep], [prompts[i] for i in keep], [chosen[i] for i in keep],
                    [rejected[i] for i in keep])
            scores = self._scores(adapter, args, [rows[i] for i in keep])
            for i, s in zip(keep, scores):
                records[i]["logps"][condition] = {"chosen": s["chosen"], "rejected": s["rejected"]}
                records[i]["chosen_tokens"], records[i]["rejected_tokens"] = s["chosen_tokens"], s["rejected_tokens"]
            if reference:
                with adapter.adapters_disabled():
                    ref = self._scores(adapter, args, [rows[i] for i in keep])
                for i, s in zip(keep, ref):
                    records[i]["ref_logps"][condition] = {"chosen": s["chosen"], "rejected": s["rejected"]}
        return records

    def _scores(self, adapter: Any, args: tuple, rows: list[int]) -> list[dict[str, float]]:
        """:func:`response_scores`, with an encoding error naming the dataset row."""
        try:
            return response_scores(adapter, *args)
        except ValueError as err:
            located = _ROW.sub(lambda m: f"row {rows[int(m.group(1))]}", str(err))
            raise ValueError(f"{self.source}: {located}") from None

    def score(self, answers: list[dict[str, Any]], workdir: Path | None) -> BenchmarkResult:
        records = [a for a in answers if "row" in a]
        joined = join_by_key(records, [f"pair/{row}" for row in self.rows], self.answer_key, what="pair")
        pairs = [pair_details(joined[f"pair/{row}"], self.config.beta) for row in self.rows]
        conditions = {c: condition_metrics(pairs, c) for c in (TRUE, *self.config.conditions)}
        reference = "ref_logps" in pairs[0]
        skipped = dict(self.skipped)
        if "shuffled" in conditions:
            skipped["no shuffle partner"] = len(pairs) - conditions["shuffled"]["pairs"]

        headline: dict[str, Any] = {f"Reliance/token {c} ↑": conditions[c]["reliance_per_token"]
                                    for c in HEADLINE_ORDER if c in conditions}
        headline["Pref. accuracy ↑"] = conditions[TRUE]["accuracy"]
        if reference:
            headline["Reward accuracy ↑"] = conditions[TRUE]["reward_accuracy"]
        reported = [k for k in BETTER if (reference or "reward" not in k)
                    and (self.pope is not None or not k.startswith("POPE"))]
        metrics: dict[str, Any] = {"pairs": len(pairs), "skipped": skipped, "conditions": conditions,
                                   "better": {k: BETTER[k][0] for k in reported}}
        breakdowns: dict[str, dict[str, dict[str, Any]]] = {"Per condition": conditions}
        details = [{"part": "pairs", **p} for p in pairs]
        protocol: dict[str, Any] = {
            "data": self.source,
            "pairs": len(pairs),
            "skipped": skipped,
            "conditions": [TRUE, *self.config.conditions],
            "blank": f"mid-grey RGB {GREY}, the size of each image",
            "shuffled": "the images of another row with as many images (a seeded derangement; never the row's own "
                        "images)",
            "corruption": {"kind": self.config.corruption, "strength": self.config.corruption_strength},
            "seed": self.config.seed,
            "scores": "summed log-probs of the response tokens (end-of-turn token included)",
            "reference": "the model with its LoRA adapters disabled" if reference
            else "none (no LoRA adapters: no DPO implicit reward)",
            "beta": self.config.beta,
            "units": "accuracies and shares in percent, log-probs in nats",
        }
        files = [FileVersion("pairs", self.source, self.pairs_sha256)]
        questions = len(pairs)
        image_ids = {h for hashes in self.image_hashes.values() for h in hashes}
        if self.pope is not None:
            results = {images: self.pope.score([a for a in answers if a.get("images") == images], None)
                       for images in POPE_IMAGES}
            pope = pope_table(results)
            metrics["pope"] = pope
            headline["POPE F1 ↑"] = pope[TRUE]["f1"]
            headline["POPE F1 blank"] = pope["blank"]["f1"]
            headline["POPE F1 drop ↑"] = pope["drop"]["f1"]
            breakdowns["POPE with and without the image"] = pope
            details += [{"part": "pope", "images": images, **d} for images, r in results.items() for d in r.details]
            protocol["pope"] = results[TRUE].protocol
            files += self.pope.files
            questions += len(self.pope.questions)
            image_ids |= {q.image for q in self.pope.questions}
        breakdowns["Reading the numbers"] = {k: {"better": BETTER[k][0], "what": BETTER[k][1]} for k in reported}
        return BenchmarkResult(
            benchmark=self.name, headline=headline, metrics=metrics, protocol=protocol, breakdowns=breakdowns,
            details=details, card=ProtocolCard.build(files, questions, image_ids),
        )


def pope_table(results: Mapping[str, BenchmarkResult]) -> dict[str, dict[str, float]]:
    """POPE's mean F1, accuracy and yes-ratio with each kind of image, and the drop without it."""
    table = {images: {"f1": r.metrics["mean_f1"], "accuracy": r.metrics["mean_accuracy"],
                      "yes_ratio": r.metrics["mean_yes_ratio"]} for images, r in results.items()}
    table["drop"] = {k: table[TRUE][k] - table["blank"][k] for k in table[TRUE]}
    return table


def _image_size(source: Path | bytes | tuple, where: str) -> tuple[int, int]:
    """An image file's size, read from its header."""
    if not isinstance(source, Path):
        raise ValueError(f"{where}: POPE questions have one image file each")
    if not source.is_file():
        raise FileNotFoundError(f"{where}: image file {source} not found")
    with Image.open(source) as image:
        return image.size


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


run_image_reliance = ImageRelianceBenchmark.run
