"""Hugging Face checkpoints -> megatron-core ``GPTModel`` (``models.megatron.build``), any layout.

The inverse of ``hf.mapping.megatron_to_hf`` for the three families the policy can
express: Llama (e.g. SmolLM2: no qk layernorm, usually tied embeddings), Qwen3 (dense, qk
layernorm) and Qwen3-MoE (qk layernorm, softmax top-k routing with ``norm_topk_prob=True``).

* ``model_config_from_hf(hf_config)`` -> the ``ModelConfig`` whose ``build_model`` computes
  the same function.
* ``HFSource(state, cfg)``: ``source(global megatron name) -> full tensor`` over any
  ``Mapping[str, Tensor]`` of HF-named tensors (a ``state_dict()``, or a ``SafetensorsState``
  that opens the checkpoint's shards lazily). It reads only the HF keys that one megatron tensor
  needs: q/k/v fused into megatron's grouped ``linear_qkv`` layout, gate/up into ``linear_fc1``,
  one expert's rows of transformers' fused 3-D experts (or its per-expert checkpoint tensors).
* ``load_hf_into_megatron(model, state, cfg)`` checks the names (strict: unknown HF keys and the
  HF keys this rank needs but cannot find are named), then ``sharding.load_full_state(model,
  source)``: each rank asks only for the tensors it holds (its pipeline stage's layers, its EP
  rank's experts) and keeps its TP slice. No communication.
* ``load_hf_checkpoint_into(model, hf_dir, cfg)`` / ``import_hf_checkpoint(hf_dir, ...)``: from a
  checkpoint folder; every rank calls them, and a failure on any rank raises on all of them.

Megatron names are classified by ``hf.mapping.megatron_tensor_kind`` (local spec, and the
Transformer Engine spec's fused-norm names, which the CPU tests cannot exercise).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.models.megatron.build import build_model
from pivotrl_nemo.models.megatron.hf.family import HFFamily, fuse_qkv, read_hf_tensor
from pivotrl_nemo.models.megatron.hf.mapping import (
    gpt_hf_config_for,
    gpt_hf_from_megatron_stream,
    hf_layer_prefix,
    hf_name_of,
    megatron_tensor_kind,
)
from pivotrl_nemo.models.megatron.sharding import load_full_state, shards, unwrap
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "qwen3", "qwen3_moe")


class HFImportError(ValueError):
    """The HF checkpoint cannot be expressed by, or does not match, the megatron model."""


# --------------------------------------------------------------------------- config


def _rope_theta(hf_config: Any) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        rope_type = params.get("rope_type", "default")
        if rope_type != "default":
            raise HFImportError(f"rope_type={rope_type!r}: only plain RoPE ('default') is supported")
        return float(params["rope_theta"])
    scaling = getattr(hf_config, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise HFImportError(f"rope_scaling={scaling!r}: only plain RoPE is supported")
    return float(getattr(hf_config, "rope_theta", 10000.0))


def _dtype_name(hf_config: Any) -> str:
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if dtype in (torch.bfloat16, "bfloat16"):
        return "bfloat16"
    if dtype in (torch.float16, "float16"):
        return "float16"
    return "float32"


def _family_of(model_type: Any) -> Any:
    from pivotrl_nemo.registry import HF_FAMILIES

    for _, family in HF_FAMILIES.items():
        if model_type in family.model_types:
            return family
    supported = [t for _, f in HF_FAMILIES.items() for t in f.model_types]
    raise HFImportError(f"model_type={model_type!r}; supported: {', '.join(supported)}")


def model_config_from_hf(hf_config: Any, params_dtype: str | None = None) -> ModelConfig:
    """The ``ModelConfig`` equivalent to a transformers config of any registered family
    (``registry.HF_FAMILIES``: Llama / Qwen3 / Qwen3-MoE, Nemotron-H). ``params_dtype`` defaults
    to the checkpoint's dtype (float32 if unset)."""
    family = _family_of(getattr(hf_config, "model_type", None))
    return family.from_hf_config(hf_config, params_dtype or _dtype_name(hf_config))


