"""Active selection: items ordered by the disagreement of several reward models."""

import math

import pytest
import torch

from mmalign.cli import main
from mmalign.studio.active import disagreement, standardise

from .conftest import make_project


def test_disagreement_by_hand():
    # z-scores of [1, 2, 3]: population std sqrt(2/3) -> [-1.2247, 0, 1.2247]; the second model is reversed
    z = math.sqrt(3 / 2)
    assert standardise([1.0, 2.0, 3.0]) == pytest.approx([-z, 0.0, z])
    assert disagreement([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]) == pytest.approx([z, 0.0, z])
    # same ranking on another scale: no disagreement at all
    assert disagreement([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]) == pytest.approx([0.0, 0.0, 0.0])
    assert standardise([5.0, 5.0]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="at least two models"):
        disagreement([[1.0, 2.0]])
    with pytest.raises(ValueError, match="same items"):
        disagreement([[1.0, 2.0], [1.0]])


def test_rank_orders_queues_by_reward_model_disagreement(tiny_llava, tmp_path, capsys):
    from PIL import Image

    from mmalign import load_adapter
    from mmalign.models import ScalarHeadModel
    from mmalign.reward import RewardScorer, load_reward_model

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # two differently initialised heads: two reward models that disagree
        paths.append(ScalarHeadModel(load_adapter(tiny_llava), kind="reward").save_pretrained(tmp_path / f"rm{seed}"))
    project, _ = make_project(tmp_path / "p", annotators=("alice",), overlap=0.0)
    assert main(["studio", "rank", "--project", str(project.path), "--reward-models", *map(str, paths),
                 "--base", str(tiny_llava)]) == 0
    assert "ranked 4 items by reward-model disagreement" in capsys.readouterr().out

    items = project.items()
    images = [[Image.open(project.image_path(i.images[0])).convert("RGB")] for i in items]
    scores = []
    for path in paths:
        scorer = RewardScorer(load_reward_model(path, tiny_llava))
        first = scorer(images, [i.prompt for i in items], [i.answer for i in items])
        first[3] -= scorer(images[3:], [items[3].prompt], [items[3].answer_b])[0]  # the pair item: A minus B
        scores.append(first)
    expected = disagreement(scores)
    assert [i.priority for i in items] == pytest.approx(expected, abs=1e-5)
    with project.connection() as conn:
        alice = project.annotators_of(conn)[0]
        queue = project.queue(conn, alice.id)
    assert queue == [items[k].id for k in sorted(range(4), key=lambda k: -expected[k])]
