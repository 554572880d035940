import pytest

from mmalign.ppo.shaping import ShapingConfig, answer_kind, shaping_terms, symbolic_reward

CONFIG = ShapingConfig(length_coef=10.0, length_multiplier=0.5)


@pytest.mark.parametrize("reference,kind", [("no", "yesno"), ("Yes.", "yesno"), ("B", "choice"), ("c.", "choice"),
                                            ("a red ball", None), (None, None), ("", None)])
def test_answer_kind(reference, kind):
    assert answer_kind(reference) == kind


@pytest.mark.parametrize("response,reference,expected", [
    ("No, there is no cat.", "no", 1.0),
    ("Yes, there is a cat.", "no", -1.0),
    ("I cannot tell.", "no", 0.0),
    ("Yes.", "yes", 0.0),             # only the "no" side is shaped (the yes-bias fix)
    ("B", "B", 2.0),
    ("(b) the dog", "B", 2.0),
    ("C. the cat", "B", 0.0),
    ("Because of the dog", "B", 0.0),  # a word starting with the letter is not an answer
    ("anything", None, 0.0),
])
def test_symbolic_correctness(response, reference, expected):
    assert symbolic_reward(response, reference, CONFIG) == expected


def test_incomplete_and_length_terms():
    done = shaping_terms("A cat?", ended=True, length=16, max_new_tokens=64, reference=None, config=CONFIG)
    assert done == {"symbolic": 0.0, "incomplete": 0.0, "length": pytest.approx(-10 * 16 / 64 * 0.5)}
    cut = shaping_terms("A cat", ended=False, length=64, max_new_tokens=64, reference="no", config=CONFIG)
    assert cut["incomplete"] == -8.0 and cut["length"] == pytest.approx(-5.0) and cut["symbolic"] == 0.0
    # a question mark inside a finished answer is not an incomplete answer
    assert shaping_terms("Is it? No.", True, 4, 64, None, CONFIG)["incomplete"] == 0.0
