"""The GRPO-family maths on hand-computed numbers, and against TRL 1.16 on the same tensors.

TRL comparisons (test-only peer, pip ``trl``; skipped without it):
- advantages: the expressions of ``GRPOTrainer._generate_and_score_completions``
  (trl/trainer/grpo_trainer.py, ``multi_objective_aggregation="sum_then_normalize"``,
  ``scale_rewards`` "group" / "none") and of ``RLOOTrainer._generate_and_score_completions``
  (trl/trainer/rloo_trainer.py: leave-one-out baseline, ``normalize_advantages``), rebuilt
  from TRL's own ``trl.trainer.utils.nanstd``; these are inline in long methods.
- per-token loss, KL, aggregation, clip statistics and gradients: ``GRPOTrainer._compute_loss``
  itself, called on a stub whose ``_get_per_token_logps_and_entropies`` returns our log-probs,
  for ``loss_type`` grpo / bnpo / dr_grpo / dapo and ``importance_sampling_level`` token /
  sequence, with β = 0 and β > 0 (loss value, ∂loss/∂logps and ``clip_ratio/*_mean``).
- overlong shaping: ``trl.rewards.get_soft_overlong_punishment``.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mmalign.losses import (
    TRL_LOSS_TYPES,
    aggregate_loss,
    clipped_surrogate,
    dynamic_sampling_mask,
    group_advantages,
    k3_kl,
    overlong_penalty,
    safe_advantages,
)
from mmalign.losses.ppo import combined_advantage

# two groups of G = 3: (1, 2, 6) has mean 3, deviations (−2, −1, 3) and unbiased
# variance (4 + 1 + 9) / 2 = 7; (4, 4, 4) has no spread at all
REWARDS = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])
DEV = torch.tensor([-2.0, -1.0, 3.0, 0.0, 0.0, 0.0])


# --- advantages ---------------------------------------------------------------------------


def test_grpo_advantages_by_hand():
    out = group_advantages(REWARDS, 3, "grpo")
    torch.testing.assert_close(out.advantages, DEV / torch.tensor([math.sqrt(7) + 1e-4] * 3 + [1e-4] * 3))
    torch.testing.assert_close(out.group_mean, torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(out.group_std, torch.tensor([math.sqrt(7), 0.0]))  # unbiased: /(G − 1)
    assert out.zero_std_fraction.item() == 0.5  # one group of two has equal rewards


def test_dr_grpo_rloo_and_reinforce_pp_by_hand():
    torch.testing.assert_close(group_advantages(REWARDS, 3, "dr_grpo").advantages, DEV)
    # leave one out: 1 − (2 + 6)/2 = −3, 2 − (1 + 6)/2 = −1.5, 6 − (1 + 2)/2 = 4.5; 4 − 4 = 0
    rloo = group_advantages(REWARDS, 3, "rloo").advantages
    torch.testing.assert_close(rloo, torch.tensor([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(rloo, DEV * 3 / 2)  # G/(G − 1)·(r − mean)
    # REINFORCE++-baseline: the centred (−2, −1, 3, 0, 0, 0) have batch mean 0 and unbiased
    # variance (4 + 1 + 9) / (6 − 1) = 2.8
    rpp = group_advantages(REWARDS, 3, "reinforce_pp").advantages
    torch.testing.assert_close(rpp, DEV / (math.sqrt(2.8) + 1e-4))


def test_equal_rewards_give_zero_advantage_never_nan():
    flat = torch.full((6,), 0.1)  # float32 0.1 is not exact: the mean may differ by an ulp
    for estimator in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        out = group_advantages(flat, 3, estimator)
        assert torch.isfinite(out.advantages).all()
        torch.testing.assert_close(out.advantages, torch.zeros(6), atol=1e-3, rtol=0)
        assert out.zero_std_fraction.item() == 1.0


def test_group_of_one_and_bad_shapes():
    with pytest.raises(ValueError, match="rloo needs group_size >= 2"):
        group_advantages(REWARDS, 1, "rloo")
    # G = 1 (TRL: eval with num_generations_eval = 1): std 0, advantage 0, no NaN
    single = group_advantages(torch.tensor([3.0, -1.0]), 1, "grpo")
    assert single.advantages.tolist() == [0.0, 0.0] and single.group_std.tolist() == [0.0, 0.0]
    assert single.zero_std_fraction.item() == 1.0
    assert group_advantages(torch.tensor([5.0]), 1, "reinforce_pp").advantages.tolist() == [0.0]
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        group_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match=r"rewards must be \(N,\)"):
        group_advantages(REWARDS.view(2, 3), 3)
    with pytest.raises(ValueError, match="unknown estimator"):
        group_advantages(REWARDS, 3, "ppo")
    # integer rewards (pass/fail counts) are accepted
    torch.testing.assert_close(group_advantages(torch.tensor([1, 0, 1, 0]), 2, "dr_grpo").advantages,
                               torch.tensor([0.5, -0.5, 0.5, -0.5]))


def test_advantages_match_trl():
    """TRL: GRPOTrainer advantages (scale_rewards="group" -> grpo, "none" -> dr_grpo), RLOOTrainer
    leave-one-out baseline (rloo), and RLOOTrainer's normalize_advantages whitening applied to the
    group-centred rewards (reinforce_pp)."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    torch.manual_seed(0)
    G = 4
    rewards = torch.cat([torch.randn(12), torch.full((4,), 0.7)])  # three groups with spread, one without
    grouped = rewards.view(-1, G)
    mean = grouped.mean(1).repeat_interleave(G)
    std = nanstd(grouped, dim=1).repeat_interleave(G)
    trl_grpo = (rewards - mean) / (std + 1e-4)
    trl_dr_grpo = rewards - mean
    trl_rloo = rewards - ((grouped.sum(1, keepdim=True) - grouped) / (G - 1)).view(-1)
    centred = rewards - mean
    trl_whitened = (centred - torch.nanmean(centred)) / (nanstd(centred) + 1e-4)
    for estimator, expected in [("grpo", trl_grpo), ("dr_grpo", trl_dr_grpo), ("rloo", trl_rloo),
                                ("reinforce_pp", trl_whitened)]:
        torch.testing.assert_close(group_advantages(rewards, G, estimator).advantages, expected)
    trl_zero = torch.isclose(std, torch.zeros_like(std)).float().mean()  # TRL's frac_reward_zero_std
    assert group_advantages(rewards, G).zero_std_fraction.item() == pytest.approx(trl_zero.item()) == 0.25


