"""Refit a colocated vLLM engine after every optimizer step, without a disk round trip.

Sender (the trainer process, ``VLLMIPCWeightSynchronizer``): megatron tensors -> HF names
(``models.megatron.hf.mapping.megatron_to_hf``) -> vLLM checkpoint names (``to_checkpoint_names``: per-expert
tensors) -> flat aligned buckets on the trainer's GPU (``buckets``) -> for each bucket one
``LLM.collective_rpc("pivotrl_load_bucket", ...)`` carrying the manifest and either a CUDA IPC
handle of the buffer (engine in another process: vLLM's default engine-core process) or the
buffer itself (engine in this process: ``external_launcher`` under torchrun, or
``VLLM_ENABLE_V1_MULTIPROCESSING=0``; CUDA IPC cannot open a handle in the process that made it).
The call is synchronous, so the staging buffer is reused for the next bucket.

Receiver (``VLLMWeightSyncExtension``, mixed into vLLM's GPU worker through
``worker_extension_cls``): rebuilds the buffer, checks the manifest against what this update has
received so far (no name twice), views every tensor (no copy), ``model.load_weights`` them, and at
the end checks that exactly the announced names arrived and that every vLLM parameter was loaded.

Phase transitions belong to the synchronizer: if the engine sleeps (trainer ran), it wakes the
weights only, streams, then wakes the KV cache and resets the prefix cache (cached KV of the old
policy must not be reused). Nothing here imports vLLM or touches CUDA at import time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from ..models.megatron.hf.mapping import megatron_to_hf
from ..utils.logging import get_logger
from .buckets import BucketManifest, PackedBucket, iter_packed_buckets, unpack

log = get_logger(__name__)

WORKER_EXTENSION_CLS = f"{__name__}.VLLMWeightSyncExtension"
"""What ``VLLMRolloutEngine`` passes as ``vllm.LLM(worker_extension_cls=...)``."""

_FUSED_EXPERTS = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<kind>gate_up_proj|down_proj)$")
_FUSED_UNGATED = re.compile(r"^(?P<prefix>.*\.mixer\.experts)\.(?P<kind>up_proj|down_proj)$")  # Nemotron-H


# --------------------------------------------------------------------------- names


def to_checkpoint_names(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """HF in-memory names (transformers 5 fused experts) -> HF checkpoint names, as vLLM loads them.

    ``<p>.mlp.experts.gate_up_proj`` [E, 2I, H] becomes ``<p>.mlp.experts.{e}.gate_proj.weight``
    (rows :I) and ``.up_proj.weight`` (rows I:); ``<p>.mlp.experts.down_proj`` [E, H, I] becomes
    ``<p>.mlp.experts.{e}.down_proj.weight``: the inverse of transformers' own Qwen2/3-MoE
    checkpoint conversion. Nemotron-H's ungated ``<p>.mixer.experts.up_proj`` [E, I, H] /
    ``down_proj`` [E, H, I] become ``<p>.mixer.experts.{e}.up_proj.weight`` / ``down_proj.weight``
    (vLLM maps its ``backbone.`` prefix to ``model.`` itself; written against vLLM 0.33's
    ``nemotron_h.py``, not run until a GPU runs it). Other names pass through. Outputs are views
    (no copies).
    """
    for name, t in named_tensors:
        ungated = _FUSED_UNGATED.match(name)
        if ungated is not None:
            for e in range(t.shape[0]):
                yield f"{ungated['prefix']}.{e}.{ungated['kind']}.weight", t[e]
            continue
        m = _FUSED_EXPERTS.match(name)
        if m is None:
            yield name, t
            continue
        p = m["prefix"]
        if m["kind"] == "gate_up_proj":
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                yield f"{p}.{e}.gate_proj.weight", t[e, :inter]
                yield f"{p}.{e}.up_proj.weight", t[e, inter:]
        else:
            for e in range(t.shape[0]):
                yield f"{p}.{e}.down_proj.weight", t[e]


# --------------------------------------------------------------------------- CUDA IPC on the wire

_REBUILD_ARGS = (
    "tensor_cls",
    "size",
    "stride",
    "tensor_offset",
    "storage_cls",
    "dtype",
    "device",
    "storage_handle",
    "storage_size_bytes",
    "storage_offset_bytes",
    "requires_grad",
    "ref_counter_handle",
    "ref_counter_offset",
    "event_handle",
    "event_sync_required",
)
"""The argument order of ``torch.multiprocessing.reductions.rebuild_cuda_tensor``."""


def ipc_args_to_wire(args: tuple) -> dict[str, Any]:
    """The ``reduce_tensor`` arguments of a 1-D uint8 CUDA buffer as plain data (ints, bytes,
    bools), so any serializer can carry them (no pickled functions or torch classes)."""
    if len(args) != len(_REBUILD_ARGS):
        raise RuntimeError(
            f"torch's CUDA IPC reduction changed ({len(args)} arguments, expected "
            f"{len(_REBUILD_ARGS)}): update pivotrl_nemo.weight_sync.vllm_sync"
        )
    a = dict(zip(_REBUILD_ARGS, args))
    if a["dtype"] != torch.uint8 or len(a["size"]) != 1:
        raise ValueError(f"only 1-D uint8 buffers travel by IPC, got {a['dtype']} {tuple(a['size'])}")
    return {
        "numel": int(a["size"][0]),
        "tensor_offset": int(a["tensor_offset"]),
        "device": int(a["device"]),
        "storage_handle": bytes(a["storage_handle"]),
        "storage_size_bytes": int(a["storage_size_bytes"]),
        "storage_offset_bytes": int(a["storage_offset_bytes"]),
        "ref_counter_handle": bytes(a["ref_counter_handle"]),
        "ref_counter_offset": int(a["ref_counter_offset"]),
        "event_handle": None if a["event_handle"] is None else bytes(a["event_handle"]),
        "event_sync_required": bool(a["event_sync_required"]),
    }


def ipc_args_from_wire(wire: dict[str, Any], device_index: int) -> tuple:
    """Inverse of ``ipc_args_to_wire`` for a receiver that sees the GPU as ``device_index``."""
    return (
        torch.Tensor,
        torch.Size([wire["numel"]]),
        (1,),
        wire["tensor_offset"],
        torch.storage.TypedStorage,
        torch.uint8,
        device_index,
        wire["storage_handle"],
        wire["storage_size_bytes"],
        wire["storage_offset_bytes"],
        False,
        wire["ref_counter_handle"],
        wire["ref_counter_offset"],
        wire["event_handle"],
        wire["event_sync_required"],
    )


def share_cuda_buffer(buffer: torch.Tensor) -> dict[str, Any]:
    """CUDA IPC handle of ``buffer`` (GPU only), keyed by the GPU's UUID."""
    _, args = reduce_tensor(buffer)
    return {device_uuid(buffer.device.index): ipc_args_to_wire(args)}


