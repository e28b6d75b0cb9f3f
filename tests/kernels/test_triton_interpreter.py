"""The Triton kernels under the CPU interpreter (TRITON_INTERPRET=1) against the torch reference.

Small shapes: the interpreter runs ~0.25 s per call here. fp32 must agree to 1e-5 relative;
bf16 inputs are upcast at load, so the forward still agrees to 1e-5 with the reference run on
the same (bf16-rounded) values upcast to fp32.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

TOL = dict(rtol=1e-5, atol=1e-5)


def _case(n=37, h=48, v=200, seed=0, dtype=torch.float32, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * scale).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    if n:
        targets[0], targets[-1] = 0, v - 1
    return hidden, weight, targets


def _grads(kern, impl, hidden, weight, targets, temperature, g_lp, g_ent, config=None):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, ent = kern.fused_token_logprobs(h, w, targets, temperature, impl=impl, config=config)
    loss = (lp * g_lp).sum() + (0.0 if g_ent is None else (ent * g_ent).sum())
    gh, gw = torch.autograd.grad(loss, (h, w))
    return lp.detach(), ent.detach(), gh, gw


def _close_rel(actual, expected, rtol=1e-5):
    """Elementwise close with an absolute floor of rtol * max|expected| (gradients have zeros)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * max(scale, 1e-12))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_forward_fp32_matches_reference(interp, temperature):
    hidden, weight, targets = _case(seed=1)
    lp, ent = interp.fused_logprobs_no_grad(hidden, weight, targets, temperature)
    rlp, rent = interp.reference.token_logprobs_entropy(hidden, weight, targets, temperature)
    torch.testing.assert_close(lp, rlp, **TOL)
    torch.testing.assert_close(ent, rent, **TOL)
    assert lp.dtype == torch.float32 and (lp <= 0).all()


@pytest.mark.parametrize("with_entropy_grad", [False, True])
def test_backward_fp32_matches_reference(interp, with_entropy_grad):
    hidden, weight, targets = _case(seed=2)
    g = torch.Generator().manual_seed(9)
    g_lp = torch.randn(hidden.shape[0], generator=g)
    g_ent = torch.randn(hidden.shape[0], generator=g) if with_entropy_grad else None
    lp, ent, gh, gw = _grads(interp, "triton", hidden, weight, targets, 0.8, g_lp, g_ent)
    rlp, rent, rgh, rgw = _grads(interp, "torch", hidden, weight, targets, 0.8, g_lp, g_ent)
    torch.testing.assert_close(lp, rlp, **TOL)
    _close_rel(gh, rgh)
    _close_rel(gw, rgw)
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype


@pytest.mark.parametrize(
    "cfg",
    [
        dict(num_splits=1, bwd_chunk_elems=1 << 20),  # one split, one backward chunk
        dict(num_splits=3, bwd_chunk_elems=37 * 64),  # ragged splits, several backward chunks
        dict(block_n=32, block_v=64, block_k=16, group_r=1, num_splits=4, bwd_chunk_elems=1),  # chunk = one tile
    ],
)
def test_tilings_agree(interp, cfg):
    config = interp.KernelConfig(**{**interp.INTERPRETER_CONFIG.__dict__, **cfg})
    hidden, weight, targets = _case(seed=3, v=173)
    g_lp = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(4))
    lp, ent, gh, gw = _grads(interp, "triton", hidden, weight, targets, 1.0, g_lp, None, config)
    rlp, rent, rgh, rgw = _grads(interp, "torch", hidden, weight, targets, 1.0, g_lp, None)
    torch.testing.assert_close(lp, rlp, **TOL)
    _close_rel(gh, rgh)
    _close_rel(gw, rgw)


