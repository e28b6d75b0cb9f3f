"""GPU checks of the compiled kernels (marked ``gpu``; skipped without CUDA).

Real sizes: vocab 151,936 (Qwen3) and 262,144, N beyond 65,536 rows, temperature != 1, bf16
inputs, against an fp64 oracle (``_fp64_oracle``: the same math as kernels/reference.py with
logits, log-softmax and gradients in fp64, computed in row chunks so that it fits in memory).
The check functions take sizes and a device, and ``test_checks_dry_run_on_cpu`` runs them at toy
sizes through the interpreter so that this file's own code is exercised without a GPU.
"""

from __future__ import annotations

import pytest
import torch

HIDDEN = 4096
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (compiled Triton kernels); CPU coverage: "
    "test_triton_interpreter.py and tests/dist/test_kernel_tp.py",
)


@pytest.fixture(scope="module")
def gpu_kern(kern):
    reason = kern.triton_unavailable_reason("cuda")
    if reason is not None:
        pytest.skip(f"Triton path unavailable on CUDA: {reason}")
    return kern


def _inputs(n, v, h, device, seed=0, dtype=torch.bfloat16, logit_std=3.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device=device, dtype=dtype)
    weight = (torch.randn(v, h, generator=g) * (logit_std / h**0.5)).to(device=device, dtype=dtype)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    targets[0], targets[-1] = 0, v - 1
    return hidden, weight, targets


def _fp64_oracle(hidden, weight, targets, temperature, g_lp=None, row_chunk=1024):
    """fp64 log-probs, entropies and (if ``g_lp``) the gradients of sum(g_lp * logprobs)."""
    n = hidden.shape[0]
    w64 = weight.double()
    lp, ent = (
        torch.empty(n, dtype=torch.float64, device=hidden.device),
        torch.empty(n, dtype=torch.float64, device=hidden.device),
    )
    gh = torch.zeros(hidden.shape, dtype=torch.float64, device=hidden.device) if g_lp is not None else None
    gw = torch.zeros(weight.shape, dtype=torch.float64, device=hidden.device) if g_lp is not None else None
    for r0 in range(0, n, row_chunk):
        r1 = min(n, r0 + row_chunk)
        with torch.set_grad_enabled(g_lp is not None):
            h64 = hidden[r0:r1].double().requires_grad_(g_lp is not None)
            w_leaf = w64.detach().requires_grad_(g_lp is not None)
            logp = torch.log_softmax((h64 @ w_leaf.T) / temperature, dim=-1)
            lp_c = logp.gather(-1, targets[r0:r1, None].long()).squeeze(-1)
            with torch.no_grad():
                ent[r0:r1] = -(logp.exp() * logp).sum(-1)
            lp[r0:r1] = lp_c.detach()
            if g_lp is not None:
                d_h, d_w = torch.autograd.grad((lp_c * g_lp[r0:r1].double()).sum(), (h64, w_leaf))
                gh[r0:r1] = d_h
                gw += d_w
        del logp, lp_c
    return lp, ent, gh, gw


