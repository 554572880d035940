"""The over-optimisation study's maths and gold: best-of-n expectations against brute force,
the KL of best-of-n, gold equal to CHAIR's own counts, the claims' wiring."""

import itertools
import math
import statistics

import pytest

from mmalign.experiments import overoptimisation as oo
from mmalign.experiments.report import CLAIMS


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_best_of_n_expectation_equals_the_mean_over_every_subset(n):
    proxy = [0.3, -1.0, 2.0, 0.3, 1.5]  # a tie: the later answer ranks higher
    gold = [0.9, 0.1, 0.4, 0.7, 0.2]
    weights = oo.best_of_n_weights(proxy, n)
    by_subsets = []
    for subset in itertools.combinations(range(5), n):
        pick = max(subset, key=lambda i: (proxy[i], i))
        by_subsets.append(gold[pick])
    assert sum(weights) == pytest.approx(1.0)
    assert sum(w * g for w, g in zip(weights, gold)) == pytest.approx(statistics.fmean(by_subsets))
    with pytest.raises(ValueError, match="best-of-6"):
        oo.best_of_n_weights(proxy, 6)


def test_best_of_n_kl_by_hand():
    assert oo.best_of_n_kl(1) == 0.0
    assert oo.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_gold_is_object_f1_from_chairs_own_counts():

    from mmalign.benchmarks.chair import score_caption
    from mmalign.scene.text import detailed_description
    from mmalign.scene.world import WorldConfig, scene_at

    scenes = [scene_at(WorldConfig(), i, "eval") for i in range(1, 6)]
    judge = oo.Judge([s.categories for s in scenes])
    captions = [detailed_description(s, WorldConfig()) for s in scenes]
    absent = sorted({c for s in scenes[1:] for c in s.categories} - set(scenes[0].categories))[:2]
    captions[0] += f" There is also a {absent[0]} and a {absent[1]}."  # mentions the annotations refute
    captions[1] = "A picture."  # names nothing: no grounding
    gold = judge.gold(captions, [s.categories for s in scenes])
    for caption, scene, value in zip(captions, scenes, gold):
        chair = score_caption(caption, set(scene.categories), judge.vocabulary)
        if not chair.mentions:
            assert value == 0.0
            continue
        precision = 1 - len(chair.hallucinated) / len(chair.mentions)
        recall = len(chair.covered) / len(set(scene.categories))
        assert value == pytest.approx(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert gold[0] < 1.0 and gold[1] == 0.0


def test_summary_metrics_and_claims_name_real_arms():
    bon = [{"n": 1, "kl": 0.0, "gold": 0.5, "proxy": 0.0}, {"n": 2, "kl": 0.19, "gold": 0.6, "proxy": 0.4},
           {"n": 4, "kl": 0.64, "gold": 0.55, "proxy": 0.9}]
    rl = [{"step": 0, "kl": 0.0, "gold": 0.5, "proxy": 0.0, "words": 40.0},
          {"step": 10, "kl": 2.0, "gold": 0.45, "proxy": 1.5, "words": 55.0}]
    metrics = oo.summary_metrics(bon, rl)
    assert metrics["bon_gold_final"] == 0.55 and metrics["bon_gold_drop"] == pytest.approx(0.05)
    assert metrics["bon_proxy_gain"] == pytest.approx(0.9) and metrics["rl_gold_drop"] == pytest.approx(0.05)
    assert metrics["rl_kl_final"] == 2.0 and metrics["rl_proxy_gain"] == 1.5
    arms = set(oo.proxies(oo.Setting()))
    for claim in (c for c in CLAIMS if c.experiment == "overoptimisation"):
        assert {claim.arm, claim.baseline} <= arms, claim.text
    with pytest.raises(ValueError, match="unknown over-optimisation proxy"):
        oo.run_overoptimisation_experiment("unused", arms=["rm-medium"])


def test_gold_pairs_choose_the_best_sampled_description_over_the_worst(monkeypatch):
    from mmalign.scene.feedback import scene_prompt_records
    from mmalign.scene.ranges import REWARD_TRAIN
    from mmalign.scene.world import WorldConfig

    rows = scene_prompt_records(WorldConfig(), 2, kinds=("describe",), **REWARD_TRAIN.take(2))
    first, second = rows[0]["objects"], rows[1]["objects"]
    absent = sorted({c for r in rows for c in r["objects"]} ^ set(first))[0]
    texts = [f"A {first[0]}.", f"A {' and a '.join(first)}.", f"A {absent}.",  # scene 1: F1 below 1, 1, 0
             f"A {second[0]}.", f"A {second[0]}.", f"A {second[0]}."]       # scene 2: all equal -> no pair

    def fake_sample(adapter, prompts, *, num_samples, max_new_tokens, seed):
        assert num_samples == 3 and len(prompts) == 2
        return texts, []

    monkeypatch.setattr(oo, "sample_answers", fake_sample)
    records = oo.gold_pair_records(oo.Setting(pair_samples=3), None, 2)
    assert len(records) == 1
    assert records[0]["chosen"] == texts[1] and records[0]["rejected"] == texts[2]
    assert records[0]["meta"]["gold_chosen"] == 1.0 and records[0]["meta"]["gold_rejected"] == 0.0