def gpt_model_config_from_hf(hf_config: Any, params_dtype: str | None = None) -> ModelConfig:
    """The ``ModelConfig`` equivalent to a transformers ``LlamaConfig`` / ``Qwen3Config`` /
    ``Qwen3MoeConfig``. ``params_dtype`` defaults to the checkpoint's dtype (float32 if unset).

    Raises ``HFImportError`` for what the megatron policy cannot express (another model type,
    attention/MLP biases, non-default RoPE, sliding windows, Qwen3-MoE with
    ``norm_topk_prob=False`` or with dense layers mixed in).
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFImportError(f"model_type={model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise HFImportError(f"{model_type}: attention/MLP biases are not supported (add_bias_linear=False)")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise HFImportError(f"hidden_act={hf_config.hidden_act!r}: only SwiGLU (silu) MLPs are supported")
    if getattr(hf_config, "use_sliding_window", False):
        raise HFImportError(f"{model_type}: sliding-window attention is not supported")
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    common = dict(
        name=Path(getattr(hf_config, "name_or_path", "") or model_type).name,
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_attention_heads=heads,
        num_query_groups=getattr(hf_config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        qk_layernorm=model_type != "llama",
        ffn_hidden_size=hf_config.intermediate_size,
        max_position_embeddings=hf_config.max_position_embeddings,
        rotary_base=_rope_theta(hf_config),
        norm_epsilon=hf_config.rms_norm_eps,
        init_method_std=getattr(hf_config, "initializer_range", 0.02),
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        params_dtype=params_dtype or _dtype_name(hf_config),
        num_experts=0,
    )
    if model_type != "qwen3_moe":
        return ModelConfig(**common)
    if not getattr(hf_config, "norm_topk_prob", False):
        raise HFImportError(
            "Qwen3-MoE with norm_topk_prob=False: megatron's router (softmax over the top-k logits) "
            "computes renormalised top-k probabilities only; this checkpoint would route differently"
        )
    if getattr(hf_config, "mlp_only_layers", None) or getattr(hf_config, "decoder_sparse_step", 1) != 1:
        raise HFImportError("Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step != 1) is not supported")
    return ModelConfig(
        **common | dict(num_experts=hf_config.num_experts),
        moe_ffn_hidden_size=hf_config.moe_intermediate_size,
        moe_router_topk=hf_config.num_experts_per_tok,
        moe_aux_loss_coeff=0.0,
    )


# --------------------------------------------------------------------------- lazy state


class SafetensorsState(Mapping):
    """A read-only ``Mapping[str, Tensor]`` over a checkpoint folder's ``*.safetensors`` files.

    Opens each shard with ``safetensors.safe_open`` and reads a tensor only when it is looked up
    (``model.safetensors.index.json`` when present, else every ``*.safetensors`` in the folder).
    """

    def __init__(self, hf_dir: str | Path, device: str = "cpu") -> None:
        self.hf_dir = Path(hf_dir)
        self.device = device
        index = self.hf_dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in self.hf_dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {self.hf_dir}")
        self._handles = {f: safe_open(str(self.hf_dir / f), framework="pt", device=device) for f in files}
        self._where = {k: f for f, h in self._handles.items() for k in h.keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handles[self._where[key]].get_tensor(key)

    def get_index(self, key: str, index: int) -> torch.Tensor:
        """``self[key][index]``, reading only that slice of the first dim from disk."""
        return self._handles[self._where[key]].get_slice(key)[index : index + 1][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


# --------------------------------------------------------------------------- tensor families


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF ``gate_proj``/``up_proj`` ``[I, H]`` -> megatron's SwiGLU ``linear_fc1.weight`` ``[2I, H]`` (gate first)."""
    return torch.cat([gate, up], dim=0)


# --------------------------------------------------------------------------- source


def _ignorable(key: str) -> bool:
    """HF keys that carry no weights of the function (rotary caches written by old exports)."""
    return key.endswith("rotary_emb.inv_freq")


def megatron_global_names(cfg: ModelConfig) -> list[str]:
    """Global names of a single-rank local-spec GPTModel built from ``cfg`` (the tied output
    layer excluded), in model order."""
    names = ["embedding.word_embeddings.weight"]
    for layer in range(cfg.num_layers):
        p = f"decoder.layers.{layer}"
        names += [
            f"{p}.input_layernorm.weight",
            f"{p}.self_attention.linear_qkv.weight",
            f"{p}.self_attention.linear_proj.weight",
        ]
        if cfg.qk_layernorm:
            names += [f"{p}.self_attention.q_layernorm.weight", f"{p}.self_attention.k_layernorm.weight"]
        names.append(f"{p}.pre_mlp_layernorm.weight")
        if cfg.num_experts > 0:
            names.append(f"{p}.mlp.router.weight")
            for e in range(cfg.num_experts):
                names += [
                    f"{p}.mlp.experts.local_experts.{e}.linear_fc1.weight",
                    f"{p}.mlp.experts.local_experts.{e}.linear_fc2.weight",
                ]
        else:
            names += [f"{p}.mlp.linear_fc1.weight", f"{p}.mlp.linear_fc2.weight"]
    names.append("decoder.final_layernorm.weight")
    if not cfg.tie_word_embeddings:
        names.append("output_layer.weight")
    return names


