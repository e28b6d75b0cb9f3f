"""megatron-core policy -> a Hugging Face checkpoint folder (``from_pretrained``-loadable).

``export_hf(policy_or_model, cfg, tokenizer, out_dir)`` writes ``model.safetensors`` (sharded by
transformers when large), ``config.json``, ``generation_config.json`` and the tokenizer files.

The tensors come from ``weight_sync.hf_mapping.megatron_to_hf``, the same gather path that
feeds weight sync, so an exported checkpoint and a synced rollout engine hold the same weights.
Its names are transformers' *in-memory* ones (Qwen3-MoE: fused 3-D experts); rather than
re-implementing transformers' on-disk conversion (per-expert ``experts.{e}.gate_proj`` ...),
the tensors are loaded into the HF twin (``hf_config_for``) with ``load_named_tensors_into`` and
written by ``save_pretrained(safe_serialization=True)``, which owns the on-disk format.

Writes are atomic: everything goes to ``<out>.tmp.<pid>`` next to ``out_dir`` and is renamed
into place, so a kill leaves either no folder, or the previous export (``overwrite=True``), or
the complete new one. Single rank (TP=PP=EP=1); with model parallelism every rank must run
``megatron_to_hf`` with a collective ``gather`` and only rank 0 writes (later work).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.weight_sync.hf_mapping import Gather, hf_config_for, local_gather, megatron_to_hf

logger = get_logger(__name__)


def _megatron_module(policy_or_model: Any) -> torch.nn.Module:
    """The GPTModel (or its DDP wrapper) behind a ``MegatronPolicy`` or a bare model."""
    model = getattr(policy_or_model, "model", None)
    return policy_or_model if model is None else model


def _vocab_size(model: torch.nn.Module) -> int:
    gpt = model
    while hasattr(gpt, "module") and not hasattr(gpt, "decoder"):
        gpt = gpt.module
    return int(gpt.embedding.word_embeddings.weight.shape[0])


def hf_model_from_megatron(
    policy_or_model: Any, cfg: ModelConfig, tokenizer: Any = None, gather: Gather = local_gather
) -> Any:
    """The HF twin (``hf_config_for``) on the CPU holding the policy's current weights.

    Token ids (bos/eos/pad) come from ``tokenizer``; the generation config stops at the end of
    an assistant turn (``rollout.tokenizer.end_of_turn_token_ids``).
    """
    from transformers import AutoModelForCausalLM

    from pivotrl_nemo.models.megatron.build import params_dtype
    from pivotrl_nemo.weight_sync.base import load_named_tensors_into

    model = _megatron_module(policy_or_model)
    ids: dict[str, Any] = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    hf_config = hf_config_for(cfg, _vocab_size(model), **ids)
    hf = AutoModelForCausalLM.from_config(hf_config, dtype=params_dtype(cfg))
    hf.eval()
    hf.requires_grad_(False)
    n = load_named_tensors_into(hf, ((k, v.detach().cpu()) for k, v in megatron_to_hf(model, cfg, gather)))
    logger.debug("loaded %d tensors into the HF twin for export", n)
    if tokenizer is not None:
        from pivotrl_nemo.rollout.tokenizer import end_of_turn_token_ids

        stops = end_of_turn_token_ids(tokenizer)
        if stops:
            hf.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
        hf.generation_config.pad_token_id = tokenizer.pad_token_id
    return hf


def export_hf(
    policy_or_model: Any,
    cfg: ModelConfig,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    gather: Gather = local_gather,
    max_shard_size: str = "5GB",
) -> Path:
    """Write an HF checkpoint of ``policy_or_model`` (a ``MegatronPolicy``, its DDP wrapper or a
    bare GPTModel built from ``cfg``) to ``out_dir`` atomically; returns ``out_dir``.

    ``tokenizer``: the run's tokenizer (saved alongside; None skips it). An existing
    ``out_dir`` is replaced only with ``overwrite=True``.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (export.overwrite) to replace it")
    hf = hf_model_from_megatron(policy_or_model, cfg, tokenizer, gather)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp.{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        hf.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _fsync_tree(tmp)
        if out.exists():
            old = out.with_name(f"{out.name}.old.{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("exported %s (%s, vocab %d) to %s", cfg.name, type(hf).__name__, hf.config.vocab_size, out)
    return out


def _fsync_tree(directory: Path) -> None:
    for p in directory.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
