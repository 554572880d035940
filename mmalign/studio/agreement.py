"""Inter-annotator agreement: pure functions over plain labels, no database, no web.

Annotation consistency is a known weak point of RLHF data, so the studio reports it on
the overlap (items given to two or more annotators):

- :func:`cohen_kappa` for two annotators' nominal choices (which answer is more helpful,
  which is safer): ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from each annotator's own
  label frequencies.
- :func:`krippendorff_alpha` for any number of annotators, missing values allowed:
  ``1 - D_o / D_e`` from the coincidence matrix, with the nominal metric for choices
  and the interval metric (squared difference) for the harmlessness / helpfulness ratings.
- :func:`span_f1` for corrections: character-level overlap F1 between the spans two
  annotators marked on the same answer (both marking nothing counts as full agreement).

Every function returns ``None`` where the statistic is undefined (too few pairs, or no
variation at all, which makes the chance agreement 1).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations, permutations
from statistics import mean
from typing import Any, Literal

Span = tuple[int, int]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two equally long label sequences (one pair of labels per item)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs paired labels, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _distance(metric: str, c: Any, k: Any) -> float:
    if metric == "nominal":
        return 0.0 if c == k else 1.0
    if metric == "interval":
        return float(c - k) ** 2
    raise ValueError(f"unknown metric {metric!r}; use 'nominal' or 'interval'")


def krippendorff_alpha(
    units: Sequence[Sequence[Any]], metric: Literal["nominal", "interval"] = "nominal"
) -> float | None:
    """Krippendorff's alpha; ``units`` holds, per item, the values the annotators gave it.

    Units with fewer than two values are not pairable and are ignored (that is how missing
    values are handled). ``None`` when fewer than two pairable values or no expected
    disagreement.
    """
    coincidences: dict[tuple[Any, Any], float] = defaultdict(float)
    for values in units:
        values = [v for v in values if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, j in permutations(range(m), 2):
            coincidences[(values[i], values[j])] += 1.0 / (m - 1)
    n_c: dict[Any, float] = defaultdict(float)
    for (c, _), weight in coincidences.items():
        n_c[c] += weight
    n = sum(n_c.values())
    if n < 2:
        return None
    observed = sum(w * _distance(metric, c, k) for (c, k), w in coincidences.items()) / n
    expected = sum(n_c[c] * n_c[k] * _distance(metric, c, k) for c in n_c for k in n_c) / (n * (n - 1))
    if expected == 0.0:
        return None
    return 1.0 - observed / expected


def _characters(spans: Sequence[Sequence[int]]) -> set[int]:
    return {i for start, end in spans for i in range(start, end)}


def span_f1(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    """Character-overlap F1 of two annotators' spans on one answer: ``2|A∩B| / (|A|+|B|)``."""
    chars_a, chars_b = _characters(a), _characters(b)
    if not chars_a and not chars_b:
        return 1.0
    return 2.0 * len(chars_a & chars_b) / (len(chars_a) + len(chars_b))


# ---------------------------------------------------------------------------- project report
CHOICES = ("more_helpful", "safer")
RATINGS = ("harmless", "helpful")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mean(values: Sequence[float]) -> float | None:
    return _round(mean(values)) if values else None


def _pair_kappas(labels: Mapping[Any, Mapping[str, Any]], x: str, y: str) -> tuple[int, dict[str, float | None]]:
    shared = [item for item, by in labels.items() if x in by and y in by]
    return len(shared), {
        choice: _round(cohen_kappa([labels[i][x][choice] for i in shared], [labels[i][y][choice] for i in shared]))
        for choice in CHOICES
    }


