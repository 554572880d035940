"""Reward / cost model ensembles: aggregations by hand, members that differ, one folder that
saves and loads, standardisation, resume, and use by the scorer, GRPO and PPO."""

import copy
import json
import math

import pytest
import torch

from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset
from mmalign.losses.reward import aggregate_ensemble
from mmalign.model_config import ModelConfig
from mmalign.reward import RewardEnsemble, RewardScorer, load_reward_model, run_reward_model
from mmalign.reward.trainer import NORMALISATION_PAIRS, bootstrap_indices

from .test_reward_models import config, records

SCORES = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 0.5], [2.0, 1.0, 0.5]])  # 3 members x 3 answers


@pytest.mark.parametrize(("aggregation", "higher_is_better", "expected"), [
    ("mean", True, [2.0, -1 / 3, 0.5]),
    ("worst_case", True, [1.0, -2.0, 0.5]),
    ("worst_case", False, [3.0, 1.0, 0.5]),   # a cost's worst case is its highest member
    # population variance: answer 0 ((1-2)² + (3-2)² + 0) / 3 = 2/3; answer 1 (25/9 + 1/9 + 16/9) / 3 = 14/9
    ("uncertainty_weighted", True, [2.0 - 0.5 * 2 / 3, -1 / 3 - 0.5 * 14 / 9, 0.5]),
    ("uncertainty_weighted", False, [2.0 + 0.5 * 2 / 3, -1 / 3 + 0.5 * 14 / 9, 0.5]),
])
def test_aggregations_by_hand(aggregation, higher_is_better, expected):
    got = aggregate_ensemble(SCORES, aggregation, uncertainty_weight=0.5, higher_is_better=higher_is_better)
    assert got.tolist() == pytest.approx(expected)


def test_unknown_aggregation_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown ensemble aggregation 'max'"):
        aggregate_ensemble(SCORES, "max")
    with pytest.raises(ValueError, match="members, answers"):
        aggregate_ensemble(SCORES[0], "mean")


def test_bootstrap_samples_with_replacement_and_reproducibly():
    a, b = bootstrap_indices(50, seed=3), bootstrap_indices(50, seed=3)
    assert a == b and len(a) == 50 and len(set(a)) < 50 and all(0 <= i < 50 for i in a)
    assert bootstrap_indices(50, seed=4) != a


@pytest.fixture(scope="module")
def ensemble_run(tiny_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ensemble")
    save_preference_dataset(records(8), tmp / "pairs")
    model = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), use_peft=True, lora_r=4, lora_alpha=8,
                        lora_dropout=0.0)
    args = config(tmp, dataset_path=str(tmp / "pairs"), max_steps=2, per_device_train_batch_size=2, use_facts=True,
                  ensemble_size=3, ensemble_aggregation="worst_case", uncertainty_weight=0.5, seed=5)
    final = run_reward_model(model, args)
    return tmp, model, args, final


def _inputs(rows, column="chosen"):
    return ([r["images"] for r in rows], [r["prompt"] for r in rows], [r[column] for r in rows],
            [r["facts"] for r in rows])


def test_an_ensemble_is_one_folder_of_members_that_differ(ensemble_run):
    from safetensors.torch import load_file

    _, _, _, final = ensemble_run
    saved = json.loads((final / "ensemble.json").read_text())
    assert saved["size"] == 3 and saved["seeds"] == [5, 6, 7] and saved["aggregation"] == "worst_case"
    assert saved["kind"] == "reward" and saved["bootstrap"] is True and len(saved["normalisation"]) == 3
    heads = [load_file(final / f"member-{k}" / "scalar_head.safetensors")["weight"] for k in range(3)]
    loras = [load_file(final / f"member-{k}" / "adapter_model.safetensors") for k in range(3)]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    key = next(iter(loras[0]))
    assert not torch.equal(loras[0][key], loras[1][key])
    assert (final / "mmalign_config.yaml").is_file()