# --- DAPO dynamic sampling and overlong shaping ----------------------------------------


def test_dynamic_sampling_keeps_groups_with_spread():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.25, 0.5])
    keep = dynamic_sampling_mask(rewards, 3)
    assert keep.tolist() == [True, False, False, True]
    assert 1 - keep.float().mean().item() == group_advantages(rewards, 3).zero_std_fraction.item()
    # tolerance: a difference of 1e-10 is "equal", one of 1e-3 is not
    close = torch.tensor([1.0, 1.0 + 1e-10, 1.0, 1.0, 1.001, 1.0], dtype=torch.float64)
    assert dynamic_sampling_mask(close, 3).tolist() == [False, True]
    assert dynamic_sampling_mask(close, 3, atol=1e-2).tolist() == [False, False]
    assert dynamic_sampling_mask(torch.tensor([1.0, 2.0]), 1).tolist() == [False, False]


LENGTHS = [0, 80, 81, 90, 100, 101, 150]


def test_overlong_penalty_by_hand():
    # L_max = 100, L_cache = 20: no penalty up to 80, then (80 − |y|)/20, −1 from 100 on
    out = overlong_penalty(torch.tensor(LENGTHS), 100, 20)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.05, -0.5, -1.0, -1.0, -1.0]))
    halved = overlong_penalty(torch.tensor(LENGTHS), 100, 20, penalty_factor=0.5)
    torch.testing.assert_close(halved, out * 0.5)
    # no cache: a hard −factor beyond L_max (no 0/0 anywhere)
    torch.testing.assert_close(overlong_penalty(torch.tensor(LENGTHS), 100, 0),
                               torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0]))
    mask = torch.arange(8)[None, :] < torch.tensor([[6], [8]])  # lengths from a mask: 6 and 8
    torch.testing.assert_close(overlong_penalty(mask.sum(-1), 8, 4), torch.tensor([-0.5, -1.0]))
    with pytest.raises(ValueError, match="cache_length <= max_length"):
        overlong_penalty(torch.tensor(LENGTHS), 10, 20)


