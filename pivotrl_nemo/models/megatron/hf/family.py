"""What every Hugging Face family of the policy provides (``HFFamily``), and the tensor layouts
they share (megatron's fused QKV <-> HF q/k/v).

One family per ``model.arch`` (``registry.HF_FAMILIES``): ``gpt`` -> Llama / Qwen3 / Qwen3-MoE
(``hf.mapping`` + ``hf.importer``), ``hybrid`` -> Nemotron-H (``hf.nemotron_h``). Import, export,
weight sync and the in-process rollout engine reach a family only through ``hf.mapping`` and
``hf.importer``, which look it up by the config's arch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pivotrl_nemo.config.schema import ModelConfig


def read_hf_tensor(state: Mapping[str, torch.Tensor], key: str, index: int | None = None) -> torch.Tensor:
    """``state[key]``, or its row ``index`` (a 3-D expert tensor's expert), read alone from disk
    when ``state`` has ``get_index`` (``importer.SafetensorsState``)."""
    if index is None:
        return state[key]
    get_index = getattr(state, "get_index", None)
    return get_index(key, index) if callable(get_index) else state[key][index]


@dataclass(frozen=True)
class HFFamily:
    """The Hugging Face twin of one policy architecture family."""

    model_types: tuple[str, ...]
    """transformers ``model_type`` values this family imports."""
    hf_config_for: Callable[..., Any]
    """``(cfg, vocab_size, bos_token_id=, eos_token_id=, pad_token_id=) -> transformers config``
    of the twin computing the same function."""
    to_hf: Callable[[Iterable[tuple[str, torch.Tensor]], ModelConfig], Iterator[tuple[str, torch.Tensor]]]
    """``(global megatron name, full tensor)`` stream -> ``(transformers in-memory name, tensor)``."""
    source: Callable[[Mapping[str, torch.Tensor], ModelConfig], Any]
    """``(HF state, cfg) ->`` a source with ``keys_for(name)``, ``known_keys()``, ``used`` and
    ``__call__(global megatron name) -> full tensor`` (in-memory or on-disk names)."""
    from_hf_config: Callable[[Any, str], ModelConfig]
    """``(transformers config, params_dtype) -> ModelConfig``; raises for what cannot be expressed."""


def split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's fused ``linear_qkv.weight`` -> HF ``(q_proj, k_proj, v_proj)`` weights.

    megatron interleaves per query group: ``[q_g (heads_per_group * d), k_g (d), v_g (d)]`` for
    g = 0..groups-1; HF stacks all q heads, then all k heads, then all v heads.
    """
    groups, d = cfg.num_query_groups, cfg.head_dim
    per_group = cfg.num_attention_heads // groups
    hidden = qkv.shape[-1]
    expected = groups * (per_group + 2) * d
    if qkv.shape[0] != expected:
        raise ValueError(f"linear_qkv rows {qkv.shape[0]} != groups*(heads/group+2)*head_dim = {expected}")
    grouped = qkv.reshape(groups, per_group + 2, d, hidden)
    q = grouped[:, :per_group].reshape(groups * per_group * d, hidden)
    k = grouped[:, per_group].reshape(groups * d, hidden)
    v = grouped[:, per_group + 1].reshape(groups * d, hidden)
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """HF ``q_proj``/``k_proj``/``v_proj`` weights -> megatron's ``linear_qkv.weight``, interleaved
    per query group ``[q_g (heads_per_group * d), k_g (d), v_g (d)]`` (inverse of ``split_qkv``)."""
    groups, d = cfg.num_query_groups, cfg.head_dim
    per_group = cfg.num_attention_heads // groups
    hidden = q.shape[-1]
    if q.shape[0] != groups * per_group * d or k.shape[0] != groups * d or v.shape[0] != groups * d:
        raise ValueError(
            f"q/k/v rows {q.shape[0]}/{k.shape[0]}/{v.shape[0]} do not match "
            f"{cfg.num_attention_heads} heads, {groups} groups, head_dim {d}"
        )
    grouped = torch.cat(
        [q.reshape(groups, per_group, d, hidden), k.reshape(groups, 1, d, hidden), v.reshape(groups, 1, d, hidden)],
        dim=1,
    )
    return grouped.reshape(groups * (per_group + 2) * d, hidden)