def test_ensemble_scores_are_its_members_standardised_and_aggregated(ensemble_run):
    tmp, _, _, final = ensemble_run
    rows = records(8)
    members = torch.stack([torch.tensor(RewardScorer(load_reward_model(final / f"member-{k}"))(*_inputs(rows)))
                           for k in range(3)])
    # the standardisation: each member's mean and std over chosen and rejected of the (here all 8) pairs
    both = torch.stack([torch.cat([torch.tensor(RewardScorer(load_reward_model(final / f"member-{k}"))(
        *_inputs(rows, c))) for c in ("chosen", "rejected")]) for k in range(3)])
    assert len(rows) < NORMALISATION_PAIRS
    stats = json.loads((final / "ensemble.json").read_text())["normalisation"]
    for k in range(3):
        assert stats[k][0] == pytest.approx(float(both[k].mean()), abs=1e-5)
        assert stats[k][1] == pytest.approx(float(both[k].std(unbiased=False)), abs=1e-5)
    standard = (members - torch.tensor([s[0] for s in stats])[:, None]) / torch.tensor([s[1] for s in stats])[:, None]

    ensemble = load_reward_model(final)
    assert isinstance(ensemble, RewardEnsemble) and len(ensemble) == 3 and ensemble.kind == "reward"
    scorer = RewardScorer(ensemble, batch_size=3)
    assert scorer(*_inputs(rows)) == pytest.approx(standard.amin(0).tolist(), abs=1e-5)  # the saved worst case
    assert scorer.last_spread == pytest.approx(float(standard.std(0, unbiased=False).mean()), abs=1e-5)
    torch.testing.assert_close(scorer.score_members(*_inputs(rows)), standard, atol=1e-5, rtol=0)
    mean = RewardScorer(load_reward_model(final, aggregation="mean"))(*_inputs(rows))
    assert mean == pytest.approx(standard.mean(0).tolist(), abs=1e-5)
    uwo = RewardScorer(load_reward_model(final, aggregation="uncertainty_weighted", uncertainty_weight=2.0))
    expected = standard.mean(0) - 2.0 * standard.var(0, unbiased=False)
    assert uwo(*_inputs(rows)) == pytest.approx(expected.tolist(), abs=1e-5)

    scored = scorer.score_dataset(load_preference_dataset(tmp / "pairs"), "chosen")
    assert scored["reward_chosen"] == pytest.approx(standard.amin(0).tolist(), abs=1e-5)
    torch.testing.assert_close(torch.tensor(scored["reward_chosen_members"]), standard.T, atol=1e-5, rtol=0)
    assert scored["reward_chosen_spread"] == pytest.approx(standard.std(0, unbiased=False).tolist(), abs=1e-5)


def test_a_stopped_ensemble_run_trains_only_the_missing_members(ensemble_run):
    import shutil

    tmp, model, args, final = ensemble_run
    args = copy.deepcopy(args)
    out = tmp / "resumed"
    shutil.copytree(tmp / "run", out)
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "member-2" / "final")  # stopped while training the last member
    kept = (out / "member-0" / "final" / "scalar_head.safetensors").stat().st_mtime_ns
    args.output_dir = str(out)
    again = run_reward_model(model, args)
    assert (out / "member-0" / "final" / "scalar_head.safetensors").stat().st_mtime_ns == kept
    for k in range(3):  # the retrained member is the one the first run trained (same seed and sample)
        a = (final / f"member-{k}" / "scalar_head.safetensors").read_bytes()
        b = (again / f"member-{k}" / "scalar_head.safetensors").read_bytes()
        assert a == b, k
    assert json.loads((again / "ensemble.json").read_text()) == json.loads((final / "ensemble.json").read_text())


def test_a_single_model_refuses_a_pessimistic_aggregation(tiny_dirs, ensemble_run):
    _, _, _, final = ensemble_run
    with pytest.raises(ValueError, match="needs an ensemble"):
        load_reward_model(final / "member-0", aggregation="worst_case")


