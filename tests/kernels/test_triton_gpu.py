"""GPU checks of the compiled kernels (marked ``gpu``; skipped without CUDA).

Real sizes: vocab 151,936 (Qwen3) and 262,144, N beyond 65,536 rows, temperature != 1, bf16
inputs. Every row is compared with the torch reference (``impl="torch"``, kernels/reference.py:
fp32 logits of the upcast inputs, run in row chunks by ``_torch_reference``), and a sample of
``ORACLE_ROWS`` rows (all of them up to that many) with an fp64 oracle (``_fp64_oracle``: the same
math with logits, log-softmax and gradients in fp64). The weight gradient sums over all rows, so
at full size its fp64 check takes the kernel's gradient with the upstream gradient zero outside
the sample, which is exactly what the oracle computes on the sampled rows.

Cost (H = 4,096; one logits GEMM is 2 N V H FLOP, a forward + backward 3 of them): about 1.0e15
FLOP in the kernels (bf16), 7.3e14 in the fp32 reference (no TF32) and 9e13 in fp64, which an
H100 runs in about 3 s + 15 s + 2 s (~400 TFLOP/s for the untuned kernel, ~50 TFLOP/s for fp32
SGEMM and fp64 DGEMM), plus ~1 s of memory-bound reference passes, the inputs (made on the GPU)
and Triton's compiles: well under 3 minutes for the file. The fp64 oracle on every row was
7.4e14 FLOP (the 65,600 x 262,144 forward alone 1.4e14, ~3 s of DGEMM) and 2x the reference's
bytes in its elementwise passes; per test the numbers are in the comments below.
The check functions take sizes and a device, and ``test_checks_dry_run_on_cpu`` runs them at toy
sizes through the interpreter so that this file's own code is exercised without a GPU.
"""

from __future__ import annotations

import pytest
import torch

HIDDEN = 4096
ORACLE_ROWS = 4096  # rows checked in fp64: all of them up to this many, else a sample this size
REF_ROW_CHUNK = 2048  # rows per chunk of the fp32 torch reference: 2048 x 262,144 fp32 is 2 GiB
ORACLE_TOL = {"rtol": 1e-4, "atol": 2e-4}  # log-probs / entropies against fp64
# kernel against the fp32 reference: both are within ORACLE_TOL of fp64 (the reference's own
# error is ~1e-6), so twice that bounds their difference
PARITY_TOL = {"rtol": 2e-4, "atol": 4e-4}
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
    # made where they are used: a 262,144 x 4,096 weight is 1.1e9 normals, seconds on a CPU
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, device=device).to(dtype)
    weight = (torch.randn(v, h, generator=g, device=device) * (logit_std / h**0.5)).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g, device=device)
    targets[0], targets[-1] = 0, v - 1
    return hidden, weight, targets