class HFSource:
    """``source(global megatron name) -> full tensor`` over HF-named tensors ``state``.

    ``state``: any ``Mapping[str, Tensor]``; when it has ``get_index(key, i)`` (``SafetensorsState``)
    one expert's rows of a fused 3-D expert tensor are read alone. Experts come from transformers'
    in-memory fused tensors (``mlp.experts.gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``)
    when ``state`` has them, else from per-expert checkpoint tensors
    (``mlp.experts.{e}.gate_proj.weight`` ...). ``used`` collects the HF keys read so far.
    """

    def __init__(self, state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> None:
        self.state = state
        self.cfg = cfg
        self.fused_experts = cfg.num_experts > 0 and any(k.endswith(".mlp.experts.gate_up_proj") for k in state)
        self.used: set[str] = set()

    def keys_for(self, global_name: str) -> list[str]:
        """The HF keys ``self(global_name)`` reads. Raises ``HFImportError`` for a megatron name
        with no HF counterpart."""
        try:
            kind = megatron_tensor_kind(global_name)
        except ValueError as e:
            raise HFImportError(str(e)) from None
        if (
            kind.kind == "embed"
            and self.cfg.tie_word_embeddings
            and "model.embed_tokens.weight" not in self.state
            and "lm_head.weight" in self.state
        ):
            return ["lm_head.weight"]  # a tied checkpoint that kept only the output copy
        single = hf_name_of(kind)
        if single is not None:
            return [single]
        # Left: qkv, fc1 and the expert kinds (every other kind maps to a single HF name), all of
        # them per-layer kinds, for which megatron_tensor_kind always sets the layer.
        assert kind.layer is not None, global_name
        p = hf_layer_prefix(kind.layer)
        if kind.kind == "qkv":
            return [f"{p}.self_attn.{x}_proj.weight" for x in "qkv"]
        if kind.kind == "fc1":
            return [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"]
        if self.fused_experts:
            return [f"{p}.mlp.experts.{'gate_up_proj' if kind.kind == 'expert_fc1' else 'down_proj'}"]
        expert = f"{p}.mlp.experts.{kind.expert}"
        if kind.kind == "expert_fc1":
            return [f"{expert}.gate_proj.weight", f"{expert}.up_proj.weight"]
        return [f"{expert}.down_proj.weight"]

    def known_keys(self) -> set[str]:
        """Every HF key the whole model (all ranks together) reads, plus a tied ``lm_head``."""
        keys = {k for name in megatron_global_names(self.cfg) for k in self.keys_for(name)}
        if self.cfg.tie_word_embeddings:
            keys |= {"lm_head.weight", "model.embed_tokens.weight"}  # in-memory state_dicts list both
        return keys

    def _get(self, key: str, index: int | None = None) -> torch.Tensor:
        self.used.add(key)
        return read_hf_tensor(self.state, key, index)

    def __call__(self, global_name: str) -> torch.Tensor:
        """The full megatron tensor ``global_name`` (``sharding`` global naming)."""
        keys = self.keys_for(global_name)
        kind = megatron_tensor_kind(global_name)
        if kind.kind == "qkv":
            q, k, v = (self._get(key) for key in keys)  # keys_for: the q, k, v projections
            return fuse_qkv(q, k, v, self.cfg)
        if kind.kind in ("expert_fc1", "expert_fc2") and self.fused_experts:
            return self._get(keys[0], kind.expert)
        if len(keys) == 2:  # fc1 / expert_fc1: gate, up
            return fuse_gate_up(self._get(keys[0]), self._get(keys[1]))
        return self._get(keys[0])


GPT_FAMILY = HFFamily(
    model_types=SUPPORTED_MODEL_TYPES,
    hf_config_for=gpt_hf_config_for,
    to_hf=gpt_hf_from_megatron_stream,
    source=HFSource,
    from_hf_config=gpt_model_config_from_hf,
)
"""``registry.HF_FAMILIES['gpt']``."""


def _local_global_names(gpt: Any) -> list[str]:
    """The global names this rank's parameters need (a tied output layer on a last stage without
    the embedding reads the embedding)."""
    names = [s.global_name for s in shards(gpt)]
    if getattr(gpt, "share_embeddings_and_output_weights", False) and gpt.post_process and not gpt.pre_process:
        names.append("embedding.word_embeddings.weight")
    return names


@torch.no_grad()
def load_hf_into_megatron(model: Any, state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> int:
    """Copy HF-named tensors (Llama / Qwen3 / Qwen3-MoE names) into this rank's shards of ``model``.

    ``model``: a GPTModel from ``build_model(cfg, vocab, parallel)`` at any TP / PP / EP
    layout (bare, DDP-wrapped or a ``MegatronPolicy``). Each rank reads only the HF tensors of
    the parameters it holds and keeps its slice (``sharding.load_full_state``); values are cast to
    each parameter's dtype. No communication: call it on every rank. Raises ``HFImportError``
    naming unknown HF keys (checked against the whole model), the HF keys this rank needs but
    cannot find, the megatron parameters they leave unset, and mis-shaped tensors. Returns how
    many local tensors were set.
    """
    from pivotrl_nemo.registry import HF_FAMILIES

    gpt = unwrap(model)
    source = HF_FAMILIES.get(cfg.arch).source(state, cfg)
    problems: list[str] = []
    missing: list[str] = []
    unset: list[str] = []
    for name in _local_global_names(gpt):
        try:
            keys = source.keys_for(name)
        except ValueError as e:  # HFImportError, or a family's unmapped name
            problems.append(str(e))
            continue
        absent = [k for k in keys if k not in state]
        if absent:
            missing += [k for k in absent if k not in missing]
            unset.append(name)
    known = source.known_keys()
    unknown = sorted(k for k in state if k not in known and not _ignorable(k))
    for label, keys in (
        ("missing HF keys", missing),
        ("unknown HF keys", unknown),
        ("megatron parameters not set", unset),
    ):
        if keys:
            problems.append(f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
    if problems:
        raise HFImportError("HF -> megatron load failed: " + "; ".join(problems))
    try:
        return load_full_state(gpt, source)
    except HFImportError:
        raise
    except ValueError as e:  # a full tensor whose slice does not fit this rank's parameter
        raise HFImportError(f"HF -> megatron load failed: {e}") from None


def _agree_on_failure(error: BaseException | None) -> None:
    """Raise on every rank if any rank failed (so no rank is left waiting in a collective)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        if error is not None:
            raise error
        return
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(every) if msg is not None]
    if failed:
        r, msg = failed[0]
        raise HFImportError(f"HF import failed on rank {r}: {msg}")


def load_hf_checkpoint_into(model: Any, hf_dir: str | Path, cfg: ModelConfig) -> int:
    """``load_hf_into_megatron`` from a checkpoint folder's safetensors, opened lazily (a rank reads
    only its tensors). Call on every rank: a failure anywhere raises on all ranks. Returns how
    many local tensors were set."""
    error: BaseException | None = None
    n = 0
    try:
        n = load_hf_into_megatron(model, SafetensorsState(hf_dir), cfg)
    except Exception as e:  # noqa: BLE001 -- re-raised below, after telling the other ranks
        error = e
    _agree_on_failure(error)
    return n


def import_hf_checkpoint(
    hf_dir: str | Path,
    params_dtype: str | None = None,
    vocab_size: int | None = None,
    parallel: Any = None,
) -> tuple[ModelConfig, Any]:
    """Build a megatron GPTModel from an HF checkpoint folder (``config.json`` + safetensors).

    Requires ``distributed.setup.init_distributed(parallel)`` first; every rank calls it and gets
    its own shards (``parallel``: the layout, default single rank). ``vocab_size`` defaults to
    the checkpoint's. Returns ``(ModelConfig, GPTModel)``.
    """
    from transformers import AutoConfig  # lazy: transformers takes ~1 s to import

    hf_dir = Path(hf_dir)
    hf_config = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    cfg = model_config_from_hf(hf_config, params_dtype=params_dtype)
    vocab = vocab_size or hf_config.vocab_size
    if vocab != hf_config.vocab_size:
        raise HFImportError(f"vocab_size={vocab} != the checkpoint's {hf_config.vocab_size}")
    model = build_model(cfg, vocab, parallel)
    n = load_hf_checkpoint_into(model, hf_dir, cfg)
    logger.info("imported %s (%s) from %s: %d local tensors", cfg.name, hf_config.model_type, hf_dir, n)
    return cfg, model