def test_grpo_and_ppo_score_with_the_ensemble_and_its_aggregation(tiny_dirs, ensemble_run, tmp_path):
    from mmalign.grpo import GRPOConfig
    from mmalign.grpo.rewards import build_reward
    from mmalign.grpo.trainer import load_scorers
    from mmalign.online_rl import check_scorer_paths
    from mmalign.ppo import PPOConfig
    from mmalign.ppo.trainer import attach_scorers

    _, model, _, final = ensemble_run
    rows = records(4)
    grpo_args = GRPOConfig(output_dir=str(tmp_path / "g"), reward_funcs=["reward_model"], reward_model_path=str(final),
                           ensemble_aggregation="mean", max_steps=1, use_cpu=True, report_to="none",
                           per_device_train_batch_size=4, prompts_per_step=2, num_generations=2, max_length=512)
    check_scorer_paths(grpo_args, "reward_model_path")  # an ensemble folder passes the runs' input check
    policy = model.load()
    scorers = load_scorers(policy, grpo_args)
    assert isinstance(scorers["reward_model"].model, RewardEnsemble)
    reward = build_reward("reward_model", scorers=scorers)
    images, prompts, answers, facts = _inputs(rows)
    expected = RewardScorer(load_reward_model(final, aggregation="mean"))(images, prompts, answers, facts)
    assert reward(prompts, answers, images=images, facts=facts) == pytest.approx(expected, abs=1e-5)
    assert reward.scorer.last_spread > 0

    ppo_args = PPOConfig(output_dir=str(tmp_path / "p"), reward_model_path=str(final), max_steps=1, use_cpu=True,
                         report_to="none", rollout_batch_size=2, per_device_train_batch_size=2,
                         ensemble_aggregation="uncertainty_weighted", uncertainty_weight=0.25)
    policy = model.load()
    ensemble, cost, critics = attach_scorers(policy, ppo_args)
    assert isinstance(ensemble, RewardEnsemble) and cost is None
    assert (ensemble.aggregation, ensemble.uncertainty_weight) == ("uncertainty_weighted", 0.25)
    critic_lora = {k: v for k, v in policy.model.state_dict().items() if "reward_critic" in k}
    member_lora = {k: v for k, v in policy.model.state_dict().items() if ".reward-0." in k}
    assert critic_lora and len(critic_lora) == len(member_lora)  # the critic starts from member 0
    for (_, a), (_, b) in zip(sorted(critic_lora.items()), sorted(member_lora.items())):
        assert torch.equal(a, b)
    assert math.isfinite(RewardScorer(ensemble)(images, prompts, answers, facts)[0])


def test_reward_benchmarks_score_an_ensemble_with_the_asked_aggregation(ensemble_run, tmp_path, capsys):
    from pathlib import Path

    from PIL import Image

    from mmalign.benchmarks import load_vl_rewardbench
    from mmalign.cli import main

    _, _, _, final = ensemble_run
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "reward_bench"
    argv = ["bench", "vl-rewardbench", "--data", str(fixtures / "vl_rewardbench.jsonl"), "--image-folder",
            str(fixtures), "--reward-model", str(final), "--aggregation", "uncertainty_weighted",
            "--uncertainty-weight", "0.5", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model"] == "run/final (3 members, uncertainty_weighted λ=0.5)"
    details = [json.loads(line) for line in (tmp_path / "run" / "details.jsonl").read_text().splitlines()]
    pair = load_vl_rewardbench(fixtures / "vl_rewardbench.jsonl", fixtures)[0]
    image = Image.open(pair.images[0]).convert("RGB")
    members = RewardScorer(load_reward_model(final)).score_members([[image]] * 2, [pair.prompt] * 2,
                                                                   [pair.chosen, pair.rejected])
    expected = members.mean(0) - 0.5 * members.var(0, unbiased=False)
    assert [details[0]["chosen_score"], details[0]["rejected_score"]] == pytest.approx(expected.tolist(), abs=1e-4)
