"""Data-parallel helpers for the training loop: which slice of a batch this rank owns, and the
few reductions the loss normalisation and the metrics need. A single process is DP size 1 and
every reduction is the identity, so the loop has no special cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    rank: int
    size: int
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's items of a global batch (strided, so shards differ by at most one)."""
        return items[self.rank :: self.size]

    def sum(self, value: float) -> float:
        if self.size == 1:
            return float(value)
        # NCCL groups reduce only CUDA tensors; gloo groups only CPU ones
        device = "cuda" if dist.get_backend(self.group) == "nccl" else "cpu"
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(t, group=self.group)
        return float(t.item())

    def gather(self, values: list) -> list:
        """Concatenate a list from every rank, in rank order."""
        if self.size == 1:
            return list(values)
        out: list = [None] * self.size
        dist.all_gather_object(out, values, group=self.group)
        return [v for part in out for v in part]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.group)


def current_dp() -> DataParallel:
    """The data-parallel group of megatron's parallel_state, or size 1 when not initialized."""
    from megatron.core import parallel_state as ps  # lazy: megatron

    if not (dist.is_available() and dist.is_initialized() and ps.model_parallel_is_initialized()):
        return DataParallel(0, 1)
    group = ps.get_data_parallel_group()
    return DataParallel(ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(), group)


@dataclass(frozen=True)
class ModelParallel:
    """The ranks that hold one replica of the model (TP x PP) and must see the same data."""

    rank: int
    size: int
    group: Any = None

    def broadcast(self, obj: Any) -> Any:
        """``obj`` from model-parallel rank 0, on every rank of the group (pickled)."""
        if self.size == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, 0), group=self.group)
        return box[0]


def current_mp() -> ModelParallel:
    """The model-parallel group of megatron's parallel_state, or size 1 when not initialized."""
    from megatron.core import parallel_state as ps  # lazy: megatron

    if not (dist.is_available() and dist.is_initialized() and ps.model_parallel_is_initialized()):
        return ModelParallel(0, 1)
    group = ps.get_model_parallel_group()
    return ModelParallel(dist.get_rank(group), dist.get_world_size(group), group)
