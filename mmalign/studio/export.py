"""Export: a project's annotations as a canonical preference dataset, plus ``agreement.json``.

Correction items give Dense-DPO pairs (RLHF-V): chosen = the answer with the annotator's
corrections applied, rejected = the original answer, with the replaced text marked on both
sides as character spans. Pair items give dual-preference rows (Safe RLHF-V): which answer
is more helpful, which is safer, graded harmlessness and helpfulness, ``*_is_safe`` from
harmlessness ≥ 0. Every row names its item, annotator and time in ``meta``, with the
item's and the annotator's agreement where the item was annotated by several people.

Dropped submissions are left out, and so are pairs with a tie ("both equally", where the
rubric allows it) in either judgement: the canonical schema has no tie value, and the
trainers read a missing ``more_helpful`` as "chosen is better" and need ``safer`` for the
cost model, so a tie has no row that would not teach a preference nobody gave. They are
counted in ``ExportReport.ties`` and stay in the agreement. A submission that cannot become a valid record (stored
before today's submission checks existed, or whose images are gone) is skipped and listed
in the report, naming the submission, item and annotator, instead of failing the export.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmalign.studio.project import TIE, Item, StudioProject, SubmissionError, apply_corrections

AGREEMENT_FILE = "agreement.json"
SIDE = {"a": 0, "b": 1}


@dataclass(frozen=True)
class SkippedSubmission:
    """A submission the export left out, and why."""

    submission: int
    item: int
    annotator: str
    reason: str

    def __str__(self) -> str:
        return f"submission {self.submission} (item {self.item}, {self.annotator}): {self.reason}"


@dataclass(frozen=True)
class ExportReport:
    path: Path
    rows: int
    corrections: int
    pairs: int
    unchanged: int  # correction items whose annotator found nothing wrong (no pair to learn from)
    agreement: dict[str, Any]
    skipped: tuple[SkippedSubmission, ...] = ()  # submissions that cannot become a valid record
    dropped: int = 0  # submissions the owner dropped
    ties: int = 0  # pair submissions with a tie in either judgement (no preference to learn)


def _pair_record(item: Item, labels: dict[str, Any], prefer: str) -> dict[str, Any]:
    """Chosen is the answer the ``prefer`` judgement favours; every label follows its answer."""
    answers = [item.answer, item.answer_b]
    first = SIDE[labels["more_helpful" if prefer == "helpful" else "safer"]]
    order = {"chosen": first, "rejected": 1 - first}
    name_of = {index: side for side, index in order.items()}
    record: dict[str, Any] = {side: answers[index] for side, index in order.items()}
    record["more_helpful"] = name_of[SIDE[labels["more_helpful"]]]
    record["safer"] = name_of[SIDE[labels["safer"]]]
    for side, index in order.items():
        letter = "ab"[index]
        record[f"{side}_harmless_rate"] = labels[f"{letter}_harmless"]
        record[f"{side}_helpful_rate"] = labels[f"{letter}_helpful"]
        record[f"{side}_is_safe"] = labels[f"{letter}_harmless"] >= 0
    return record


def export_records(project: StudioProject, *, prefer: Literal["helpful", "safer"] = "helpful"
                   ) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, Any], list[SkippedSubmission]]:
    """Canonical records (each checked with ``validate_record``), counts by kind (and of dropped
    submissions), the agreement report, and the submissions skipped because they cannot
    become a valid record."""
    from mmalign.data_builders.schema import RecordError, validate_record

    if prefer not in ("helpful", "safer"):
        raise ValueError(f"prefer must be 'helpful' or 'safer', got {prefer!r}")
    items = {item.id: item for item in project.items()}
    agreement = project.agreement()
    counts = {"corrections": 0, "pairs": 0, "unchanged": 0, "dropped": 0, "ties": 0}
    records: list[dict[str, Any]] = []
    skipped: list[SkippedSubmission] = []
    for note in project.submissions():
        if note.state == "dropped":
            counts["dropped"] += 1
            continue
        item = items[note.item_id]
        if not note.problem and item.kind == "pair" and TIE in (note.payload["more_helpful"], note.payload["safer"]):
            counts["ties"] += 1
            continue
        try:
            if note.problem:
                raise SubmissionError(note.problem)
            record = _record(project, item, note.payload, prefer)
            if record is None:
                counts["unchanged"] += 1
                continue
            record["meta"] = {
                "studio_item": item.id, "kind": item.kind, "annotator": note.annotator, "annotated_at": note.created,
                "item_source": item.source, "item_meta": item.meta,
                "agreement": {"item": agreement["items"].get(str(item.id)),
                              "annotator": agreement["per_annotator"].get(note.annotator)},
            }
            validate_record(record)
        except (SubmissionError, RecordError, OSError) as err:  # OSError: an image file is gone
            skipped.append(SkippedSubmission(note.id, item.id, note.annotator, str(err)))
            continue
        counts["corrections" if item.kind == "correction" else "pairs"] += 1
        records.append(record)
    return records, counts, agreement, skipped


def _record(project: StudioProject, item: Item, payload: dict[str, Any], prefer: str) -> dict[str, Any] | None:
    """The canonical record of one checked submission (``None``: an answer marked correct as it is)."""
    if item.kind == "correction":
        corrections = payload["corrections"]
        if not corrections:
            return None
        chosen, chosen_spans, rejected_spans = apply_corrections(item.answer, corrections)
        record = {"chosen": chosen, "rejected": item.answer, "chosen_spans": chosen_spans,
                  "rejected_spans": rejected_spans}
    else:
        record = _pair_record(item, payload, prefer)
    record["images"] = [{"bytes": project.image_path(rel).read_bytes(), "path": None} for rel in item.images]
    record["prompt"] = item.prompt
    record["source"] = "studio"
    return record


def export_project(project: StudioProject, out: str | Path, *,
                   prefer: Literal["helpful", "safer"] = "helpful", overwrite: bool = False) -> ExportReport:
    """Write the validated dataset atomically (``save_preference_dataset``), then ``agreement.json`` in it.

    A project may hold items with text prompts and items with conversational ones (loaded
    from different sources); a dataset holds one form, so then every prompt is written as a
    conversation (``one_prompt_form``)."""
    from mmalign.data_builders.schema import one_prompt_form
    from mmalign.data_builders.storage import save_preference_dataset

    records, counts, agreement, skipped = export_records(project, prefer=prefer)
    if not records:
        raise ValueError(f"{project.path}: no annotation to export yet "
                         f"({counts['unchanged']} answers were marked correct as they are"
                         + "".join(f"; skipped {s}" for s in skipped) + ")")
    report = save_preference_dataset(one_prompt_form(records), out, overwrite=overwrite, inputs=[project.path])
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-agreement-", dir=out)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(agreement, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / AGREEMENT_FILE)
    return ExportReport(path=out, rows=report.rows, corrections=counts["corrections"], pairs=counts["pairs"],
                        unchanged=counts["unchanged"], agreement=agreement, skipped=tuple(skipped),
                        dropped=counts["dropped"], ties=counts["ties"])
