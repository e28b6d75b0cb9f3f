"""The torch reference (kernels/reference.py) against kernels/losses.py and fp64."""

from __future__ import annotations

import math

import pytest
import torch

from pivotrl_nemo.kernels import losses


def _case(n=29, h=24, v=70, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * 0.4).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[0], targets[-1] = 0, v - 1
    return hidden, weight, targets


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_reference_equals_losses_steps(kern, temperature):
    hidden, weight, targets = _case()
    logprobs, entropy = kern.reference.token_logprobs_entropy(hidden, weight, targets, temperature)
    logits = hidden @ weight.T
    torch.testing.assert_close(logprobs, losses.token_logprobs(logits, targets, temperature), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, losses.token_entropy(logits, temperature), rtol=1e-5, atol=1e-5)
    assert logprobs.dtype == torch.float32 and (logprobs <= 0).all()


def test_reference_gradients_match_fp64_log_softmax(kern):
    hidden, weight, targets = _case(seed=1)
    temperature = 0.8
    g_lp = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(5))
    g_ent = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(6))

    h32, w32 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, ent = kern.reference.token_logprobs_entropy(h32, w32, targets, temperature)
    gh, gw = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), (h32, w32))

    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp = torch.log_softmax((h64 @ w64.T) / temperature, dim=-1)
    lp64 = logp.gather(-1, targets[:, None]).squeeze(-1)
    ent64 = -(logp.exp() * logp).sum(-1)
    gh64, gw64 = torch.autograd.grad((lp64 * g_lp.double()).sum() + (ent64 * g_ent.double()).sum(), (h64, w64))

    torch.testing.assert_close(lp.double(), lp64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), ent64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh.double(), gh64, rtol=1e-5, atol=1e-5 * gh64.abs().max().item())
    torch.testing.assert_close(gw.double(), gw64, rtol=1e-5, atol=1e-5 * gw64.abs().max().item())


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_reference_pg_loss_is_clipped_pg_loss_on_its_logprobs(kern, kl_coef):
    hidden, weight, targets = _case(seed=2)
    n = hidden.shape[0]
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(n, generator=g) * 4
    ref = -torch.rand(n, generator=g) * 4
    adv = torch.randn(n, generator=g)
    mask = (torch.rand(n, generator=g) > 0.3).float()
    out, lp, _ = kern.reference.pg_loss(hidden, weight, targets, adv, old, mask, 50.0, 0.2, 0.28, kl_coef, ref)
    expect = losses.clipped_pg_loss(
        losses.token_logprobs(hidden @ weight.T, targets), old, adv, mask, 50.0, 0.2, 0.28, kl_coef, ref
    )
    for name in ("loss", "pg_loss", "kl", "clip_fraction", "ratio_min", "ratio_max"):
        torch.testing.assert_close(getattr(out, name), getattr(expect, name), rtol=1e-6, atol=1e-7, msg=name)
    assert (kl_coef == 0.0) == (out.kl.item() == 0.0)


def test_reference_logprobs_never_positive_when_target_dominates(kern):
    hidden = torch.full((4, 8), 3.0)
    weight = torch.zeros(50, 8)
    weight[7] = 40.0  # target logit ~ 960, every other logit 0
    logprobs, entropy = kern.reference.token_logprobs_entropy(hidden, weight, torch.full((4,), 7))
    assert (logprobs <= 0).all() and (logprobs > -1e-6).all()
    assert (entropy >= -1e-6).all()


def test_reference_uniform_large_vocab_is_minus_log_v(kern):
    v = 262_144
    logprobs, entropy = kern.reference.token_logprobs_entropy(
        torch.zeros(2, 4), torch.zeros(v, 4), torch.tensor([0, v - 1])
    )
    torch.testing.assert_close(logprobs, torch.full((2,), -math.log(v)), rtol=1e-6, atol=0)
    torch.testing.assert_close(entropy, torch.full((2,), math.log(v)), rtol=1e-6, atol=0)


def test_unknown_impl_is_refused(kern):
    hidden, weight, targets = _case()
    with pytest.raises(ValueError, match="impl must be one of"):
        kern.fused_token_logprobs(hidden, weight, targets, impl="cuda")
