"""The vocab-parallel log-prob path with TP=2 over gloo: two CPU processes, each holding half of
the lm-head rows, must reproduce the single-process (TP=1) reference exactly to 1e-5 -- log-probs,
entropies, the loss and its metrics, the full hidden gradient on every rank and each rank's slice
of the weight gradient -- for the torch path and for the Triton kernels under the interpreter.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _import_kernels():
    return importlib.import_module("pivotrl_nemo.kernels")


def _case(n=26, h=32, v=150, seed=0):
    """Same tensors on every rank (fixed seed); v is even so that both shards are equal."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.3
    targets = torch.randint(0, v, (n,), generator=g)
    targets[:4] = torch.tensor([0, v // 2 - 1, v // 2, v - 1])  # both sides of the shard boundary
    mask = (torch.rand(n, generator=g) > 0.3).float()
    base = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    old = base + 0.3 * torch.randn(n, generator=g)
    ref = base + 0.2 * torch.randn(n, generator=g)
    adv = torch.randn(n, generator=g)
    return hidden, weight, targets, mask, old, ref, adv


def _run(kern, hidden, weight, targets, mask, old, ref, adv, impl, tp_group):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out, lp, ent = kern.fused_pg_loss(h, w, targets, adv, old, mask, 40.0, 0.2, 0.28, kl_coef=0.05,
                                      ref_logprobs=ref, temperature=0.8, tp_group=tp_group, impl=impl)
    (out.loss + 0.01 * (ent * mask).sum()).backward()  # the entropy gradient crosses shards too
    return out, lp.detach(), ent.detach(), h.grad, w.grad


def _worker(rank: int, init_file: str, impls: list[str]):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        kern = _import_kernels()
        hidden, weight, targets, mask, old, ref, adv = _case()
        v_local = weight.shape[0] // WORLD
        rows = slice(rank * v_local, (rank + 1) * v_local)
        expect = _run(kern, hidden, weight, targets, mask, old, ref, adv, "torch", None)  # TP=1, full W
        group = dist.new_group(list(range(WORLD)))
        for impl in impls:
            out, lp, ent, gh, gw = _run(kern, hidden, weight[rows], targets, mask, old, ref, adv, impl, group)
            e_out, e_lp, e_ent, e_gh, e_gw = expect
            tol = dict(rtol=1e-5, atol=1e-5)
            for name in ("loss", "pg_loss", "kl", "clip_fraction", "ratio_min", "ratio_max"):
                torch.testing.assert_close(getattr(out, name), getattr(e_out, name), **tol,
                                           msg=lambda m, n=name: f"{impl} rank {rank} {n}: {m}")
            torch.testing.assert_close(lp, e_lp, **tol, msg=lambda m: f"{impl} rank {rank} logprobs: {m}")
            torch.testing.assert_close(ent, e_ent, **tol, msg=lambda m: f"{impl} rank {rank} entropy: {m}")
            torch.testing.assert_close(gh, e_gh, rtol=1e-5, atol=1e-5 * e_gh.abs().max().item(),
                                       msg=lambda m: f"{impl} rank {rank} grad hidden: {m}")
            torch.testing.assert_close(gw, e_gw[rows], rtol=1e-5, atol=1e-5 * e_gw.abs().max().item(),
                                       msg=lambda m: f"{impl} rank {rank} grad weight shard: {m}")
            assert (lp <= 0).all()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_vocab_parallel_tp2_matches_tp1(tmp_path, monkeypatch):
    # The interpreter is chosen when triton is imported: the spawned workers start fresh and
    # inherit this environment (monkeypatch restores the parent's afterwards).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path / "gloo_init"), ["torch", "triton"]), nprocs=WORLD, join=True)