def test_overlong_penalty_matches_trl():
    """TRL: trl.rewards.get_soft_overlong_punishment (DAPO eq. 13)."""
    rewards = pytest.importorskip("trl.rewards")
    for cache in (20, 0, 100):
        punish = rewards.get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=cache)
        expected = torch.tensor(punish([[1] * n for n in LENGTHS]))
        torch.testing.assert_close(overlong_penalty(torch.tensor(LENGTHS), 100, cache), expected)


# --- KL, surrogate, aggregation -------------------------------------------------------------


def test_k3_kl_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    ln2 = math.log(2)
    ref = logps + torch.tensor([[ln2, 0.0, -ln2]])  # ref − logp = ln 2, 0, −ln 2
    # e^d − d − 1: 2 − ln 2 − 1, 0, 1/2 + ln 2 − 1
    torch.testing.assert_close(k3_kl(logps, ref), torch.tensor([[1 - ln2, 0.0, ln2 - 0.5]]))
    masked = k3_kl(logps, ref + torch.tensor([[0.0, 0.0, math.inf]]), torch.tensor([[True, True, False]]))
    torch.testing.assert_close(masked, torch.tensor([[1 - ln2, 0.0, 0.0]]))


MASK = torch.tensor([[True, True, True], [True, True, False]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
# ratios (1.5, 0.9, 1) with A = +1 and (0.5, 1.1, padding) with A = −2
RATIOS = torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.1, 1.0]])
ADV = torch.tensor([1.0, -2.0])


def logps_for(ratios: torch.Tensor) -> torch.Tensor:
    return (OLD + ratios.log()).requires_grad_()


def test_token_surrogate_with_clip_higher_by_hand():
    logps = logps_for(RATIOS)
    out = clipped_surrogate(logps, OLD, ADV, MASK, epsilon_low=0.2, epsilon_high=0.28)
    # row 0 (A = 1): 1.5 is clipped to 1.28 (min picks it), 0.9 and 1 are inside [0.8, 1.28]
    # row 1 (A = −2): min(0.5·−2, 0.8·−2) = −1.6 (clipped low); min(1.1·−2, 1.1·−2) = −2.2
    expected = torch.tensor([[-1.28, -0.9, -1.0], [1.6, 2.2, 0.0]])
    torch.testing.assert_close(out.per_token_loss, expected)
    # one of five real tokens clipped high, one low
    assert out.clip_high_fraction.item() == pytest.approx(0.2)
    assert out.clip_low_fraction.item() == pytest.approx(0.2)
    assert out.clip_region_fraction.item() == pytest.approx(0.4)
    assert out.kl is None
    # ∂(−ρA)/∂log π = −ρA where unclipped, 0 where the clip is active or on padding
    out.per_token_loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, -0.9, -1.0], [0.0, 2.2, 0.0]]))
    # symmetric ε (epsilon_high defaults to epsilon_low): 1.5 is clipped to 1.2 instead
    sym = clipped_surrogate(logps_for(RATIOS), OLD, ADV, MASK, epsilon_low=0.2)
    assert sym.per_token_loss[0, 0].item() == pytest.approx(-1.2)


def test_surrogate_adds_beta_k3():
    ln2 = math.log(2)
    logps = logps_for(RATIOS)
    ref = logps.detach() + torch.tensor([[ln2, 0.0, -ln2], [0.0, ln2, 0.0]])
    out = clipped_surrogate(logps, OLD, ADV, MASK, epsilon_low=0.2, epsilon_high=0.28, ref_logps=ref, beta=0.1)
    kl = torch.tensor([[1 - ln2, 0.0, ln2 - 0.5], [0.0, 1 - ln2, 0.0]])
    torch.testing.assert_close(out.kl, kl)
    base = torch.tensor([[-1.28, -0.9, -1.0], [1.6, 2.2, 0.0]])
    torch.testing.assert_close(out.per_token_loss, base + 0.1 * kl)
    # β = 0 still reports the KL, without adding it
    no_beta = clipped_surrogate(logps, OLD, ADV, MASK, epsilon_high=0.28, ref_logps=ref)
    torch.testing.assert_close(no_beta.per_token_loss, base)
    torch.testing.assert_close(no_beta.kl, kl)