def check_forward(kern, n, v, h, temperature, device, config=None):
    hidden, weight, targets = _inputs(n, v, h, device, seed=v % 97)
    lp, ent = kern.fused_logprobs_no_grad(hidden, weight, targets, temperature, config=config)
    lp64, ent64, _, _ = _fp64_oracle(hidden, weight, targets, temperature)
    assert (lp <= 0).all(), f"positive log-prob: max {lp.max().item()}"
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    torch.testing.assert_close(lp.double(), lp64, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(ent.double(), ent64, rtol=1e-4, atol=2e-4)


def check_backward(kern, n, v, h, temperature, device, config=None):
    hidden, weight, targets = _inputs(n, v, h, device, seed=1 + v % 89)
    g_lp = torch.randn(n, generator=torch.Generator(device="cpu").manual_seed(3)).to(device)
    hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, _ = kern.fused_token_logprobs(hh, ww, targets, temperature, config=config)
    (lp * g_lp).sum().backward()
    lp64, _, gh64, gw64 = _fp64_oracle(hidden, weight, targets, temperature, g_lp)
    torch.testing.assert_close(lp.detach().double(), lp64, rtol=1e-4, atol=2e-4)
    # dlogits and both gradients are stored in bf16 (relative rounding 2^-8)
    for name, got, ref in (("hidden", hh.grad, gh64), ("weight", ww.grad, gw64)):
        assert got.dtype == torch.bfloat16
        scale = ref.abs().max().item()
        torch.testing.assert_close(
            got.double(), ref, rtol=2e-2, atol=1e-2 * scale, msg=lambda m, x=name: f"grad {x}: {m}"
        )
        rel = (got.double() - ref).norm() / ref.norm()
        assert rel < 1e-2, f"grad {name}: relative L2 error {rel:.3e}"


def check_pg_loss(kern, n, v, h, device, config=None):
    hidden, weight, targets = _inputs(n, v, h, device, seed=11, dtype=torch.float32, logit_std=2.0)
    g = torch.Generator(device="cpu").manual_seed(5)
    mask = (torch.rand(n, generator=g) > 0.3).float().to(device)
    base, _ = kern.fused_logprobs_no_grad(hidden, weight, targets, 0.9, impl="torch")
    old = base + 0.3 * torch.randn(n, generator=g).to(device)
    ref = base + 0.2 * torch.randn(n, generator=g).to(device)
    adv = torch.randn(n, generator=g).to(device)
    got = {}
    for impl in ("triton", "torch"):
        hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out, lp, _ = kern.fused_pg_loss(
            hh,
            ww,
            targets,
            adv,
            old,
            mask,
            float(mask.sum()),
            0.2,
            0.28,
            kl_coef=0.05,
            ref_logprobs=ref,
            temperature=0.9,
            impl=impl,
            config=config,
        )
        out.loss.backward()
        got[impl] = (out, hh.grad, ww.grad)
    (out, gh, gw), (rout, rgh, rgw) = got["triton"], got["torch"]
    for name in ("loss", "pg_loss", "kl", "clip_fraction", "ratio_min", "ratio_max"):
        torch.testing.assert_close(getattr(out, name), getattr(rout, name), rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(gh, rgh, rtol=1e-5, atol=1e-5 * rgh.abs().max().item())
    torch.testing.assert_close(gw, rgw, rtol=1e-5, atol=1e-5 * rgw.abs().max().item())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("vocab", [151_936, 262_144])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_forward_large_vocab_many_rows(gpu_kern, vocab, temperature):
    check_forward(gpu_kern, 65_600, vocab, HIDDEN, temperature, torch.device("cuda"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("vocab,n", [(151_936, 4096), (262_144, 4096), (151_936, 65_600)])
def test_backward_large_vocab(gpu_kern, vocab, n):
    check_backward(gpu_kern, n, vocab, HIDDEN, 0.7, torch.device("cuda"))


@pytest.mark.gpu
@needs_cuda
def test_pg_loss_fp32_matches_torch_path(gpu_kern):
    check_pg_loss(gpu_kern, 2048, 151_936, 1024, torch.device("cuda"))


@pytest.mark.gpu
@needs_cuda
def test_forward_backward_never_materialises_logits(gpu_kern):
    n, v = 16_384, 151_936
    device = torch.device("cuda")
    hidden, weight, targets = _inputs(n, v, HIDDEN, device)
    hidden.requires_grad_()
    weight.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lp, _ = gpu_kern.fused_token_logprobs(hidden, weight, targets)
    (-lp.mean()).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    logits_bytes = n * v * 2
    # the weight gradient itself plus a quarter of one bf16 logits tensor (the unfused path
    # needs the logits, their fp32 copy and its gradient: several times logits_bytes)
    budget = weight.numel() * 2 + logits_bytes // 4
    assert extra < budget, (
        f"peak extra {extra / 2**30:.2f} GiB > budget {budget / 2**30:.2f} GiB; "
        f"one bf16 logits tensor is {logits_bytes / 2**30:.2f} GiB"
    )


@pytest.mark.gpu
@needs_cuda
def test_bf16_matches_torch_reference_closer_than_eager_bf16(gpu_kern):
    """The fused path is at least as accurate as the usual bf16 logits + fp32 log_softmax."""
    n, v = 4096, 151_936
    hidden, weight, targets = _inputs(n, v, HIDDEN, torch.device("cuda"), seed=7)
    lp, _ = gpu_kern.fused_logprobs_no_grad(hidden, weight, targets)
    lp64, _, _, _ = _fp64_oracle(hidden, weight, targets, 1.0)
    eager = torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert (lp.double() - lp64).abs().max() <= (eager.double() - lp64).abs().max()


def test_checks_dry_run_on_cpu(interp):
    """The GPU checks above, at toy sizes through the interpreter (tests this file's code)."""
    cfg = interp.KernelConfig(block_n=16, block_v=64, block_k=32, group_r=2, num_splits=3, bwd_chunk_elems=40 * 128)
    cpu = torch.device("cpu")
    check_forward(interp, 40, 300, 64, 0.7, cpu, cfg)
    check_backward(interp, 40, 300, 64, 0.7, cpu, cfg)
    check_pg_loss(interp, 40, 300, 64, cpu, cfg)
