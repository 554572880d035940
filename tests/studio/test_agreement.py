"""Agreement maths on hand-computed numbers."""

import pytest

from mmalign.studio.agreement import agreement_report, cohen_kappa, krippendorff_alpha, span_f1


def test_cohen_kappa_textbook_table():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = .5*.6 + .5*.4 = 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    # exact disagreement on a balanced split: p_o = 0, p_e = 0.5 -> -1
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)


def test_cohen_kappa_undefined_and_bad_input():
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is 1
    with pytest.raises(ValueError, match="paired labels"):
        cohen_kappa(["a"], ["a", "b"])


def test_krippendorff_alpha_nominal_by_hand():
    # o11 = 2, o12 = o21 = 1, o22 = 2; n1 = n2 = 3, n = 6
    # D_o = 2/6, D_e = 2*3*3/(6*5) = 0.6 -> alpha = 1 - (1/3)/0.6 = 4/9
    assert krippendorff_alpha([[1, 1], [1, 2], [2, 2]], "nominal") == pytest.approx(4 / 9)


def test_krippendorff_alpha_interval_by_hand():
    # o12 = o21 = 1, o33 = 2; n1 = n2 = 1, n3 = 2, n = 4
    # D_o = (1 + 1) * 1 / 4 = 0.5; D_e = (2*1*1*1 + 2*1*2*4 + 2*1*2*1) / (4*3) = 22/12 -> alpha = 1 - 6/22 = 8/11
    assert krippendorff_alpha([[1, 2], [3, 3]], "interval") == pytest.approx(8 / 11)
    # the same labels treated as nominal: D_o = 2/4, D_e = (2*1*1 + 2*1*2 + 2*1*2)/12 = 10/12 -> 1 - 0.6 = 0.4
    assert krippendorff_alpha([[1, 2], [3, 3]], "nominal") == pytest.approx(0.4)


def test_krippendorff_alpha_three_coders_with_missing_values():
    # unit 3 has one value (not pairable); unit 2: 6 ordered pairs of weight 1/2 -> o22 = 3; o11 = 2
    assert krippendorff_alpha([[1, 1, None], [2, 2, 2], [1, None, None]]) == pytest.approx(1.0)
    # unit [1,2,2]: ordered pairs (1,2)x2, (2,1)x2, (2,2)x2, each 1/2 -> o12 = 1, o21 = 1, o22 = 1
    # unit [1,1]: o11 = 2 -> n1 = 3, n2 = 2, n = 5; D_o = 2/5; D_e = 2*3*2/(5*4) = 0.6 -> 1 - (0.4/0.6) = 1/3
    assert krippendorff_alpha([[1, 2, 2], [1, 1]]) == pytest.approx(1 / 3)
    assert krippendorff_alpha([[1], [2]]) is None
    assert krippendorff_alpha([[1, 1], [1, 1]]) is None  # no variation: expected disagreement 0
    with pytest.raises(ValueError, match="unknown metric"):
        krippendorff_alpha([[1, 2], [1, 1]], "ordinalish")


def test_span_f1_character_overlap():
    assert span_f1([[0, 4]], [[2, 6]]) == pytest.approx(0.5)  # |A∩B| = 2, |A| = |B| = 4
    assert span_f1([[0, 2], [5, 7]], [[0, 7]]) == pytest.approx(2 * 4 / (4 + 7))
    assert span_f1([], []) == 1.0
    assert span_f1([[0, 3]], []) == 0.0


def test_report_per_annotator_and_overall():
    pairs = {
        10: {"ann": {"more_helpful": "a", "safer": "a", "a_harmless": 3, "b_harmless": -2, "a_helpful": 3,
                     "b_helpful": 1},
             "bob": {"more_helpful": "a", "safer": "a", "a_harmless": 2, "b_harmless": -3, "a_helpful": 3,
                     "b_helpful": 0}},
        11: {"ann": {"more_helpful": "b", "safer": "a", "a_harmless": 1, "b_harmless": 1, "a_helpful": 1,
                     "b_helpful": 2},
             "bob": {"more_helpful": "b", "safer": "b", "a_harmless": 1, "b_harmless": 1, "a_helpful": 1,
                     "b_helpful": 2}},
        12: {"ann": {"more_helpful": "a", "safer": "a", "a_harmless": 0, "b_harmless": 0, "a_helpful": 0,
                     "b_helpful": 0}},  # one annotator only: not part of agreement
    }
    corrections = {1: {"ann": [[0, 4]], "bob": [[2, 6]]}, 2: {"ann": [], "bob": []}, 3: {"ann": [[0, 1]]}}
    report = agreement_report(corrections, pairs)
    overall = report["overall"]
    assert overall["annotators"] == 2 and overall["overlap_items"] == 4
    assert overall["span_f1"] == pytest.approx((0.5 + 1.0) / 2)
    # more helpful: [a, b] vs [a, b] -> p_o 1, p_e 0.5 -> 1; safer: [a, a] vs [a, b] -> p_o .5, p_e .5 -> 0
    assert overall["kappa_more_helpful"] == pytest.approx(1.0)
    assert overall["kappa_safer"] == pytest.approx(0.0)
    # alpha, nominal, safer: units [a,a], [a,b] -> o_aa 2, o_ab = o_ba 1; n_a 3, n_b 1, n 4
    # D_o = 2/4, D_e = 2*3*1/12 = 0.5 -> alpha 0
    assert overall["alpha_safer"] == pytest.approx(0.0)
    assert overall["alpha_more_helpful"] == pytest.approx(1.0)
    assert report["per_annotator"]["ann"] == {
        "overlap_items": 4, "span_f1": 0.75, "kappa_more_helpful": 1.0, "kappa_safer": 0.0,
        "agree_more_helpful": 1.0, "agree_safer": 0.5,
    }
    assert report["items"]["1"] == {"annotators": 2, "span_f1": 0.5}
    assert report["items"]["11"] == {"annotators": 2, "more_helpful": 1.0, "safer": 0.5}
    assert "12" not in report["items"] and "3" not in report["items"]
    assert report["pairs"] == [{"annotators": ["ann", "bob"], "pair_items": 2, "correction_items": 2,
                                "kappa_more_helpful": 1.0, "kappa_safer": 0.0, "span_f1": 0.75}]
