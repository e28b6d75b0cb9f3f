"""Pack named tensors into flat, aligned byte buffers ("buckets") and unpack them into views.

The transport of a weight refresh: instead of one transfer per parameter (catastrophically slow
for MoE models with thousands of expert tensors), tensors are copied into a few large ``uint8``
buffers, each described by a manifest, and the receiver rebuilds every tensor as a view into the
buffer, with no copy. Pure torch, device-agnostic: the same code packs on the GPU for CUDA IPC and
on the CPU in tests.

Layout: tensor ``i`` of a bucket starts at ``offset_i`` (a multiple of ``ALIGN`` bytes, so every
view is aligned for any dtype and for vectorised loads) and occupies ``numel * itemsize`` bytes;
``BucketManifest.nbytes`` is the end of the last tensor. A bucket holds as many tensors, in input
order, as fit in ``bucket_bytes``; a tensor larger than that gets a bucket of its own, sized for
it. Manifests are plain data (``to_wire`` / ``from_wire``: str, int, lists) so they cross process
boundaries with any serializer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

ALIGN = 256
"""Byte alignment of every tensor inside a bucket (CUDA allocations are 256-byte aligned)."""

_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    )
}


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise TypeError(f"dtype {dtype} cannot be sent through weight buckets (supported: {sorted(_DTYPES)})")
    return name


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise TypeError(f"unknown dtype name {name!r} in a bucket manifest") from None


def aligned(nbytes: int, align: int = ALIGN) -> int:
    return (nbytes + align - 1) // align * align


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lives in its bucket."""

    name: str
    dtype: str
    """torch dtype name without the ``torch.`` prefix, e.g. ``bfloat16``."""
    shape: tuple[int, ...]
    offset: int
    """Byte offset of the first element in the bucket (a multiple of ``ALIGN``)."""

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * dtype_from_name(self.dtype).itemsize


@dataclass
class BucketManifest:
    """The tensors of one bucket, in packing order, and the bytes they span."""

    specs: list[TensorSpec] = field(default_factory=list)
    nbytes: int = 0
    """End of the last tensor: the bytes a receiver must read."""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def to_wire(self) -> dict:
        return {"nbytes": self.nbytes, "specs": [[s.name, s.dtype, list(s.shape), s.offset] for s in self.specs]}

    @classmethod
    def from_wire(cls, wire: dict) -> BucketManifest:
        return cls(
            [TensorSpec(n, d, tuple(int(x) for x in shp), int(o)) for n, d, shp, o in wire["specs"]],
            int(wire["nbytes"]),
        )


def plan_buckets(
    tensors: Iterable[tuple[str, torch.Size | tuple[int, ...], torch.dtype]], bucket_bytes: int, align: int = ALIGN
) -> list[BucketManifest]:
    """Assign ``(name, shape, dtype)`` in order to buckets of at most ``bucket_bytes`` (see module doc)."""
    if bucket_bytes < align:
        raise ValueError(f"bucket_bytes ({bucket_bytes}) must be at least the alignment ({align})")
    buckets: list[BucketManifest] = []
    cur = BucketManifest()
    seen: set[str] = set()
    for name, shape, dtype in tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice in one weight update")
        seen.add(name)
        spec = TensorSpec(name, dtype_name(dtype), tuple(int(s) for s in shape), 0)
        start = aligned(cur.nbytes, align)
        if cur.specs and start + spec.nbytes > bucket_bytes:
            buckets.append(cur)
            cur, start = BucketManifest(), 0
        cur.specs.append(TensorSpec(spec.name, spec.dtype, spec.shape, start))
        cur.nbytes = start + spec.nbytes
    if cur.specs:
        buckets.append(cur)
    return buckets


def pack_into(buffer: torch.Tensor, manifest: BucketManifest, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Copy ``tensors`` (in manifest order) into ``buffer`` (uint8, >= manifest.nbytes); returns
    ``buffer[:manifest.nbytes]``. Copies are asynchronous on CUDA; synchronise before sharing."""
    if buffer.dtype != torch.uint8 or buffer.dim() != 1 or buffer.numel() < manifest.nbytes:
        raise ValueError(
            f"buffer must be 1-D uint8 with at least {manifest.nbytes} bytes, got {buffer.dtype} {tuple(buffer.shape)}"
        )
    for spec, t in zip(manifest.specs, tensors, strict=True):
        if tuple(t.shape) != spec.shape or dtype_name(t.dtype) != spec.dtype:
            raise ValueError(f"{spec.name}: expected {spec.dtype}{list(spec.shape)}, got {t.dtype}{list(t.shape)}")
        view = buffer[spec.offset : spec.offset + spec.nbytes]
        view.copy_(t.detach().contiguous().reshape(-1).view(torch.uint8), non_blocking=True)
    return buffer[: manifest.nbytes]


def unpack(buffer: torch.Tensor, manifest: BucketManifest) -> list[tuple[str, torch.Tensor]]:
    """Views (no copies) of every tensor of ``manifest`` inside ``buffer``."""
    if buffer.dtype != torch.uint8 or buffer.numel() < manifest.nbytes:
        raise ValueError(
            f"bucket buffer too small or not uint8: {buffer.dtype} {buffer.numel()} bytes, "
            f"manifest needs {manifest.nbytes}"
        )
    out = []
    for s in manifest.specs:
        out.append((s.name, buffer[s.offset : s.offset + s.nbytes].view(dtype_from_name(s.dtype)).view(s.shape)))
    return out


@dataclass
class PackedBucket:
    """A filled bucket: ``buffer`` (uint8, exactly ``manifest.nbytes`` long) and its manifest."""

    buffer: torch.Tensor
    manifest: BucketManifest


def iter_packed_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    bucket_bytes: int,
    device: torch.device | str | None = None,
    reuse_buffer: bool = True,
    align: int = ALIGN,
) -> Iterator[PackedBucket]:
    """Stream ``(name, tensor)`` into packed buckets on ``device`` (default: each tensor's own).

    Tensors are consumed lazily (a megatron -> HF conversion can yield them one at a time, so
    at most one bucket of converted tensors is alive). With ``reuse_buffer`` one staging buffer
    of ``bucket_bytes`` is reused: each bucket is valid only until the iterator advances (the
    synchronous refit consumes it before asking for the next); oversized tensors always get a
    buffer of their own.
    """
    staging: torch.Tensor | None = None
    pending: list[tuple[str, torch.Tensor]] = []
    used = 0
    seen: set[str] = set()

    def flush() -> PackedBucket:
        nonlocal staging
        man = plan_buckets(((n, t.shape, t.dtype) for n, t in pending), max(bucket_bytes, used), align)
        assert len(man) == 1
        dev = device if device is not None else pending[0][1].device
        if man[0].nbytes > bucket_bytes or not reuse_buffer:
            buf = torch.empty(man[0].nbytes, dtype=torch.uint8, device=dev)
        else:
            if staging is None or staging.device != torch.device(dev):
                staging = torch.empty(bucket_bytes, dtype=torch.uint8, device=dev)
            buf = staging
        return PackedBucket(pack_into(buf, man[0], [t for _, t in pending]), man[0])

    for name, t in named_tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice in one weight update")
        seen.add(name)
        nbytes = t.numel() * t.element_size()
        start = aligned(used, align)
        if pending and start + nbytes > bucket_bytes:
            yield flush()
            pending, used, start = [], 0, 0
        pending.append((name, t))
        used = start + nbytes
    if pending:
        yield flush()
