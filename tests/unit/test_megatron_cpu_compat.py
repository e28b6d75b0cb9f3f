"""The megatron-core CPU compatibility layer: every patch target is unchanged, every patch works.

``test_patch_targets_unchanged`` is the upgrade guard: it fails when a megatron-core release
removes a patched symbol or changes its signature or source, so the patch gets reviewed.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from pivotrl_nemo.config.schema import ParallelConfig
from pivotrl_nemo.distributed import cpu_compat
from pivotrl_nemo.distributed.setup import destroy, init_distributed

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="patches apply only without CUDA")


@pytest.fixture(scope="module")
def dist_ctx():
    ctx = init_distributed(ParallelConfig(), seed=0)
    yield ctx
    destroy()


def test_patch_targets_unchanged():
    problems = cpu_compat.check_patch_targets()
    assert problems == [], "megatron-core/torch changed under cpu_compat; review it:\n" + "\n".join(problems)


def test_guard_detects_changed_and_missing_targets(monkeypatch):
    import dataclasses

    spec = cpu_compat.PATCHES[1]
    fakes = (
        dataclasses.replace(spec, source_sha256="0" * 16),
        dataclasses.replace(spec, signature="(x)"),
        dataclasses.replace(spec, name="no_such_symbol"),
    )
    monkeypatch.setattr(cpu_compat, "PATCHES", fakes)
    monkeypatch.setattr(cpu_compat, "WATCHED", ())
    problems = cpu_compat.check_patch_targets()
    assert len(problems) == 3
    assert "source sha256" in problems[0] and "signature" in problems[1] and "missing" in problems[2]


def test_every_patch_has_a_replacement():
    keys = {(s.owner, s.name) for s in cpu_compat.PATCHES}
    assert keys == set(cpu_compat._replacements())
    for spec in cpu_compat.PATCHES + cpu_compat.WATCHED:
        if spec.name in cpu_compat.MAMBA_PLACEHOLDERS:  # checked by what they hold, call sites WATCHED
            assert spec.source_sha256 is None, spec
        elif spec.owner.startswith("megatron"):
            assert spec.source_sha256 is not None, spec
            assert spec.signature is not None or inspect.isfunction(cpu_compat._original(spec)), spec


def test_mamba_placeholders_are_guarded(monkeypatch):
    """A megatron-core that binds the Mamba kernels to something else fails the check loudly."""
    import megatron.core.ssm.mamba_mixer as mixer

    spec = next(s for s in cpu_compat.PATCHES if s.name == "mamba_chunk_scan_combined")
    if any(r.name == spec.name for r in cpu_compat.applied_patches()):
        monkeypatch.setattr(cpu_compat, "_APPLIED", [r for r in cpu_compat._APPLIED if r.name != spec.name])
    monkeypatch.setattr(mixer, "mamba_chunk_scan_combined", lambda *a, **k: None)
    assert any("mamba_chunk_scan_combined" in p for p in cpu_compat.check_patch_targets())


@needs_cpu_only
def test_apply_is_idempotent_and_recorded():
    assert cpu_compat.apply_cpu_compat() is True
    n = len(cpu_compat.applied_patches())
    assert cpu_compat.apply_cpu_compat() is True
    applied = cpu_compat.applied_patches()
    assert len(applied) == n == len(cpu_compat.PATCHES)
    for rec in applied:
        assert getattr(cpu_compat._resolve_owner(rec.owner), rec.name) is rec.replacement
        assert rec.original is not rec.replacement


@needs_cpu_only
def test_rng_tracker_keeps_cpu_states(dist_ctx):
    from megatron.core import tensor_parallel

    def draw():
        tensor_parallel.model_parallel_cuda_manual_seed(7)
        torch.manual_seed(3)
        with tensor_parallel.get_cuda_rng_tracker().fork():
            forked = torch.randn(4)
        after = torch.randn(4)
        return forked, after

    f1, a1 = draw()
    f2, a2 = draw()
    assert torch.equal(f1, f2) and torch.equal(a1, a2)
    torch.manual_seed(3)
    assert torch.equal(a1, torch.randn(4)), "fork must restore the default CPU generator"
    assert not torch.equal(f1, a1)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    assert type(tracker).__name__ == "CpuRNGStatesTracker"
    assert {"model-parallel-rng", "expert-parallel-rng", "data-parallel-rng"} <= set(tracker.get_states())


@needs_cpu_only
def test_global_memory_buffer_and_causal_mask_on_cpu(dist_ctx):
    from megatron.core import parallel_state
    from megatron.core.fusions import fused_softmax

    buf = parallel_state.get_global_memory_buffer().get_tensor((2, 3), torch.float32, "t")
    assert buf.device.type == "cpu" and buf.shape == (2, 3)
    mask = fused_softmax.get_default_causal_mask(3)
    assert mask.device.type == "cpu"
    assert torch.equal(mask, torch.tensor([[False, True, True], [False, False, True], [False, False, False]]))


@needs_cpu_only
def test_cuda_stream_stand_ins():
    cpu_compat.apply_cpu_compat()
    assert torch.cuda.current_device() == torch.device("cpu")
    s = torch.cuda.Stream(device="cuda")
    e = torch.cuda.Event()
    with torch.cuda.stream(s):
        x = torch.ones(3)
    s.wait_stream(torch.cuda.current_stream())
    e.record(s)
    e.wait()
    torch.cuda.synchronize()
    x.record_stream(torch.cuda.current_stream())
    assert s.query() and e.query()


@needs_cpu_only
def test_maybe_move_tensor_to_cpu_numpy():
    cpu_compat.apply_cpu_compat()
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    t = torch.tensor([1, 2, 3])
    out = moe_utils.maybe_move_tensor_to_cpu(t, as_numpy=True)
    assert isinstance(out, np.ndarray) and out.tolist() == [1, 2, 3]
    assert token_dispatcher.maybe_move_tensor_to_cpu is moe_utils.maybe_move_tensor_to_cpu
    assert moe_utils.maybe_move_tensor_to_cpu(t) is t


@needs_cpu_only
def test_cuda_to_cpu_mode():
    cpu_compat.apply_cpu_compat()
    with cpu_compat.cuda_to_cpu():
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"
        assert torch.ones(2).cuda().device.type == "cpu"
        assert torch.ones(2).to("cuda").device.type == "cpu"
        assert torch.ones(2).to(device="cuda").dtype == torch.float32
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device="cuda")


@needs_cpu_only
def test_clip_grad_without_cuda_assert():
    cpu_compat.apply_cpu_compat()
    from megatron.core.optimizer import optimizer as mopt

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 2.0)  # norm 4
    mopt.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
    assert torch.allclose(p.grad.norm(), torch.tensor(1.0), atol=1e-5)
    q = torch.nn.Parameter(torch.zeros(4))
    q.grad = torch.full((4,), 0.1)
    mopt.clip_grad_by_total_norm_fp32([q], max_norm=1.0, total_norm=0.2)
    assert torch.allclose(q.grad, torch.full((4,), 0.1))
