"""megatron-core policy -> a Hugging Face checkpoint folder (``from_pretrained``-loadable), any layout.

``export_hf(policy_or_model, cfg, tokenizer, out_dir)`` writes ``model.safetensors`` (sharded by
transformers when large), ``config.json``, ``generation_config.json`` and the tokenizer files.

The tensors come from ``hf.mapping.megatron_to_hf``, the same stream that feeds
weight sync (``sharding.iter_full_state``: full tensors on every rank, whatever the TP / PP / EP
layout), so an exported checkpoint and a synced rollout engine hold the same weights. Its names
are transformers' *in-memory* ones (Qwen3-MoE: fused 3-D experts); rather than re-implementing
transformers' on-disk conversion (per-expert ``experts.{e}.gate_proj`` ...), the tensors are
loaded into the HF twin (``hf_config_for``) with ``load_named_tensors_into`` and written by
``save_pretrained(safe_serialization=True)``, which owns the on-disk format.

Under model parallelism ``export_hf`` is a collective: every rank must call it (every rank
drains the stream), only global rank 0 builds the HF twin and writes, and the other ranks wait
for its outcome (an error on rank 0 raises everywhere).

Writes are atomic: everything goes to ``<out>.tmp.<pid>`` next to ``out_dir`` and is renamed
into place, so a kill leaves either no folder, or the previous export (``overwrite=True``), or
the complete new one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.models.megatron.build import params_dtype
from pivotrl_nemo.models.megatron.hf.mapping import hf_config_for, load_named_tensors_into, megatron_to_hf
from pivotrl_nemo.models.megatron.sharding import unwrap
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)


def _vocab_size(policy_or_model: Any) -> int:
    """The full (unsharded) vocabulary of the model, on any pipeline stage."""
    return int(unwrap(policy_or_model).vocab_size)


def _world() -> tuple[int, int]:
    """(rank, size) of the default process group the export's collectives run over; (0, 1) without one."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (no-op in a world of one)."""
    if _world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def hf_model_from_megatron(
    policy_or_model: Any, cfg: ModelConfig, tokenizer: Any = None, materialize: bool = True
) -> Any:
    """The HF twin (``hf_config_for``) on the CPU holding the policy's current weights.

    A collective under model parallelism (every rank drains ``megatron_to_hf``). Every rank with
    ``materialize=True`` builds and returns its own twin; ``materialize=False`` only takes part
    in the collectives and returns None (export's non-writing ranks). Token ids (bos/eos/pad)
    come from ``tokenizer``; the generation config stops at the end of an assistant turn
    (``data.tokenizer.end_of_turn_token_ids``).
    """
    if not materialize:
        for _ in megatron_to_hf(policy_or_model, cfg):
            pass
        return None
    from transformers import AutoModelForCausalLM  # lazy: transformers takes ~1 s to import

    ids: dict[str, Any] = {}
    if tokenizer is not None:
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    hf_config = hf_config_for(cfg, _vocab_size(policy_or_model), **ids)
    hf = AutoModelForCausalLM.from_config(hf_config, dtype=params_dtype(cfg))
    hf.eval()
    hf.requires_grad_(False)
    n = load_named_tensors_into(hf, ((k, v.detach().cpu()) for k, v in megatron_to_hf(policy_or_model, cfg)))
    logger.debug("loaded %d tensors into the HF twin for export", n)
    if tokenizer is not None:
        from pivotrl_nemo.data.tokenizer import end_of_turn_token_ids  # lazy: it imports transformers

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
    max_shard_size: str = "5GB",
) -> Path:
    """Write an HF checkpoint of ``policy_or_model`` (a ``MegatronPolicy``, its DDP wrapper or a
    bare GPTModel built from ``cfg``, any layout) to ``out_dir`` atomically; returns ``out_dir``.

    Every rank must call it; global rank 0 writes. ``tokenizer``: the run's tokenizer (saved
    alongside; None skips it). An existing ``out_dir`` (as rank 0 sees it) is replaced only with
    ``overwrite=True``.
    """
    out = Path(out_dir)
    rank, _ = _world()
    exists = _from_rank0(out.exists() if rank == 0 else None)
    if exists and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (export.overwrite) to replace it")
    hf = hf_model_from_megatron(policy_or_model, cfg, tokenizer, materialize=rank == 0)
    error = None
    if rank == 0:
        try:
            _write(hf, tokenizer, out, max_shard_size)
        except Exception as e:  # noqa: BLE001 -- re-raised below, after telling the other ranks
            error = e
    message = _from_rank0(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"HF export to {out} failed on rank 0: {message}")
    if rank == 0:
        logger.info("exported %s (%s, vocab %d) to %s", cfg.name, type(hf).__name__, hf.config.vocab_size, out)
    return out


def _write(hf: Any, tokenizer: Any, out: Path, max_shard_size: str) -> None:
    """``save_pretrained`` into ``<out>.tmp.<pid>``, fsync, rename over ``out``."""
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


def _fsync_tree(directory: Path) -> None:
    for p in directory.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