def open_cuda_buffer(handles: dict[str, dict[str, Any]]) -> torch.Tensor:
    """Rebuild the buffer shared by ``share_cuda_buffer`` in another process (GPU only): the handle
    of the GPU this process sees under the same UUID, mapped to its local device index."""
    for idx in range(torch.cuda.device_count()):
        uuid = device_uuid(idx)
        if uuid in handles:
            return rebuild_cuda_tensor(*ipc_args_from_wire(handles[uuid], idx))
    raise RuntimeError(
        f"none of the shared buffers is on a GPU this process sees ({sorted(handles)}); "
        "colocation needs the trainer rank and its vLLM worker on the same GPU"
    )


def device_uuid(index: int) -> str:
    return str(torch.cuda.get_device_properties(index).uuid)


# --------------------------------------------------------------------------- receiver


class _VLLMModel(Protocol):
    """What the receiver uses of vLLM's model (an ``nn.Module``): its ``load_weights`` returns the
    names of the parameters it set (None for models that do not track them)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[str] | None: ...

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]: ...


class VLLMWeightSyncExtension:
    """Methods mixed into vLLM's GPU worker (``worker_extension_cls``), called through
    ``LLM.collective_rpc``. The worker provides ``self.model_runner`` and ``self.device``.

    Lifecycle of one update: ``pivotrl_begin_update(version)``, any number of
    ``pivotrl_load_bucket(payload)``, ``pivotrl_finish_update(names)``.
    """

    # Declarations only (no class attributes: vLLM refuses an extension that shadows worker names).
    model_runner: Any
    """vLLM's GPU model runner, an attribute of the worker this class is mixed into."""
    device: torch.device
    """The worker's device."""
    _pivotrl_update: dict[str, Any] | None
    """The update in progress (``pivotrl_begin_update``); unset or None between updates."""

    def _pivotrl_model(self) -> _VLLMModel:
        get_model = getattr(self.model_runner, "get_model", None)  # unwraps CUDA-graph wrappers
        return get_model() if callable(get_model) else self.model_runner.model

    def pivotrl_begin_update(self, version: int) -> None:
        self._pivotrl_update = {"version": version, "received": set(), "loaded": set(), "tracks_loaded": True}

    def _pivotrl_state(self) -> dict:
        st = getattr(self, "_pivotrl_update", None)
        if st is None:
            raise RuntimeError("pivotrl_load_bucket before pivotrl_begin_update")
        return st

    def pivotrl_load_bucket(self, payload: dict[str, Any]) -> int:
        """Load one bucket; returns the number of tensors it held."""
        st = self._pivotrl_state()
        man = BucketManifest.from_wire(payload["manifest"])
        dup = st["received"].intersection(man.names)
        if dup or len(set(man.names)) != len(man.names):
            raise RuntimeError(f"weight update {st['version']}: tensors received twice: {sorted(dup)[:5]}")
        buffer = payload["buffer"] if "buffer" in payload else open_cuda_buffer(payload["ipc"])
        loaded = self._pivotrl_model().load_weights(weights=unpack(buffer, man))
        if loaded is None:
            st["tracks_loaded"] = False
        else:
            st["loaded"].update(loaded)
        st["received"].update(man.names)
        if buffer.is_cuda:
            torch.cuda.synchronize(buffer.device)  # done reading before the sender reuses the buffer
        return len(man.names)

    def pivotrl_finish_update(self, names: list[str]) -> dict[str, Any]:
        """Check that exactly ``names`` arrived and every parameter was loaded; finalise the model."""
        st = self._pivotrl_state()
        self._pivotrl_update = None
        expected = set(names)
        missing, extra = expected - st["received"], st["received"] - expected
        if missing or extra:
            raise RuntimeError(
                f"weight update {st['version']}: {len(missing)} tensors missing "
                f"{sorted(missing)[:5]}, {len(extra)} unexpected {sorted(extra)[:5]}"
            )
        model = self._pivotrl_model()
        if st["tracks_loaded"]:
            not_loaded = {n for n, _ in model.named_parameters()} - st["loaded"]
            if not_loaded:
                raise RuntimeError(
                    f"weight update {st['version']}: {len(not_loaded)} engine parameters were "
                    f"not loaded: {sorted(not_loaded)[:5]} (a name mapping gap?)"
                )
        try:
            # lazy and optional: vLLM is a GPU-only extra; this runs inside its worker
            from vllm.model_executor.model_loader.utils import process_weights_after_loading
        except ImportError:  # not inside vLLM (tests)
            pass
        else:
            process_weights_after_loading(model, self.model_runner.model_config, self.device)
        return {"version": st["version"], "tensors": len(st["received"])}


