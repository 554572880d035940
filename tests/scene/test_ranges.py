"""The named scene ranges: disjoint within a split, and a request that does not fit is refused."""

import itertools

import pytest

from mmalign.scene import ranges
from mmalign.scene.world import WorldConfig, scene_at


def test_ranges_of_one_split_never_overlap():
    for a, b in itertools.combinations(ranges.RANGES.values(), 2):
        if a.split == b.split:
            assert a.stop <= b.start or b.stop <= a.start, (a.name, b.name)


def test_take_gives_the_builders_keywords_and_refuses_too_many():
    assert ranges.REWARD_TRAIN.take(10) == {"split": "train", "start": 300_001}
    with pytest.raises(ValueError, match="'rl-eval' holds 100000 scenes, 100001 asked for"):
        ranges.RL_EVAL.take(100_001)


def test_a_range_names_the_scenes_it_draws():
    config = WorldConfig()
    first = scene_at(config, ranges.FEEDBACK.start, ranges.FEEDBACK.split)
    assert (first.split, first.image_id) == ("eval", 100_001)
