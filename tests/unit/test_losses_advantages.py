"""Advantages and the clipped PG loss against hand-computed numbers."""

import math

import pytest
import torch

from pivotrl_nemo.algorithms.advantages import (
    compute_advantages,
    group_mean_std_advantages,
    leave_one_out_advantages,
    zero_variance_fraction,
)
from pivotrl_nemo.kernels.losses import clipped_pg_loss, k3_kl, token_logprobs


def test_group_mean_std_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # mean 0.5, population std 0.5
    assert torch.allclose(group_mean_std_advantages(r, eps=0.0), torch.tensor([[1.0, -1.0, -1.0, 1.0]]))


def test_leave_one_out_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # sample 0: 1 - mean(0,0,0) = 1; others: 0 - mean(1,0,0) = -1/3; std = sqrt(3/16)
    std = math.sqrt(3 / 16)
    expect = torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]) / (std + 1e-6)
    assert torch.allclose(leave_one_out_advantages(r), expect, atol=1e-6)


@pytest.mark.parametrize("est", ["grpo", "leave_one_out"])
def test_all_equal_group_has_zero_advantage(est):
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    adv = compute_advantages(r, est)
    assert torch.all(adv[:2] == 0)
    assert torch.any(adv[2] != 0)
    assert zero_variance_fraction(r) == pytest.approx(2 / 3)


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="leave_one_out"):
        compute_advantages(torch.zeros(1, 2), "ppo")


def test_clipped_loss_hand_computed():
    # 4 tokens; global count 8 (another micro-batch holds 4 more tokens)
    lp = torch.log(torch.tensor([0.5, 0.9, 0.2, 0.3]))
    old = torch.log(torch.tensor([0.25, 0.9, 0.4, 0.3]))  # ratios 2.0, 1.0, 0.5, 1.0
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    out = clipped_pg_loss(lp, old, adv, mask, 8, clip_low=0.2, clip_high=0.28)
    # token0: min(2*1, 1.28*1) = 1.28 -> -1.28 (clipped); token1: min(-1, -1) -> 1
    # token2: min(0.5*-1, 0.8*-1) = -0.8 -> 0.8 (clipped); token3 masked
    assert out.loss.item() == pytest.approx((-1.28 + 1.0 + 0.8) / 8, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(2 / 3)
    assert out.ratio_min.item() == pytest.approx(0.5) and out.ratio_max.item() == pytest.approx(2.0)


def test_loss_gradient_only_through_unclipped_tokens():
    lp = torch.log(torch.tensor([0.5, 0.9])).requires_grad_()
    old = torch.log(torch.tensor([0.25, 0.9]))
    out = clipped_pg_loss(lp, old, torch.tensor([1.0, -1.0]), torch.ones(2), 2, 0.2, 0.28)
    out.loss.backward()
    # token 0 is clipped (zero grad); token 1: d/dlp of -(ratio * -1)/2 = ratio/2 = 0.5
    assert lp.grad[0].item() == 0.0
    assert lp.grad[1].item() == pytest.approx(0.5)


def test_microbatching_equals_full_batch():
    torch.manual_seed(0)
    logits = torch.randn(6, 11, requires_grad=True)
    tgt = torch.randint(0, 11, (6,))
    old = token_logprobs(logits, tgt).detach() + 0.05 * torch.randn(6)
    adv = torch.randn(6)
    full = clipped_pg_loss(token_logprobs(logits, tgt), old, adv, torch.ones(6), 6).loss
    (g_full,) = torch.autograd.grad(full, logits)
    parts = [
        clipped_pg_loss(token_logprobs(logits[s], tgt[s]), old[s], adv[s], torch.ones(3), 6).loss
        for s in (slice(0, 3), slice(3, 6))
    ]
    (g_mb,) = torch.autograd.grad(parts[0] + parts[1], logits)
    assert torch.allclose(g_full, g_mb, atol=1e-7)


def test_k3_kl_nonnegative_and_zero_at_equality():
    a = torch.randn(100)
    b = torch.randn(100)
    assert torch.all(k3_kl(a, b) >= 0)
    assert torch.allclose(k3_kl(a, a), torch.zeros(100))


def test_kl_needs_reference():
    with pytest.raises(ValueError, match="ref_logprobs"):
        clipped_pg_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2), 2, kl_coef=0.1)


def test_token_logprobs_never_positive_and_match_log_softmax():
    logits = torch.randn(5, 300) * 30
    tgt = torch.randint(0, 300, (5,))
    lp = token_logprobs(logits, tgt, temperature=0.7)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, tgt[:, None]).squeeze(-1)
    assert torch.all(lp <= 0)
    assert torch.allclose(lp, ref, atol=1e-5)