# --------------------------------------------------------------------------- sender


STAGING_BUCKET_CAP = 1 << 30
"""Largest staging bucket (1 GiB): verl and NeMo-RL refit in fixed 0.5-2 GB buckets; a larger one
only delays the KV cache's wake-up without making the copy faster."""


def staging_bucket_bytes(free_bytes: int | None, fraction: float) -> int:
    """Bytes of one staging bucket: ``fraction`` of the free GPU memory, between 64 MiB and
    ``STAGING_BUCKET_CAP``; 512 MiB off the GPU (``free_bytes`` None). A tensor larger than a
    bucket still gets a bucket of its own."""
    if free_bytes is None:
        return 512 << 20
    return min(STAGING_BUCKET_CAP, max(64 << 20, int(free_bytes * fraction)))


class VLLMIPCWeightSynchronizer:
    """The trainer's side of the refit; the loop only calls ``sync_weights()``.

    Lifecycle: construct once the policy and the engine exist; ``init_communicator()`` (nothing to
    set up for IPC); ``sync_weights()`` after every optimizer step (and after a resume); ``shutdown()``.
    ``named_tensors`` yields the policy's full HF-named tensors (default: ``megatron_to_hf`` of
    ``model``, a collective stream that under TP/PP/EP hands every rank every full tensor).
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        model_cfg: Any,
        engine: Any,
        *,
        named_tensors: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None,
        bucket_bytes: int | None = None,
        bucket_memory_fraction: float = 0.3,
    ) -> None:
        if named_tensors is None:

            def named_tensors() -> Iterable[tuple[str, torch.Tensor]]:
                return megatron_to_hf(model, model_cfg)

        self.engine = engine
        self.named_tensors = named_tensors
        self.bucket_bytes = bucket_bytes
        self.bucket_memory_fraction = bucket_memory_fraction
        self.version = 0
        """Number of completed syncs; the engine's weights are the policy's as of sync ``version``."""
        self.last_stats: dict[str, float] = {}
        """Seconds, bytes and buckets of the last sync (weight_sync/*), for the step metrics."""
        self._stale = True

    def init_communicator(self) -> None:
        """Nothing to set up: CUDA IPC needs no process group."""

    def is_stale(self) -> bool:
        """True before the first sync and after ``mark_stale`` until the next sync."""
        return self._stale

    def mark_stale(self) -> None:
        """Record that the policy changed (an optimizer step) and the engine lags behind."""
        self._stale = True

    def _bucket_bytes(self, device: torch.device) -> int:
        if self.bucket_bytes is not None:
            return self.bucket_bytes
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        return staging_bucket_bytes(free, self.bucket_memory_fraction)

    def _payload(self, bucket: PackedBucket) -> dict[str, Any]:
        payload: dict[str, Any] = {"manifest": bucket.manifest.to_wire()}
        if self.engine.in_process or not bucket.buffer.is_cuda:
            payload["buffer"] = bucket.buffer
        else:
            payload["ipc"] = share_cuda_buffer(bucket.buffer)
        return payload

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Stream the policy's weights into the engine; timing and volume go to ``last_stats``."""
        t0 = time.perf_counter()
        self.engine.wake_for_weight_update()
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        bucket_bytes = self._bucket_bytes(device)
        version = self.version + 1
        self.engine.collective_rpc("pivotrl_begin_update", args=(version,))
        names: list[str] = []
        nbytes = buckets = 0
        for b in iter_packed_buckets(to_checkpoint_names(self.named_tensors()), bucket_bytes, device=device):
            if b.buffer.is_cuda:
                torch.cuda.current_stream(b.buffer.device).synchronize()  # copies done before sharing
            self.engine.collective_rpc("pivotrl_load_bucket", args=(self._payload(b),))
            names.extend(b.manifest.names)
            nbytes += b.manifest.nbytes
            buckets += 1
            del b  # the staging buffer must not outlive its bucket
        self.engine.collective_rpc("pivotrl_finish_update", args=(names,))
        if device.type == "cuda":
            # give the staging buffer and the trainer's cached blocks back before the KV cache wakes
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()
        self.engine.finish_weight_update()
        self.version, self._stale = version, False
        secs = time.perf_counter() - t0
        log.info(
            "weight sync v%d: %d tensors, %.1f MiB in %d buckets, %.2f s (%.2f GiB/s)",
            version,
            len(names),
            nbytes / 2**20,
            buckets,
            secs,
            nbytes / 2**30 / max(secs, 1e-9),
        )
        self.last_stats = {
            "weight_sync/seconds": secs,
            "weight_sync/bytes": float(nbytes),
            "weight_sync/buckets": float(buckets),
        }

    def shutdown(self) -> None:
        """Release cached staging memory (the engine is shut down by its owner)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
