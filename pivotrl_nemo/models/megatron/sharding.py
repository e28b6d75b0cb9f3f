"""Full (unsharded) megatron tensors <-> this rank's shards, for any TP / PP / EP layout.

The *global name* of a tensor is its name in a single-rank ``GPTModel`` of the same config:
``decoder.layers.{L}`` with the global layer index ``L`` (``layer.layer_number - 1``) and
``mlp.experts.local_experts.{E}`` with the global expert index ``E``. Everything that moves
whole models (Hugging Face import and export, weight sync to the rollout engine, tests that
compare layouts) goes through the two functions here:

* ``load_full_state(model, source)``: each rank asks ``source(global_name)`` for exactly the
  tensors it holds (its layers, its experts) and keeps its slice. Nothing else is read.
* ``iter_full_state(model)``: a collective generator; every rank of the world receives every
  full tensor, one at a time, in the same order (TP all-gather along the partition dim, experts
  all-gathered over the EP group, pipeline stages broadcast in stage order).

How a tensor is split is read from megatron's own parameter attributes
(``tensor_model_parallel``, ``partition_dim``; ``allreduce=False`` marks expert parameters,
which split over the expert-TP group). A tensor made of several blocks along the split dim is
split block by block, so rank r holds ``[block0_r; block1_r; ...]``: a gated MLP's ``linear_fc1``
(``[gate; up]``) and the Mamba mixer's ``in_proj`` (``[z, x, B, C, dt]``) and ``conv1d``
(``[x, B, C]``; megatron's ``partition_sizes`` tag gives the local block sizes).

Besides parameters, the router's ``expert_bias`` buffer (sigmoid routers, Nemotron-H) is part of
the function and moves like a replicated parameter (``FUNCTION_BUFFERS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.local_experts\.(\d+)\.")

BareGPT = Any
"""A bare megatron-core ``GPTModel`` (what ``unwrap`` returns). Typed ``Any``: what is read here
(``decoder.layers[i].layer_number``, ``mlp.local_expert_indices``, ``config``, ``pg_collection``,
megatron's ``partition_dim`` tags on parameters) are attributes set at run time, which
``nn.Module.__getattr__`` would type as ``Tensor | Module``."""


@dataclass(frozen=True)
class Shard:
    """How one local tensor relates to its full tensor."""

    local_name: str
    global_name: str
    partition_dim: int | None
    """Dim split over ``group`` (None: replicated over TP)."""
    blocks: tuple[int, ...] | None
    """Local sizes of the blocks along ``partition_dim`` that are split separately (None: one)."""
    expert: bool
    """An expert weight (split over expert-TP, distributed over EP)."""
    group: Any
    """The TP group it is split over (``tp`` or ``expt_tp``); None when replicated."""


def unwrap(model: Any) -> BareGPT:
    """The bare ``GPTModel`` inside DDP / Float16Module / ``MegatronPolicy``."""
    if hasattr(model, "gpt"):
        return model.gpt
    while hasattr(model, "module"):
        model = model.module
    return model


def _pg(gpt: BareGPT) -> Any:
    pg = getattr(gpt, "pg_collection", None)
    if pg is None:
        from megatron.core.process_groups_config import ProcessGroupCollection  # lazy: megatron

        pg = ProcessGroupCollection.use_mpu_process_groups()
    return pg


def _size(group: Any) -> int:
    return 1 if group is None else group.size()


def layer_offset(gpt: BareGPT) -> int:
    """Global index of this pipeline stage's first layer."""
    layers = gpt.decoder.layers
    return int(layers[0].layer_number) - 1 if len(layers) else 0


def global_name(gpt: BareGPT, local_name: str) -> str:
    """The single-rank name of local tensor ``local_name`` (global layer and expert indices)."""
    name = local_name
    m = _LAYER.match(name)
    if m:
        local_layer = int(m.group(1))
        layer = gpt.decoder.layers[local_layer]
        name = f"decoder.layers.{int(layer.layer_number) - 1}." + name[m.end() :]
        e = _EXPERT.search(name)
        if e:
            experts = layer.mlp.local_expert_indices
            name = name[: e.start()] + f".local_experts.{experts[int(e.group(1))]}." + name[e.end() :]
    return name


FUNCTION_BUFFERS = ("mlp.router.expert_bias",)
"""Buffers (name suffixes) that are weights of the function: moved, imported and exported with
the parameters."""


def named_tensors(gpt: BareGPT) -> dict[str, torch.Tensor]:
    """This rank's parameters and ``FUNCTION_BUFFERS``, by local name."""
    out: dict[str, torch.Tensor] = dict(gpt.named_parameters())
    out.update({n: b for n, b in gpt.named_buffers() if n.endswith(FUNCTION_BUFFERS)})
    return out


def _blocks(name: str, p: torch.Tensor, glu: bool) -> tuple[int, ...] | None:
    sizes = getattr(p, "partition_sizes", None)
    if sizes is not None:
        return tuple(int(x) for x in sizes)
    if glu and name.endswith("linear_fc1.weight"):
        half = p.shape[int(getattr(p, "partition_dim", 0))] // 2
        return (half, half)
    return None


def shards(model: Any) -> list[Shard]:
    """One ``Shard`` per parameter (and function buffer) of this rank (tied output weights on
    later stages excluded)."""
    gpt = unwrap(model)
    pg = _pg(gpt)
    glu = bool(gpt.config.gated_linear_unit)
    out = []
    tensors: dict[str, Any] = named_tensors(gpt)  # Any: megatron's partition tags are run-time attributes
    for name, p in tensors.items():
        if name == "output_layer.weight" and getattr(gpt, "share_embeddings_and_output_weights", False):
            continue  # the tied copy on the last stage: the embedding is the tensor
        expert = getattr(p, "allreduce", True) is False
        split = bool(getattr(p, "tensor_model_parallel", False))
        group = (pg.expt_tp if expert else pg.tp) if split else None
        dim = int(p.partition_dim) if split else None
        out.append(
            Shard(
                name,
                global_name(gpt, name),
                dim,
                _blocks(name, p, glu) if split else None,
                expert,
                group if _size(group) > 1 else None,
            )
        )
    return out


def slice_full(full: torch.Tensor, shard: Shard) -> torch.Tensor:
    """This rank's piece of ``full`` (the inverse of ``_gather_tp``)."""
    if shard.group is None or shard.partition_dim is None:
        return full
    size, rank, d = shard.group.size(), shard.group.rank(), shard.partition_dim
    if shard.blocks:
        parts = full.split([b * size for b in shard.blocks], dim=d)
        return torch.cat([part.chunk(size, dim=d)[rank] for part in parts], dim=d)
    return full.chunk(size, dim=d)[rank]


@torch.no_grad()
def load_full_state(model: Any, source: Callable[[str], torch.Tensor]) -> int:
    """Copy every local parameter's slice of ``source(global_name)`` into the model; returns the
    number of tensors set. The tied output weight of a last pipeline stage takes the embedding."""
    gpt = unwrap(model)
    params = named_tensors(gpt)
    n = 0
    for s in shards(gpt):
        p = params[s.local_name]
        piece = slice_full(source(s.global_name), s)
        if piece.shape != p.shape:
            raise ValueError(
                f"{s.global_name}: full tensor gives a {tuple(piece.shape)} slice, this rank holds "
                f"{tuple(p.shape)} ({s.local_name})"
            )
        p.copy_(piece.to(p.dtype))
        n += 1
    if getattr(gpt, "share_embeddings_and_output_weights", False) and gpt.post_process and not gpt.pre_process:
        w = gpt.output_layer.weight
        w.copy_(
            slice_full(
                source("embedding.word_embeddings.weight"),
                Shard(
                    "output_layer.weight",
                    "embedding.word_embeddings.weight",
                    0,
                    None,
                    False,
                    _pg(gpt).tp if _pg(gpt).tp.size() > 1 else None,
                ),
            ).to(w.dtype)
        )
    return n


def _gather_tp(local: torch.Tensor, shard: Shard) -> torch.Tensor:
    if shard.group is None or shard.partition_dim is None:
        return local
    parts = [torch.empty_like(local) for _ in range(shard.group.size())]
    dist.all_gather(parts, local.contiguous(), group=shard.group)
    d = shard.partition_dim
    if shard.blocks:
        per_rank = [p.split(list(shard.blocks), dim=d) for p in parts]
        return torch.cat([r[i] for i in range(len(shard.blocks)) for r in per_rank], dim=d)
    return torch.cat(parts, dim=d)


def _expert_fanout(gpt: BareGPT, s: Shard, ep: Any) -> list[str]:
    """Global names of the EP ranks' copies of expert tensor ``s`` (rank order)."""
    expert, layer = _EXPERT.search(s.local_name), _LAYER.match(s.local_name)
    # an expert parameter is always decoder.layers.{L}.mlp.experts.local_experts.{E}.*
    assert expert is not None and layer is not None, s.local_name
    local_idx = int(expert.group(1))
    n_local = len(gpt.decoder.layers[int(layer.group(1))].mlp.local_expert_indices)
    return [_EXPERT.sub(f".local_experts.{r * n_local + local_idx}.", s.global_name, count=1) for r in range(ep.size())]


def _ep_group(gpt: BareGPT) -> Any:
    ep = getattr(_pg(gpt), "ep", None)
    return ep if _size(ep) > 1 else None


def _stage_meta(gpt: BareGPT) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(global name, full shape, dtype) of what ``_stage_tensors`` yields, in order, without
    communicating."""
    params = named_tensors(gpt)
    ep = _ep_group(gpt)
    out: list[tuple[str, tuple[int, ...], torch.dtype]] = []
    for s in shards(gpt):
        p = params[s.local_name]
        shape = list(p.shape)
        if s.group is not None and s.partition_dim is not None:
            shape[s.partition_dim] *= s.group.size()
        names = _expert_fanout(gpt, s, ep) if s.expert and ep is not None else [s.global_name]
        out.extend((n, tuple(shape), p.dtype) for n in names)
    return out


def _stage_tensors(gpt: BareGPT) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's full tensors (collective over TP and EP), in ``_stage_meta`` order."""
    params = named_tensors(gpt)
    ep = _ep_group(gpt)
    for s in shards(gpt):
        full = _gather_tp(params[s.local_name].detach(), s)
        if s.expert and ep is not None:
            parts = [torch.empty_like(full) for _ in range(ep.size())]
            dist.all_gather(parts, full.contiguous(), group=ep)
            yield from zip(_expert_fanout(gpt, s, ep), parts)
        else:
            yield s.global_name, full


def full_state_names(model: Any) -> list[str]:
    """Global names ``iter_full_state`` yields, in order (a collective under PP)."""
    return [n for n, _, _ in _all_meta(unwrap(model))]


def _all_meta(gpt: BareGPT) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    pp = _pg(gpt).pp
    meta = _stage_meta(gpt)
    if _size(pp) == 1:
        return meta
    every: list[Any] = [None] * pp.size()
    dist.all_gather_object(every, meta, group=pp)
    return [m for stage in every for m in stage]


def iter_full_state(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every full tensor of the model, on every rank, stage by stage (a collective: all ranks
    must drain the generator). Streams: one full tensor exists at a time per rank (plus what the
    consumer keeps). Tensors live on the model's device."""
    gpt = unwrap(model)
    pp = _pg(gpt).pp
    if _size(pp) == 1:
        yield from _stage_tensors(gpt)
        return
    every: list[Any] = [None] * pp.size()
    dist.all_gather_object(every, _stage_meta(gpt), group=pp)
    device = next(gpt.parameters()).device
    ranks = dist.get_process_group_ranks(pp)
    mine = _stage_tensors(gpt)  # TP/EP collectives involve only this stage's ranks
    for stage, meta in enumerate(every):
        for name, shape, dtype in meta:
            if stage == pp.rank():
                got, t = next(mine)
                assert got == name, (got, name)
                t = t.contiguous()
            else:
                t = torch.empty(shape, dtype=dtype, device=device)
            dist.broadcast(t, src=ranks[stage], group=pp)
            yield name, t
