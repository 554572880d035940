"""Safe RLHF-V dual preferences: one record feeds both the reward and the cost model.

A dual-preference record holds two responses with two preferences (``more_helpful``,
``safer``), a safe / unsafe flag per response and graded ratings. The reward model trains
on the helpfulness preference and the cost model on the safety preference, so each needs
the pair ordered its own way:

* :func:`reward_pairs` — ``chosen`` is the more helpful response;
* :func:`cost_pairs` — ``chosen`` is the safer response y_s, ``rejected`` the more harmful
  y_h, with their ``is_safe`` flags and harmlessness ratings travelling along.

Re-ordering swaps every per-response column (text, spans, flags, ratings and
``chosen_*`` / ``rejected_*`` keys in ``meta``) and flips both labels, so no information
is lost and re-ordering twice is the identity.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from mmalign.data_builders.schema import RecordError, RowErrors
from mmalign.data_builders.storage import WriteReport, iter_records, write_dataset

PER_RESPONSE = ("", "_spans", "_is_safe", "_harmless_rate", "_helpful_rate")
LABELS = {"helpful": "more_helpful", "safer": "safer"}
_OTHER = {"chosen": "rejected", "rejected": "chosen"}

Preference = Literal["helpful", "safer"]


def _swap_key(key: str) -> str:
    for side, other in _OTHER.items():
        if key.startswith(side + "_"):
            return other + key[len(side):]
    return key


def swap_sides(record: Mapping[str, Any]) -> dict[str, Any]:
    """The same pair with ``chosen`` and ``rejected`` exchanged, labels flipped to match."""
    out = dict(record)
    for suffix in PER_RESPONSE:
        c, r = f"chosen{suffix}", f"rejected{suffix}"
        if c in record or r in record:
            out[c], out[r] = record.get(r), record.get(c)
    for label in LABELS.values():
        if record.get(label) is not None:
            out[label] = _OTHER[record[label]]
    meta = record.get("meta")
    if meta:
        parsed = json.loads(meta) if isinstance(meta, str) else dict(meta)
        swapped = {_swap_key(k): v for k, v in parsed.items()}
        out["meta"] = json.dumps(swapped, ensure_ascii=False, sort_keys=True) if isinstance(meta, str) else swapped
    return out


def orient_record(record: Mapping[str, Any], by: Preference, *, row: int | None = None) -> dict[str, Any]:
    """The pair ordered so that ``chosen`` is the one preferred ``by`` helpfulness or safety."""
    label = LABELS[by]
    value = record.get(label)
    if value not in _OTHER:
        raise RecordError(f"needed to order the pair by {by!r}, got {value!r}", field=label, row=row)
    return dict(record) if value == "chosen" else swap_sides(record)


def orient_dataset(ds, by: Preference):
    """A ``datasets.Dataset`` with every pair ordered ``by`` one preference (in memory).

    Works on encoded rows (images are never decoded), so it is cheap; for datasets
    larger than memory use :func:`save_oriented`, which streams.
    """
    import pyarrow as pa

    def batch(table: pa.Table, indices: list[int]) -> pa.Table:
        rows = [orient_record(r, by, row=i) for r, i in zip(table.to_pylist(), indices)]
        return pa.Table.from_pylist(rows, schema=table.schema)

    oriented = ds.with_format("arrow").map(batch, batched=True, with_indices=True, keep_in_memory=True)
    return oriented.with_format(None)


def reward_pairs(ds):
    """Pairs for the reward model: ``chosen`` is the more helpful response."""
    return orient_dataset(ds, "helpful")


def cost_pairs(ds):
    """Pairs for the cost model: ``chosen`` is the safer response, ``rejected`` the more harmful."""
    return orient_dataset(ds, "safer")


def save_oriented(data: Any, out: str | Path, by: Preference, *, lenient: bool = False, overwrite: bool = False,
                  inputs: Iterable[str | Path | None] = ()) -> WriteReport:
    """Stream a dual-preference dataset into a new folder ordered ``by`` one preference.

    ``inputs``: the folder ``data`` was read from, which ``out`` must not be."""
    errors = RowErrors(lenient=lenient)

    def records() -> Iterable[dict[str, Any]]:
        for row, record in enumerate(iter_records(data)):
            try:
                yield orient_record(record, by, row=row)
            except RecordError as err:
                errors(err)

    return write_dataset(records(), out, errors=errors, overwrite=overwrite, inputs=inputs)


def cost_signs(record: Mapping[str, Any], *, graded: bool = False) -> tuple[int, int]:
    """Sign targets ``(s_harmful, s_safer)`` of a pair ordered by :func:`cost_pairs`.

    Safe RLHF: s = +1 for an unsafe response, −1 for a safe one (cost > 0 means unsafe).
    Safe RLHF-V (``graded``): s = −harmless_rate, so a rating of 0 gives no sign signal.
    """
    if record.get("safer") != "chosen":
        raise RecordError("pair is not ordered by safety (use cost_pairs first)", field="safer")
    if graded:
        rates = record.get("rejected_harmless_rate"), record.get("chosen_harmless_rate")
        if None in rates:
            raise RecordError("graded signs need harmlessness ratings on both responses",
                              field="chosen_harmless_rate" if rates[1] is None else "rejected_harmless_rate")
        return -rates[0], -rates[1]
    flags = record.get("rejected_is_safe"), record.get("chosen_is_safe")
    if None in flags:
        raise RecordError("signs need is_safe labels on both responses",
                          field="chosen_is_safe" if flags[1] is None else "rejected_is_safe")
    return tuple(-1 if safe else 1 for safe in flags)


def label_disagreements(records: Iterable[Mapping[str, Any]]) -> int:
    """Responses whose rating sign disagrees with their safe flag (rating ≥ 0 ⇔ safe in BeaverTails-V).
    Labels of other types (a dataset not yet validated) are not compared."""
    count = 0
    for record in records:
        for side in _OTHER:
            safe, rate = record.get(f"{side}_is_safe"), record.get(f"{side}_harmless_rate")
            if isinstance(safe, bool) and isinstance(rate, int) and not isinstance(rate, bool) \
                    and (rate >= 0) != safe:
                count += 1
    return count