def test_sequence_level_ratio_gspo_by_hand():
    logps = logps_for(RATIOS)
    out = clipped_surrogate(logps, OLD, ADV, MASK, epsilon_low=0.2, epsilon_high=0.28, importance_level="sequence")
    s0 = (1.5 * 0.9 * 1.0) ** (1 / 3)  # 1.1052: geometric mean of the token ratios, inside [0.8, 1.28]
    s1 = (0.5 * 1.1) ** (1 / 2)  # 0.7416 < 0.8 with A = −2: clipped low, loss −(0.8·−2) = 1.6
    torch.testing.assert_close(out.ratio, torch.tensor([[s0], [s1]]))
    torch.testing.assert_close(out.per_token_loss, torch.tensor([[-s0] * 3, [1.6, 1.6, 0.0]]))
    # fractions over sequences (as TRL at sequence level): one of two clipped low
    assert (out.clip_low_fraction.item(), out.clip_high_fraction.item()) == (0.5, 0.0)
    # GSPO's gradient: ∇J = s·A·mean_t ∇log π, so with the sequence mean each token of row 0
    # gets −(1/2)·s0·1·(1/3); the clipped row 1 gets none
    aggregate_loss(out.per_token_loss, MASK, "sequence_mean").backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-s0 / 6] * 3, [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="one advantage per sequence"):
        clipped_surrogate(logps, OLD, ADV[:, None].expand(2, 3), MASK, importance_level="sequence")
    with pytest.raises(ValueError, match="unknown importance_level"):
        clipped_surrogate(logps, OLD, ADV, MASK, importance_level="segment")


def test_padding_never_reaches_loss_stats_or_gradients():
    bad = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.nan]])
    for level in ("token", "sequence"):
        logps = logps_for(RATIOS)
        clean = clipped_surrogate(logps, OLD, ADV, MASK, importance_level=level, ref_logps=OLD, beta=0.1)
        dirty_logps = (logps.detach() + bad).requires_grad_()
        dirty = clipped_surrogate(dirty_logps, OLD - bad.nan_to_num(nan=math.inf), ADV, MASK,
                                  importance_level=level, ref_logps=OLD + bad, beta=0.1)
        torch.testing.assert_close(dirty.per_token_loss, clean.per_token_loss)
        assert dirty.clip_low_fraction == clean.clip_low_fraction
        for mode in ("sequence_mean", "token_mean", "constant"):
            aggregate_loss(dirty.per_token_loss, MASK, mode, max_completion_length=4).backward(retain_graph=True)
        assert torch.isfinite(dirty_logps.grad).all() and dirty_logps.grad[1, 2] == 0
    # a completion with no real token (masked out whole, e.g. truncated) adds nothing
    empty = torch.tensor([[True, True, True], [False, False, False]])
    out = clipped_surrogate(logps_for(RATIOS), OLD, ADV, empty, epsilon_high=0.28, importance_level="sequence")
    assert out.per_token_loss[1].tolist() == [0.0, 0.0, 0.0]
    assert out.clip_low_fraction.item() == 0.0  # only row 0 counts, and it is not clipped


def test_aggregations_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, math.inf]])
    # GRPO: (6/3 + 9/2) / 2 = 3.25; DAPO: 15/5 = 3; Dr. GRPO: 15 / (2·4) = 1.875
    assert aggregate_loss(loss, MASK, "sequence_mean").item() == pytest.approx(3.25)
    assert aggregate_loss(loss, MASK, "token_mean").item() == pytest.approx(3.0)
    assert aggregate_loss(loss, MASK, "token_mean", num_tokens=10).item() == pytest.approx(1.5)
    assert aggregate_loss(loss, MASK, "constant", max_completion_length=4).item() == pytest.approx(1.875)
    assert aggregate_loss(loss, MASK.float(), "sequence_mean").item() == pytest.approx(3.25)  # float masks too
    # a row without tokens counts 0 in the sequence mean: (1.5 + 0) / 2
    empty = torch.tensor([[True, True, False], [False, False, False]])
    assert aggregate_loss(loss, empty, "sequence_mean").item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="needs max_completion_length"):
        aggregate_loss(loss, MASK, "constant")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_loss(loss, MASK, "sum")
    assert TRL_LOSS_TYPES == {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean",
                              "dr_grpo": "constant"}


