"""Vocab-parallel helpers shared by the torch reference and the Triton path.

Layout (Megatron's ``VocabParallelEmbedding`` / ``ColumnParallelLinear`` output layer): TP rank
``r`` of ``W`` holds the weight rows ``[r * V_local, (r + 1) * V_local)`` of the (padded) vocabulary,
all shards the same size, and every rank holds the same ``hidden`` rows. Each rank computes its
shard's max, sum-exp and (for the owning shard) target logit; the global values come from
all-reduces over the TP group that the caller passes in.

Gradient convention for a TP group: every rank computes the same (replicated) loss, so

* a sum all-reduce in the forward has an identity backward (``reduce_from_tp``), and
* ``hidden``'s gradient is the sum over shards of each shard's contribution (``copy_to_tp``:
  identity forward, sum all-reduce backward), so every rank receives the full gradient of the
  hidden states. Pass the hidden states *before* any ``copy_to_tensor_model_parallel_region``
  (and all-gathered if sequence parallelism is on), not after, or it is summed twice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def tp_rank_and_size(group) -> tuple[int, int]:
    """(rank in ``group``, size of ``group``); (0, 1) when there is no group."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def vocab_start(local_vocab: int, group) -> int:
    """First global vocabulary id owned by this rank's weight shard."""
    rank, _ = tp_rank_and_size(group)
    return rank * local_vocab


def all_reduce_max_(tensor: torch.Tensor, group) -> torch.Tensor:
    """In-place max all-reduce (no gradient: used only for the log-sum-exp shift)."""
    if tp_rank_and_size(group)[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return tensor


def all_reduce_sum_(tensor: torch.Tensor, group) -> torch.Tensor:
    """In-place sum all-reduce, outside autograd."""
    if tp_rank_and_size(group)[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


class _CopyToTP(torch.autograd.Function):
    """Identity forward; sum all-reduce of the gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum_(grad.contiguous().clone(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """Sum all-reduce forward; identity backward (the loss is replicated on every rank)."""

    @staticmethod
    def forward(ctx, x, group):
        return all_reduce_sum_(x.contiguous().clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    if tp_rank_and_size(group)[1] == 1:
        return x
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    if tp_rank_and_size(group)[1] == 1:
        return x
    return _ReduceFromTP.apply(x, group)