def _oracle_rows(n, k=ORACLE_ROWS, seed=0):
    """Sorted row indices for the fp64 oracle: every row when ``n <= k``; else ``k`` rows: the
    first and last few, those around 65,536 (where a row index stops fitting 16 bits) and a
    seeded random rest."""
    if n <= k:
        return torch.arange(n)
    edge = max(1, min(16, k // 8))
    fixed = set(range(edge)) | set(range(n - edge, n))
    if n > 65_536:
        fixed |= set(range(65_536 - edge, min(n, 65_536 + edge)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    rest = [i for i in perm if i not in fixed][: k - len(fixed)]
    return torch.tensor(sorted(fixed.union(rest)))


def _torch_reference(kern, hidden, weight, targets, temperature, g_lp=None, row_chunk=REF_ROW_CHUNK):
    """``impl="torch"`` on every row, in row chunks (the [65,600, 262,144] fp32 logits would be
    69 GB): fp32 log-probs and entropies and (if ``g_lp``) fp32 gradients of sum(g_lp * logprobs),
    from fp32 copies of the inputs."""
    assert not torch.backends.cuda.matmul.allow_tf32, "the fp32 reference needs full-precision fp32 GEMMs"
    n, grad = hidden.shape[0], g_lp is not None
    lp = torch.empty(n, dtype=torch.float32, device=hidden.device)
    ent = torch.empty_like(lp)
    w32 = weight.detach().float().requires_grad_(grad)
    gh = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if grad else None
    gw = torch.zeros_like(w32) if grad else None
    for r0 in range(0, n, row_chunk):
        r1 = min(n, r0 + row_chunk)
        with torch.set_grad_enabled(grad):
            h32 = hidden[r0:r1].detach().float().requires_grad_(grad)
            lp_c, ent_c = kern.fused_token_logprobs(h32, w32, targets[r0:r1], temperature, impl="torch")
            if grad:
                d_h, d_w = torch.autograd.grad((lp_c * g_lp[r0:r1].float()).sum(), (h32, w32))
                gh[r0:r1] = d_h
                gw += d_w
        lp[r0:r1], ent[r0:r1] = lp_c.detach(), ent_c.detach()
    return lp, ent, gh, gw


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


def _kernel_grads(kern, hidden, weight, targets, temperature, g_lp, config=None):
    """The kernel's log-probs and the gradients of sum(g_lp * logprobs) wrt hidden and weight."""
    hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, _ = kern.fused_token_logprobs(hh, ww, targets, temperature, config=config)
    (lp * g_lp).sum().backward()
    # dlogits and both gradients are stored in the inputs' dtype (bf16: relative rounding 2^-8)
    assert hh.grad.dtype == hidden.dtype and ww.grad.dtype == weight.dtype
    return lp.detach(), hh.grad, ww.grad


def _assert_grad_close(name, got, ref):
    ref = ref.double()
    scale = ref.abs().max().item()
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=1e-2 * scale, msg=lambda m: f"grad {name}: {m}")
    rel = (got.double() - ref).norm() / ref.norm()
    assert rel < 1e-2, f"grad {name}: relative L2 error {rel:.3e}"


def check_forward(kern, n, v, h, temperature, device, config=None, oracle_rows=ORACLE_ROWS):
    hidden, weight, targets = _inputs(n, v, h, device, seed=v % 97)
    lp, ent = kern.fused_logprobs_no_grad(hidden, weight, targets, temperature, config=config)
    assert (lp <= 0).all(), f"positive log-prob: max {lp.max().item()}"
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    # every row: the fp32 torch reference
    lp32, ent32, _, _ = _torch_reference(kern, hidden, weight, targets, temperature)
    torch.testing.assert_close(lp, lp32, **PARITY_TOL, msg=lambda m: f"log-probs vs fp32 reference: {m}")
    torch.testing.assert_close(ent, ent32, **PARITY_TOL, msg=lambda m: f"entropies vs fp32 reference: {m}")
    del lp32, ent32
    # the sampled rows: fp64
    rows = _oracle_rows(n, oracle_rows).to(device)
    lp64, ent64, _, _ = _fp64_oracle(hidden[rows], weight, targets[rows], temperature)
    torch.testing.assert_close(lp[rows].double(), lp64, **ORACLE_TOL, msg=lambda m: f"log-probs vs fp64: {m}")
    torch.testing.assert_close(ent[rows].double(), ent64, **ORACLE_TOL, msg=lambda m: f"entropies vs fp64: {m}")


def check_backward(kern, n, v, h, temperature, device, config=None, oracle_rows=ORACLE_ROWS):
    hidden, weight, targets = _inputs(n, v, h, device, seed=1 + v % 89)
    g_lp = torch.randn(n, generator=torch.Generator(device="cpu").manual_seed(3)).to(device)
    lp, gh, gw = _kernel_grads(kern, hidden, weight, targets, temperature, g_lp, config)
    # every row: the fp32 torch reference
    lp32, _, gh32, gw32 = _torch_reference(kern, hidden, weight, targets, temperature, g_lp)
    torch.testing.assert_close(lp, lp32, **PARITY_TOL, msg=lambda m: f"log-probs vs fp32 reference: {m}")
    _assert_grad_close("hidden vs fp32 reference", gh, gh32)
    _assert_grad_close("weight vs fp32 reference", gw, gw32)
    del lp32, gh32, gw32
    # the sampled rows: fp64. A hidden row's gradient depends on its own row alone.
    rows = _oracle_rows(n, oracle_rows).to(device)
    lp64, _, gh64, gw64 = _fp64_oracle(hidden[rows], weight, targets[rows], temperature, g_lp[rows])
    torch.testing.assert_close(lp[rows].double(), lp64, **ORACLE_TOL, msg=lambda m: f"log-probs vs fp64: {m}")
    _assert_grad_close("hidden (sampled rows) vs fp64", gh[rows], gh64)
    if rows.numel() < n:  # the weight gradient of the sampled rows alone: g_lp zero elsewhere
        del gw
        g_sample = torch.zeros_like(g_lp)
        g_sample[rows] = g_lp[rows]
        _, _, gw = _kernel_grads(kern, hidden, weight, targets, temperature, g_sample, config)
    _assert_grad_close("weight vs fp64", gw, gw64)


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
    # N = 65,600: 2 N V H = 8.2e13 (V = 151,936) / 1.4e14 (262,144) FLOP in the kernel (bf16)
    # and the same in the fp32 reference (~1.6 s / ~2.8 s on an H100); fp64 on 4,096 rows:
    # 5.1e12 / 8.8e12 (~0.1 / 0.2 s). The four cases: ~10 s.
    check_forward(gpu_kern, 65_600, vocab, HIDDEN, temperature, torch.device("cuda"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("vocab,n", [(151_936, 4096), (262_144, 4096), (151_936, 65_600)])
def test_backward_large_vocab(gpu_kern, vocab, n):
    # 3 GEMMs of 2 N V H each in the kernel, the fp32 reference and (on at most 4,096 rows) fp64:
    # N = 4,096: 1.5e13 (V = 151,936) / 2.6e13 (262,144) FLOP each, every row in fp64 (~1 s);
    # N = 65,600: kernel 2.5e14 twice (all rows, then the sampled rows' weight gradient),
    # reference 2.5e14 (~5 s), fp64 1.5e13 (~0.3 s).
    check_backward(gpu_kern, n, vocab, HIDDEN, 0.7, torch.device("cuda"))


@pytest.mark.gpu
@needs_cuda
def test_pg_loss_fp32_matches_torch_path(gpu_kern):
    # fp32 inputs, H = 1,024: 3 x 2 N V H = 1.9e12 FLOP per impl, two impls (~0.1 s)
    check_pg_loss(gpu_kern, 2048, 151_936, 1024, torch.device("cuda"))


@pytest.mark.gpu
@needs_cuda
def test_forward_backward_never_materialises_logits(gpu_kern):
    # kernel forward + backward: 3 x 2 N V H = 6.1e13 FLOP (bf16, ~0.2 s)
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
    # 2 N V H = 5.1e12 FLOP each: kernel, eager bf16 and fp64 on all 4,096 rows (~0.2 s)
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
    check_forward(interp, 40, 300, 64, 0.7, cpu, cfg, oracle_rows=16)  # fp64 on sampled rows
    check_backward(interp, 40, 300, 64, 0.7, cpu, cfg)  # fp64 on every row
    check_backward(interp, 40, 300, 64, 0.7, cpu, cfg, oracle_rows=16)  # + the sampled rows' weight gradient
    check_pg_loss(interp, 40, 300, 64, cpu, cfg)


def test_oracle_rows_sample_the_edges_and_the_16_bit_boundary():
    assert torch.equal(_oracle_rows(4096), torch.arange(4096))
    rows = _oracle_rows(65_600)
    assert rows.numel() == ORACLE_ROWS == rows.unique().numel()
    assert torch.equal(rows, rows.sort().values) and 0 <= rows.min() and rows.max() < 65_600
    assert {0, 65_535, 65_536, 65_599} <= set(rows.tolist())
    assert torch.equal(rows, _oracle_rows(65_600)), "the sample is seeded"