# --- Safe RLHF-V ---------------------------------------------------------------------------


def test_safe_advantages_by_hand_and_as_ppo_lagrangian():
    a_r, a_c = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 2.0])
    # λ = 3: (1 − 1.5)/4 = −0.125, (−1 − 6)/4 = −1.75
    torch.testing.assert_close(safe_advantages(a_r, a_c, 3.0), torch.tensor([-0.125, -1.75]))
    torch.testing.assert_close(safe_advantages(a_r, a_c, 3.0), combined_advantage(a_r, a_c, 3.0))
    lam = torch.tensor(0.5, requires_grad=True)
    assert not safe_advantages(a_r, a_c, lam).requires_grad  # λ is trained by its own loss
    torch.testing.assert_close(safe_advantages(a_r, a_c, 0.0), a_r)


# --- TRL's _compute_loss on the same tensors -------------------------------------------


@pytest.fixture(scope="module")
def trl_compute_loss():
    return pytest.importorskip("trl.trainer.grpo_trainer").GRPOTrainer._compute_loss


def trl_loss(compute_loss, logps, old, ref, adv, mask, *, loss_type, level, beta, max_len, num_items):
    """Run TRL's GRPOTrainer._compute_loss on a stub: the 'model' returns ``logps``; no vLLM, no
    entropy masking, one process, no gradient accumulation."""
    n, t = logps.shape
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, torch.zeros(n, t), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, use_vllm=False, max_completion_length=max_len,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long), "completion_mask": mask.long(),
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(num_items)),
    }
    return compute_loss(stub, None, inputs), stub._metrics["train"]


CASES = [(loss_type, "token", beta) for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo") for beta in (0.0, 0.04)]
CASES += [("grpo", "sequence", 0.0), ("grpo", "sequence", 0.04)]


@pytest.mark.parametrize(("loss_type", "level", "beta"), CASES)
def test_loss_matches_trl_compute_loss(trl_compute_loss, loss_type, level, beta):
    """TRL: GRPOTrainer._compute_loss (ratio, clip, k3 KL, loss_type aggregation, clip_ratio metrics)."""
    torch.manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()
    base = -torch.rand(4, 5) * 2
    # shifted so that even sequence-level ratios clip: row 1 (A < 0) low, row 2 (A > 0) high
    old = base + 0.3 * torch.randn(4, 5) + torch.tensor([[0.0], [0.4], [-0.5], [0.0]])
    ref = base + 0.3 * torch.randn(4, 5)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    max_len, num_items = 8, 20 if loss_type == "dapo" else int(mask.sum())  # dapo: tokens of the whole batch

    theirs_logps = base.clone().requires_grad_()
    theirs, metrics = trl_loss(trl_compute_loss, theirs_logps, old, ref, adv, mask, loss_type=loss_type,
                               level=level, beta=beta, max_len=max_len, num_items=num_items)
    theirs.backward()

    ours_logps = base.clone().requires_grad_()
    out = clipped_surrogate(ours_logps, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28,
                            importance_level=level, ref_logps=ref if beta else None, beta=beta)
    ours = aggregate_loss(out.per_token_loss, mask, TRL_LOSS_TYPES[loss_type], max_completion_length=max_len,
                          num_tokens=num_items)
    ours.backward()

    torch.testing.assert_close(ours, theirs.detach())
    torch.testing.assert_close(ours_logps.grad, theirs_logps.grad)
    assert out.clip_low_fraction.item() == pytest.approx(metrics["clip_ratio/low_mean"][0])
    assert out.clip_high_fraction.item() == pytest.approx(metrics["clip_ratio/high_mean"][0])
    assert out.clip_region_fraction.item() == pytest.approx(metrics["clip_ratio/region_mean"][0])
    assert out.clip_region_fraction.item() > 0  # the seed does exercise the clip
    if beta:
        assert aggregate_loss(out.kl, mask, "token_mean").item() == pytest.approx(metrics["kl"][0])
