"""Weight buckets (pivotrl_nemo.weight_sync.buckets) on the CPU: exact round trips, layout rules."""

from __future__ import annotations

import json

import pytest
import torch

from pivotrl_nemo.weight_sync.buckets import ALIGN, BucketManifest, iter_packed_buckets, pack_into, plan_buckets, unpack


def _mixed() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("model.embed_tokens.weight", torch.randn(33, 16, generator=g).to(torch.bfloat16)),
        ("model.layers.0.self_attn.q_proj.weight", torch.randn(16, 16, generator=g)),
        ("model.layers.0.mlp.gate.weight", torch.randn(4, 16, generator=g).half()),
        ("model.layers.0.input_layernorm.weight", torch.randn(7, generator=g, dtype=torch.float64)),
        ("counts", torch.arange(5, dtype=torch.int64)),
        ("mask", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(3.5)),
        ("model.layers.0.mlp.experts.gate_up_proj", torch.randn(4, 2, 16, generator=g).to(torch.bfloat16)),
        ("empty", torch.empty(0, 3)),
    ]


def _roundtrip(named, bucket_bytes, reuse):
    got = {}
    buckets = []
    for b in iter_packed_buckets(iter(named), bucket_bytes, reuse_buffer=reuse):
        buckets.append(b.manifest)
        # consume before advancing (the staging buffer is reused); clone what we keep
        for name, view in unpack(b.buffer, BucketManifest.from_wire(json.loads(json.dumps(b.manifest.to_wire())))):
            got[name] = view.clone()
    return got, buckets


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("bucket_bytes", [256, 1024, 4096, 1 << 20])
def test_roundtrip_is_exact_for_mixed_dtypes(bucket_bytes, reuse):
    named = _mixed()
    got, buckets = _roundtrip(named, bucket_bytes, reuse)
    assert list(got) == [n for n, _ in named]
    for name, t in named:
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        # bit-exact (NaN-safe): compare the bytes
        assert torch.equal(got[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
    # every tensor aligned; order preserved across buckets
    assert [s.name for m in buckets for s in m.specs] == [n for n, _ in named]
    assert all(s.offset % ALIGN == 0 for m in buckets for s in m.specs)


def test_bucket_size_respected_and_oversized_tensor_alone():
    named = [(f"w{i}", torch.full((64,), float(i))) for i in range(10)]  # 256 B each
    named.insert(4, ("big", torch.ones(1000)))  # 4000 B > bucket
    buckets = plan_buckets(((n, t.shape, t.dtype) for n, t in named), bucket_bytes=1024)
    for m in buckets:
        if m.names == ["big"]:
            assert m.nbytes == 4000
        else:
            assert "big" not in m.names and m.nbytes <= 1024
    assert [m.names for m in buckets] == [["w0", "w1", "w2", "w3"], ["big"], ["w4", "w5", "w6", "w7"], ["w8", "w9"]]
    streamed = [b.manifest.names for b in iter_packed_buckets(named, 1024)]
    assert streamed == [m.names for m in buckets]
    for b in iter_packed_buckets(named, 1024):
        assert b.buffer.numel() == b.manifest.nbytes


def test_views_alias_the_buffer_and_noncontiguous_inputs_pack():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous
    (m,) = plan_buckets([("t", t.shape, t.dtype)], 1024)
    buf = pack_into(torch.zeros(1024, dtype=torch.uint8), m, [t])
    ((name, view),) = unpack(buf, m)
    assert torch.equal(view, t)
    buf[:4] = 0  # a view, not a copy
    assert view[0, 0].item() == 0.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="appears twice"):
        list(iter_packed_buckets([("a", torch.ones(2)), ("a", torch.ones(2))], 1024))
    (m,) = plan_buckets([("a", (2,), torch.float32)], 1024)
    with pytest.raises(ValueError, match="a: expected float32"):
        pack_into(torch.zeros(1024, dtype=torch.uint8), m, [torch.ones(3)])
    with pytest.raises(ValueError, match="at least"):
        pack_into(torch.zeros(4, dtype=torch.uint8), m, [torch.ones(2)])
    with pytest.raises(TypeError, match="cannot be sent"):
        plan_buckets([("c", (2,), torch.complex64)], 1024)


def test_staging_bucket_is_capped_for_the_kv_cache():
    from pivotrl_nemo.weight_sync.vllm_sync import STAGING_BUCKET_CAP, staging_bucket_bytes

    # 30% of 80 GiB free would be a 24 GiB staging buffer held while the KV cache wakes: capped
    assert staging_bucket_bytes(80 << 30, 0.3) == STAGING_BUCKET_CAP == 1 << 30
    assert staging_bucket_bytes(1 << 30, 0.3) == int((1 << 30) * 0.3)
    assert staging_bucket_bytes(10 << 20, 0.3) == 64 << 20  # a floor: tiny buckets cost a round trip each
    assert staging_bucket_bytes(None, 0.3) == 512 << 20