def test_bf16_inputs_upcast_at_load(interp):
    hidden, weight, targets = _case(seed=4, dtype=torch.bfloat16)
    g_lp = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(1))
    lp, ent, gh, gw = _grads(interp, "triton", hidden, weight, targets, 0.9, g_lp, None)
    # the reference on the same bf16 values, upcast to fp32
    rlp, rent, rgh, rgw = _grads(interp, "torch", hidden.float(), weight.float(), targets, 0.9, g_lp, None)
    torch.testing.assert_close(lp, rlp, **TOL)
    torch.testing.assert_close(ent, rent, **TOL)
    assert gh.dtype == gw.dtype == torch.bfloat16
    _close_rel(gh, rgh, rtol=2e-2)  # dlogits and the grads are stored in bf16
    _close_rel(gw, rgw, rtol=2e-2)


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_pg_loss_with_masks_matches_reference(interp, kl_coef):
    hidden, weight, targets = _case(n=33, seed=5)
    n = hidden.shape[0]
    g = torch.Generator().manual_seed(7)
    mask = (torch.rand(n, generator=g) > 0.35).float()
    targets = torch.where(mask > 0, targets, torch.full_like(targets, -100))  # padding ids at masked rows
    with torch.no_grad():
        base, _ = interp.reference.token_logprobs_entropy(hidden, weight, torch.where(mask > 0, targets, 0))
    old = base + 0.3 * torch.randn(n, generator=g)  # ratios around 1, some clipped
    ref = base + 0.2 * torch.randn(n, generator=g)
    adv = torch.randn(n, generator=g)
    results = {}
    for impl in ("triton", "torch"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out, lp, ent = interp.fused_pg_loss(
            h,
            w,
            targets,
            adv,
            old,
            mask,
            71.0,
            0.2,
            0.28,
            kl_coef=kl_coef,
            ref_logprobs=ref if kl_coef else None,
            temperature=0.9,
            impl=impl,
        )
        out.loss.backward()
        results[impl] = (out, lp.detach(), ent.detach(), h.grad, w.grad)
    (out, lp, ent, gh, gw), (rout, rlp, rent, rgh, rgw) = results["triton"], results["torch"]
    for name in ("loss", "pg_loss", "kl", "clip_fraction", "ratio_min", "ratio_max"):
        torch.testing.assert_close(getattr(out, name), getattr(rout, name), **TOL, msg=name)
    assert 0.0 < out.clip_fraction.item() < 1.0, "the case should exercise both clip branches"
    assert (out.kl.item() > 0) == (kl_coef > 0)
    valid = mask > 0
    torch.testing.assert_close(lp[valid], rlp[valid], **TOL)
    torch.testing.assert_close(ent[valid], rent[valid], **TOL)
    _close_rel(gh, rgh)
    _close_rel(gw, rgw)
    assert gh[~valid].abs().max() == 0, "masked rows must get no gradient"


def test_all_masked_gives_zero_loss_and_grads(interp):
    hidden, weight, targets = _case(n=17, seed=6)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    zeros = torch.zeros(17)
    out, _, _ = interp.fused_pg_loss(h, w, targets, torch.ones(17), zeros - 1, zeros, 10.0, 0.2, 0.2)
    out.loss.backward()
    assert out.loss.item() == 0.0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_no_grad_entry_builds_no_graph(interp):
    hidden, weight, targets = _case(n=20, seed=7)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, ent = interp.fused_logprobs_no_grad(h, w, targets, 0.5)
    assert not lp.requires_grad and lp.grad_fn is None and not ent.requires_grad
    rlp, _ = interp.reference.token_logprobs_entropy(hidden, weight, targets, 0.5)
    torch.testing.assert_close(lp, rlp, **TOL)


def test_more_than_65536_rows(interp):
    n = 70_001
    config = interp.KernelConfig(block_n=2048, block_v=32, block_k=16, group_r=4, num_splits=2, bwd_chunk_elems=n * 32)
    hidden, weight, targets = _case(n=n, h=16, v=64, seed=8)
    g_lp = torch.randn(n, generator=torch.Generator().manual_seed(2))
    lp, ent, gh, gw = _grads(interp, "triton", hidden, weight, targets, 1.3, g_lp, None, config)
    rlp, rent, rgh, rgw = _grads(interp, "torch", hidden, weight, targets, 1.3, g_lp, None)
    torch.testing.assert_close(lp, rlp, **TOL)
    torch.testing.assert_close(ent, rent, **TOL)
    _close_rel(gh, rgh)
    _close_rel(gw, rgw, rtol=3e-5)  # sums over 70K rows in a different order


def test_vocab_262144_fp32_accumulators(interp):
    v = 262_144
    config = interp.KernelConfig(
        block_n=16, block_v=8192, block_k=16, group_r=1, num_splits=4, bwd_chunk_elems=16 * 65536
    )
    hidden, weight, targets = _case(n=6, h=16, v=v, seed=9, scale=0.5)
    g_lp = torch.randn(6, generator=torch.Generator().manual_seed(3))
    lp, ent, gh, gw = _grads(interp, "triton", hidden, weight, targets, 0.7, g_lp, None, config)
    rlp, rent, rgh, rgw = _grads(interp, "torch", hidden, weight, targets, 0.7, g_lp, None)
    torch.testing.assert_close(lp, rlp, **TOL)
    torch.testing.assert_close(ent, rent, **TOL)
    _close_rel(gh, rgh)
    _close_rel(gw, rgw)
    # all-equal logits: log p = -log V and H = log V exactly
    ulp, uent = interp.fused_logprobs_no_grad(
        torch.zeros(3, 16), torch.zeros(v, 16), torch.tensor([0, 5, v - 1]), config=config
    )
    torch.testing.assert_close(ulp, torch.full((3,), -math.log(v)), rtol=1e-6, atol=0)
    torch.testing.assert_close(uent, torch.full((3,), math.log(v)), rtol=1e-6, atol=0)


def test_logprobs_never_positive(interp):
    hidden = torch.full((5, 16), 2.0)
    weight = torch.randn(100, 16, generator=torch.Generator().manual_seed(0)) * 1e-3
    weight[42] = 30.0  # the target's probability rounds to 1
    lp, ent = interp.fused_logprobs_no_grad(hidden, weight, torch.full((5,), 42), 0.3)
    assert (lp <= 0).all() and (lp > -1e-6).all()
    assert (ent >= 0).all()


def test_empty_batch(interp):
    hidden, weight, targets = _case(n=0)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    lp, ent = interp.fused_token_logprobs(h, w, targets)
    assert lp.shape == ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert h.grad.shape == (0, 48) and w.grad.abs().max() == 0


def test_cpu_without_interpreter_raises_a_clear_error():
    code = (
        "import importlib, sys, torch\n"
        "try:\n"
        "    k = importlib.import_module('pivotrl_nemo.kernels')\n"
        "except ModuleNotFoundError:\n"
        "    k = importlib.import_module('kernels')\n"
        "try:\n"
        "    k.fused_token_logprobs(torch.zeros(2, 4), torch.zeros(8, 4), torch.zeros(2, dtype=torch.long))\n"
        "except RuntimeError as e:\n"
        "    sys.stdout.write(str(e))\n"
        "    raise SystemExit(0)\n"
        "raise SystemExit('no error raised')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TRITON_INTERPRET=1" in proc.stdout and "impl='torch'" in proc.stdout, proc.stdout
