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


def _ensemble_of(paths, folder):
    """An ensemble folder made of saved reward models (as `train rm --ensemble_size` writes it)."""
    import json
    import shutil

    for k, path in enumerate(paths):
        shutil.copytree(path, folder / f"member-{k}")
    (folder / "ensemble.json").write_text(json.dumps({
        "size": len(paths), "kind": "reward", "aggregation": "mean", "uncertainty_weight": 1.0,
        "normalisation": [[0.0, 2.0], [0.0, 0.5]]}))  # a scale per member: disagreement is unchanged
    return folder


def test_load_the_pairs_an_ensemble_disagrees_on_most(tiny_llava, tmp_path, capsys):
    from PIL import Image

    from mmalign import load_adapter
    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.models import ScalarHeadModel
    from mmalign.reward import RewardScorer, load_reward_model
    from mmalign.studio import StudioProject

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(ScalarHeadModel(load_adapter(tiny_llava), kind="reward").save_pretrained(tmp_path / f"rm{seed}"))
    ensemble = _ensemble_of(paths, tmp_path / "ensemble")
    colors = ("red", "blue", "green", "yellow", "white", "black")
    rows = [{"images": [Image.new("RGB", (32, 32), c)], "prompt": f"describe the {c} image.",
             "chosen": f"a {c} square.", "rejected": f"a {c} square and a {o} dog."}
            for c, o in zip(colors, reversed(colors))]
    save_preference_dataset(rows, tmp_path / "pairs")
    (tmp_path / "p").mkdir()
    assert main(["studio", "init", "--project", str(tmp_path / "p")]) == 0
    assert main(["studio", "load", "--project", str(tmp_path / "p"), "--from-dataset", str(tmp_path / "pairs"),
                 "--as", "pairs", "--by-disagreement", str(ensemble), "--top", "2", "--reward-base", str(tiny_llava)]) == 0
    assert "the 2 rows the reward models disagree on most" in capsys.readouterr().out

    margins = []
    for path in paths:  # the members alone, by hand: chosen minus rejected
        scorer = RewardScorer(load_reward_model(path, tiny_llava))
        args = ([r["images"] for r in rows], [r["prompt"] for r in rows])
        margins.append([a - b for a, b in zip(scorer(*args, [r["chosen"] for r in rows]),
                                              scorer(*args, [r["rejected"] for r in rows]))])
    expected = disagreement(margins)
    top = sorted(range(6), key=lambda i: -expected[i])[:2]
    items = StudioProject(tmp_path / "p").items()
    assert [i.prompt for i in items] == [rows[k]["prompt"] for k in sorted(top)]
    assert [i.priority for i in items] == pytest.approx([expected[k] for k in sorted(top)], abs=1e-5)

    with pytest.raises(ValueError, match="two or more reward models, or an ensemble"):
        from mmalign.studio.active import most_disputed
        most_disputed(rows, [paths[0]], 2, base=tiny_llava)
    assert main(["studio", "load", "--project", str(tmp_path / "p"), "--from-dataset", str(tmp_path / "pairs"),
                 "--by-disagreement", str(ensemble)]) == 2  # --top is needed
    assert "--top N go together" in capsys.readouterr().err


def test_ranking_by_an_ensemble_equals_ranking_by_its_members(tiny_llava, tmp_path):
    from mmalign import load_adapter
    from mmalign.models import ScalarHeadModel

    paths = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        paths.append(ScalarHeadModel(load_adapter(tiny_llava), kind="reward").save_pretrained(tmp_path / f"rm{seed}"))
    ensemble = _ensemble_of(paths, tmp_path / "ensemble")
    by_members, _ = make_project(tmp_path / "a", annotators=("alice",), overlap=0.0)
    by_ensemble, _ = make_project(tmp_path / "b", annotators=("alice",), overlap=0.0)
    from mmalign.studio.active import rank_by_disagreement

    a = rank_by_disagreement(by_members, paths, base=tiny_llava)
    b = rank_by_disagreement(by_ensemble, [ensemble], base=tiny_llava)
    assert list(b.values()) == pytest.approx(list(a.values()), abs=1e-5) and max(a.values()) > 0
