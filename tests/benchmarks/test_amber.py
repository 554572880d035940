"""AMBER: generative counting, No-positive discriminative metrics, the AMBER score."""

import json

import pytest

from mmalign.benchmarks.amber import (
    AmberBenchmark,
    AmberConfig,
    amber_score,
    discriminative_metrics,
    generative_metrics,
    parse_yes_no,
    run_amber,
    score_generative,
)

ASSOCIATION = {"dog": ["puppy"], "cat": ["kitten"], "tree": [], "bench": [], "car": ["vehicle"],
               "road": ["street"], "grass": []}
SAFE = frozenset({"grass"})
# nouns in the vocabulary: puppy (covers dog), tree (covers tree), cat (hallu object: mentioned,
# hallucinated), kitten (association of cat: same), grass (safe word: counted, never
# hallucinated), car (in neither list: hallucinated) -> 3 of 6 hallucinated.
RESPONSE_1 = "A puppy near a tree, a cat, a kitten and some grass. A car."
# "Dogs" keeps its capital, as in the official code, so it is not the vocabulary word "dog".
RESPONSE_2 = "Dogs run on the road."


def test_generative_counts_by_hand():
    s = score_generative(RESPONSE_1, ["dog", "tree"], ["cat", "bench"], ASSOCIATION, SAFE)
    assert s.nouns == ("puppy", "tree", "cat", "kitten", "grass", "car")
    assert s.hallucinated == ("cat", "kitten", "car")
    assert s.covered == {0, 1} and s.cognised == {0}
    s2 = score_generative(RESPONSE_2, ["car", "road"], ["dog", "tree"], ASSOCIATION, SAFE)
    assert s2.nouns == ("road",) and s2.hallucinated == () and s2.covered == {1}
    m = generative_metrics([s, s2])
    assert m["chair"] == pytest.approx(300 / 7)  # 3 hallucinated of 7 nouns
    assert m["cover"] == pytest.approx(75.0)  # 3 of 4 truth objects
    assert m["hal"] == pytest.approx(50.0)  # 1 of 2 responses
    assert m["cog"] == pytest.approx(25.0)  # 1 of 4 hallu objects


def test_a_similarity_function_rescues_similar_words():
    def vectors(a, b):
        return 0.9 if {a, b} == {"car", "tree"} else float(a == b)

    s = score_generative(RESPONSE_1, ["dog", "tree"], ["cat", "bench"], ASSOCIATION, SAFE, similarity=vectors)
    assert s.hallucinated == ("cat", "kitten")  # car is similar to the truth word tree


@pytest.mark.parametrize(
    "text, mode, parsed",
    [("Yes", "exact", "yes"), ("No", "exact", "no"), ("Yes.", "exact", "unknown"), ("no", "exact", "unknown"),
     ("Yes.", "first-word", "yes"), ("no, it is not", "first-word", "no"), ("It is.", "first-word", "unknown")],
)
def test_discriminative_parsing(text, mode, parsed):
    assert parse_yes_no(text, mode) == parsed


def test_discriminative_metrics_use_no_as_positive():
    truths = ["no", "no", "no", "yes", "yes"]
    predictions = ["no", "yes", "no", "no", "unknown"]
    m = discriminative_metrics(truths, predictions)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 0)
    assert m["accuracy"] == pytest.approx(40.0)
    assert m["precision"] == pytest.approx(200 / 3)
    assert m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(200 / 3)
    assert amber_score(chair=10.0, f1=80.0) == pytest.approx(85.0)


ANSWERS = [
    {"id": 1, "response": RESPONSE_1},
    {"id": 2, "response": RESPONSE_2},
    {"id": 3, "response": "No."},  # truth no: TP
    {"id": 4, "response": "No"},  # truth yes: FP
    {"id": 5, "response": "Yes"},  # truth no: FN
    {"id": 6, "response": "Yes, it is."},  # truth yes: TN
]


def test_full_benchmark_and_amber_score(amber_dir, tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in reversed(ANSWERS)))
    result = run_amber(AmberConfig(amber_dir), answers=path, progress=False)
    d = result.metrics["discriminative"]
    assert d["all"]["accuracy"] == pytest.approx(50.0) and d["all"]["f1"] == pytest.approx(50.0)
    assert d["existence"]["precision"] == pytest.approx(100.0) and d["existence"]["n"] == 1
    assert d["attribute"]["n"] == 2 and d["relation"]["n"] == 1
    chair = result.metrics["generative"]["chair"]
    assert chair == pytest.approx(300 / 7)
    assert result.headline["AMBER"] == pytest.approx((100 - 300 / 7 + 50) / 2)
    assert [d["id"] for d in result.details] == [1, 2, 3, 4, 5, 6]
    in_order = run_amber(AmberConfig(amber_dir), answers=ANSWERS, progress=False)
    assert in_order.metrics == result.metrics


def test_exact_parsing_follows_the_official_comparison(amber_dir):
    result = run_amber(AmberConfig(amber_dir, parsing="exact"), answers=ANSWERS, progress=False)
    d = result.metrics["discriminative"]["all"]
    assert d["unknown"] == 2  # "No." and "Yes, it is." are neither "Yes" nor "No"


def test_kinds_select_part_of_amber(amber_dir):
    with pytest.raises(ValueError, match=r"no answer for 4 AMBER query\(s\).*kinds='generative'"):
        run_amber(AmberConfig(amber_dir), answers=ANSWERS[:2], progress=False)
    result = run_amber(AmberConfig(amber_dir, kinds="generative"), answers=ANSWERS[:2], progress=False)
    assert set(result.headline) == {"CHAIR", "Cover", "Hal", "Cog"}
    existence = run_amber(AmberConfig(amber_dir, kinds="existence"), answers=[ANSWERS[2]], progress=False)
    assert existence.headline == {"Accuracy": 100.0, "F1": 100.0}


def test_annotation_rows_must_match_ids(amber_dir):
    rows = json.loads((amber_dir / "annotations.json").read_text())
    rows[2]["id"] = 9
    (amber_dir / "annotations.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"annotations.json row 2: field 'id' is 9, expected 3"):
        AmberBenchmark(AmberConfig(amber_dir))


def test_unknown_id_in_answers(amber_dir):
    with pytest.raises(ValueError, match=r"answers record 6: there is no AMBER query 77"):
        run_amber(AmberConfig(amber_dir), answers=ANSWERS + [{"id": 77, "response": "No"}], progress=False)


def test_generation_writes_official_answer_format(amber_dir, fake_adapter, tmp_path):
    out = tmp_path / "run"
    config = AmberConfig(amber_dir, image_dir=tmp_path / "amber_images", discriminative_suffix=" Answer yes or no.")
    run_amber(config, adapter=fake_adapter(), out=out, progress=False)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(r["response"], str) for r in rows)
    assert rows[0]["prompt"] == "Describe this image."
    assert rows[2]["prompt"] == "Is there a cat in this image? Answer yes or no."
