"""Reward functions: hand-computed grounding scores, CHAIR agreement, exact answers, weights."""

import math

import pytest
from datasets import Dataset

from mmalign.benchmarks.chair import score_caption
from mmalign.grounding import ObjectVocabulary
from mmalign.grpo.rewards import (
    LengthReward,
    ObjectGroundingReward,
    answer_match,
    build_reward,
    format_reward,
    grounding_scores,
)
from mmalign.grpo.trainer import weighted_rewards
from mmalign.scene.world import CATEGORY_SPECS

VOCAB = ObjectVocabulary.from_categories(["cup", "table", "ball", "knife"])


def test_grounding_scores_by_hand():
    scores = grounding_scores("A cup and a table, and another cup.", ["cup", "ball"], VOCAB)
    assert scores["precision"] == pytest.approx(2 / 3)  # cup, table, cup: one of three mentions is absent
    assert scores["recall"] == pytest.approx(1 / 2)  # the ball is missed
    assert scores["f1"] == pytest.approx(4 / 7)
    assert grounding_scores("Two knives.", ["knife"], VOCAB) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # naming nothing is not grounding, unless there is nothing to name
    assert grounding_scores("A nice picture.", ["cup"], VOCAB)["f1"] == 0.0
    assert grounding_scores("A nice picture.", [], VOCAB)["f1"] == 1.0


def test_precision_is_chairs_complement_on_the_same_text():
    vocabulary = ObjectVocabulary.from_categories(list(CATEGORY_SPECS))
    texts = ["There are two knives and a cup on a table.", "The fish swims next to the boats and the moon.",
             "A star, two stars and a tree."]
    truths = [{"knife", "cup"}, {"fish", "moon"}, {"tree"}]
    for text, truth in zip(texts, truths):
        chair = score_caption(text, truth, vocabulary)
        mentions = len(chair.mentions)
        expected = 1 - len(chair.hallucinated) / mentions
        assert grounding_scores(text, sorted(truth), vocabulary)["precision"] == pytest.approx(expected)


def test_object_reward_prepares_its_vocabulary_from_the_prompt_set():
    data = Dataset.from_dict({"prompt": ["a", "b"], "objects": [["cup"], ["table", "ball"]]})
    reward = ObjectGroundingReward("recall")
    with pytest.raises(RuntimeError, match="not prepared"):
        reward(["p"], ["a cup"], objects=[["cup"]])
    reward.prepare(data)
    assert reward.vocabulary.categories == ["ball", "cup", "table"]
    assert reward(["p", "q", "r"], ["a cup", "a cup", "x"], objects=[["cup"], ["cup", "ball"], None]) == [1.0, 0.5, None]
    with pytest.raises(ValueError, match="no 'objects' column"):
        ObjectGroundingReward().prepare(Dataset.from_dict({"prompt": ["a"]}))


def test_answer_format_and_length_rewards():
    assert answer_match([1, 2, 3, 4], ["Yes.", "no, there is none", "Two", "Red"],
                        reference=["yes", "Yes", "two", None]) == [1.0, 0.0, 1.0, None]
    assert format_reward([1, 2, 3], ["Yes", "", "a cup"], ended=[True, True, False]) == [1.0, 0.0, 0.0]
    assert LengthReward(4)([1, 2], ["one two", "one two three four five"]) == [0.5, 1.0]


def test_weighted_rewards_skip_functions_that_do_not_apply():
    total = weighted_rewards([[1.0, None, 0.5], [None, None, 1.0]], [2.0, 0.5])
    assert total.tolist() == [2.0, 0.0, 1.5]
    assert not any(math.isnan(v) for v in total.tolist())


def test_build_reward_by_name_and_by_import_path():
    assert build_reward("answer_match") is answer_match
    assert build_reward("object_precision").measure == "precision"
    assert build_reward("tests.grpo.test_rewards:_my_reward") is _my_reward
    with pytest.raises(ValueError, match="cannot import"):
        build_reward("tests.grpo.test_rewards:missing")
    with pytest.raises(ValueError, match="module:function"):
        build_reward("no_such_reward")
    with pytest.raises(ValueError, match="needs a loaded model"):
        build_reward("reward_model")


def _my_reward(prompts, completions, **_):
    return [1.0] * len(completions)