def agreement_report(
    corrections: Mapping[Any, Mapping[str, Sequence[Sequence[int]]]],
    pairs: Mapping[Any, Mapping[str, Mapping[str, Any]]],
) -> dict[str, Any]:
    """Agreement overall, per annotator, per annotator pair and per item.

    ``corrections``: item -> annotator -> marked spans. ``pairs``: item -> annotator ->
    ``{"more_helpful": "a"|"b", "safer": "a"|"b", "a_harmless", "b_harmless", "a_helpful",
    "b_helpful"}``. Only items with two or more annotators contribute.
    """
    corrections = {i: by for i, by in corrections.items() if len(by) >= 2}
    pairs = {i: by for i, by in pairs.items() if len(by) >= 2}
    annotators = sorted({a for by in [*corrections.values(), *pairs.values()] for a in by})

    item_f1: dict[Any, float] = {}
    f1_by_annotator: dict[str, list[float]] = defaultdict(list)
    pairwise_f1: dict[tuple[str, str], list[float]] = defaultdict(list)
    for item, by in corrections.items():
        scores = []
        for x, y in combinations(sorted(by), 2):
            f1 = span_f1(by[x], by[y])
            scores.append(f1)
            f1_by_annotator[x].append(f1)
            f1_by_annotator[y].append(f1)
            pairwise_f1[(x, y)].append(f1)
        item_f1[item] = mean(scores)

    items: dict[Any, dict[str, Any]] = {
        item: {"annotators": len(corrections[item]), "span_f1": _round(f1)} for item, f1 in item_f1.items()
    }
    for item, by in pairs.items():
        entry: dict[str, Any] = {"annotators": len(by)}
        for choice in CHOICES:
            values = [label[choice] for label in by.values()]
            entry[choice] = _round(max(Counter(values).values()) / len(values))  # share agreeing with the majority
        items[item] = entry

    overall: dict[str, Any] = {
        "annotators": len(annotators),
        "overlap_items": len(corrections) + len(pairs),
        "span_f1": _mean(list(item_f1.values())),
    }
    for choice in CHOICES:
        overall[f"alpha_{choice}"] = _round(krippendorff_alpha(
            [[label[choice] for label in by.values()] for by in pairs.values()], "nominal"))
    for rating in RATINGS:
        overall[f"alpha_{rating}"] = _round(krippendorff_alpha(
            [[label[f"{side}_{rating}"] for label in by.values()] for by in pairs.values() for side in "ab"],
            "interval"))

    pair_rows = []
    for x, y in combinations(annotators, 2):
        shared, kappas = _pair_kappas(pairs, x, y)
        f1s = pairwise_f1.get((x, y), [])
        if shared or f1s:
            pair_rows.append({"annotators": [x, y], "pair_items": shared, "correction_items": len(f1s),
                              "kappa_more_helpful": kappas["more_helpful"], "kappa_safer": kappas["safer"],
                              "span_f1": _mean(f1s)})
    overall["kappa_more_helpful"] = _mean([r["kappa_more_helpful"] for r in pair_rows
                                           if r["kappa_more_helpful"] is not None])
    overall["kappa_safer"] = _mean([r["kappa_safer"] for r in pair_rows if r["kappa_safer"] is not None])

    per_annotator = {}
    for name in annotators:
        mine = [r for r in pair_rows if name in r["annotators"]]
        shared_pairs = {i: by for i, by in pairs.items() if name in by}
        agree = {choice: [label[choice] == by[name][choice] for by in shared_pairs.values()
                          for other, label in by.items() if other != name] for choice in CHOICES}
        per_annotator[name] = {
            "overlap_items": sum(name in by for by in corrections.values()) + len(shared_pairs),
            "span_f1": _mean(f1_by_annotator.get(name, [])),
            **{f"kappa_{c}": _mean([r[f"kappa_{c}"] for r in mine if r[f"kappa_{c}"] is not None])
               for c in CHOICES},
            **{f"agree_{c}": _mean([float(v) for v in agree[c]]) for c in CHOICES},
        }
    return {"overall": overall, "per_annotator": per_annotator, "pairs": pair_rows,
            "items": {str(k): v for k, v in items.items()}}
