"""Hugging Face checkpoints -> megatron-core ``GPTModel`` (``models.megatron.build``).

The inverse of ``weight_sync.hf_mapping.megatron_to_hf`` for the three families the policy can
express: Llama (e.g. SmolLM2: no qk layernorm, usually tied embeddings), Qwen3 (dense, qk
layernorm) and Qwen3-MoE (qk layernorm, softmax top-k routing with ``norm_topk_prob=True``).

* ``model_config_from_hf(hf_config)`` -> the ``ModelConfig`` whose ``build_gpt_model`` computes
  the same function.
* ``load_hf_into_megatron(model, state, cfg)`` copies HF-named tensors into the model. ``state``
  is any ``Mapping[str, Tensor]``: a ``state_dict()`` or a ``SafetensorsState`` that opens the
  checkpoint's shards lazily, so a rank reads only the tensors it asks for. Strict: every
  megatron parameter is set exactly once with the right shape, and every HF key is used
  (unknown keys are named in the error).
* ``import_hf_checkpoint(hf_dir)`` -> ``(ModelConfig, GPTModel)``.

One function per tensor family (``fuse_qkv``, ``fuse_gate_up``, the expert readers); the walk
hands each family's result to ``_Writer.put`` under the megatron name. Sharded loading (TP/EP)
plugs in there: slice the full tensor for this rank's partition before copying. Layer indices
come from ``layer.layer_number`` (global under PP).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from pivotrl_nemo.config.schema import ModelConfig
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


def model_config_from_hf(hf_config: Any, params_dtype: str | None = None) -> ModelConfig:
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
            "computes renormalised top-k probabilities only; this checkpoint would route differently")
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
        from safetensors import safe_open

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

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


# --------------------------------------------------------------------------- tensor families


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """HF ``q_proj``/``k_proj``/``v_proj`` weights -> megatron's ``linear_qkv.weight``, interleaved
    per query group ``[q_g (heads_per_group * d), k_g (d), v_g (d)]`` (inverse of ``split_qkv``)."""
    groups, d = cfg.num_query_groups, cfg.head_dim
    per_group = cfg.num_attention_heads // groups
    hidden = q.shape[-1]
    if q.shape[0] != groups * per_group * d or k.shape[0] != groups * d or v.shape[0] != groups * d:
        raise HFImportError(f"q/k/v rows {q.shape[0]}/{k.shape[0]}/{v.shape[0]} do not match "
                            f"{cfg.num_attention_heads} heads, {groups} groups, head_dim {d}")
    grouped = torch.cat([q.reshape(groups, per_group, d, hidden), k.reshape(groups, 1, d, hidden),
                         v.reshape(groups, 1, d, hidden)], dim=1)
    return grouped.reshape(groups * (per_group + 2) * d, hidden)


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF ``gate_proj``/``up_proj`` ``[I, H]`` -> megatron's SwiGLU ``linear_fc1.weight`` ``[2I, H]`` (gate first)."""
    return torch.cat([gate, up], dim=0)


class _Reader:
    """Reads HF tensors from ``state`` and remembers which keys were used."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()
        self.missing: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor | None:
        if key not in self.state:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.state[key]


class _Writer:
    """Copies full tensors into the megatron parameters by name, each exactly once."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = dict(model.named_parameters())
        self.seen: set[str] = set()
        self.problems: list[str] = []

    @torch.no_grad()
    def put(self, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None:
            return  # the reader recorded the missing HF key
        param = self.params.get(name)
        if param is None:
            self.problems.append(f"megatron model has no parameter {name}")
        elif name in self.seen:
            self.problems.append(f"{name} set twice")
        elif tuple(param.shape) != tuple(tensor.shape):
            self.problems.append(f"{name}: got {tuple(tensor.shape)}, expected {tuple(param.shape)}")
        else:
            self.seen.add(name)
            param.copy_(tensor)


def _experts(r: _Reader, w: _Writer, src: str, dst: str, cfg: ModelConfig) -> None:
    """Experts from transformers' fused 3-D tensors (in-memory names) or per-expert weights."""
    fused = f"{src}.mlp.experts.gate_up_proj"
    if r.has(fused):
        gate_up, down = r.take(fused), r.take(f"{src}.mlp.experts.down_proj")
        for e in range(cfg.num_experts):
            w.put(f"{dst}.mlp.experts.local_experts.{e}.linear_fc1.weight", gate_up[e])
            if down is not None:
                w.put(f"{dst}.mlp.experts.local_experts.{e}.linear_fc2.weight", down[e])
        return
    for e in range(cfg.num_experts):
        hf = f"{src}.mlp.experts.{e}"
        gate, up = r.take(f"{hf}.gate_proj.weight"), r.take(f"{hf}.up_proj.weight")
        if gate is not None and up is not None:
            w.put(f"{dst}.mlp.experts.local_experts.{e}.linear_fc1.weight", fuse_gate_up(gate, up))
        w.put(f"{dst}.mlp.experts.local_experts.{e}.linear_fc2.weight", r.take(f"{hf}.down_proj.weight"))


def _layer(r: _Reader, w: _Writer, local_idx: int, layer: Any, cfg: ModelConfig) -> None:
    src = f"model.layers.{layer.layer_number - 1}"  # global HF index
    dst = f"decoder.layers.{local_idx}"  # this rank's parameter name
    w.put(f"{dst}.input_layernorm.weight", r.take(f"{src}.input_layernorm.weight"))
    q, k, v = (r.take(f"{src}.self_attn.{p}_proj.weight") for p in "qkv")
    if q is not None and k is not None and v is not None:
        w.put(f"{dst}.self_attention.linear_qkv.weight", fuse_qkv(q, k, v, cfg))
    w.put(f"{dst}.self_attention.linear_proj.weight", r.take(f"{src}.self_attn.o_proj.weight"))
    if cfg.qk_layernorm:
        w.put(f"{dst}.self_attention.q_layernorm.weight", r.take(f"{src}.self_attn.q_norm.weight"))
        w.put(f"{dst}.self_attention.k_layernorm.weight", r.take(f"{src}.self_attn.k_norm.weight"))
    w.put(f"{dst}.pre_mlp_layernorm.weight", r.take(f"{src}.post_attention_layernorm.weight"))
    if cfg.num_experts > 0:
        w.put(f"{dst}.mlp.router.weight", r.take(f"{src}.mlp.gate.weight"))
        _experts(r, w, src, dst, cfg)
    else:
        gate, up = r.take(f"{src}.mlp.gate_proj.weight"), r.take(f"{src}.mlp.up_proj.weight")
        if gate is not None and up is not None:
            w.put(f"{dst}.mlp.linear_fc1.weight", fuse_gate_up(gate, up))
        w.put(f"{dst}.mlp.linear_fc2.weight", r.take(f"{src}.mlp.down_proj.weight"))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


def _ignorable(key: str) -> bool:
    """HF keys that carry no weights of the function (rotary caches written by old exports)."""
    return key.endswith("rotary_emb.inv_freq")


@torch.no_grad()
def load_hf_into_megatron(model: torch.nn.Module, state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> int:
    """Copy HF-named tensors (Llama / Qwen3 / Qwen3-MoE names) into ``model`` in place.

    ``model``: a GPTModel from ``build_gpt_model(cfg, vocab)`` (or a DDP wrapper of one) on one
    rank. Values are cast to each parameter's dtype/device. Raises ``HFImportError`` naming the
    missing HF keys, the unknown (unused) HF keys, megatron parameters left unset and
    mis-shaped tensors. Returns how many megatron parameters were set.
    """
    gpt = _unwrap(model)
    r, w = _Reader(state), _Writer(gpt)
    if getattr(gpt, "pre_process", True):
        w.put("embedding.word_embeddings.weight", r.take("model.embed_tokens.weight"))
    for local_idx, layer in enumerate(gpt.decoder.layers):
        _layer(r, w, local_idx, layer, cfg)
    if getattr(gpt, "post_process", True):
        w.put("decoder.final_layernorm.weight", r.take("model.norm.weight"))
        if not cfg.tie_word_embeddings:
            w.put("output_layer.weight", r.take("lm_head.weight"))
        elif r.has("lm_head.weight"):
            r.used.add("lm_head.weight")  # in-memory state_dicts list the tied weight twice
    unknown = sorted(k for k in state if k not in r.used and not _ignorable(k))
    unset = sorted(set(w.params) - w.seen)
    problems = list(w.problems)
    for label, keys in (("missing HF keys", r.missing), ("unknown HF keys", unknown),
                        ("megatron parameters not set", unset)):
        if keys:
            problems.append(f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
    if problems:
        raise HFImportError("HF -> megatron load failed: " + "; ".join(problems))
    return len(w.seen)


def import_hf_checkpoint(
    hf_dir: str | Path,
    params_dtype: str | None = None,
    vocab_size: int | None = None,
    parallel: Any = None,
) -> tuple[ModelConfig, Any]:
    """Build a megatron GPTModel from an HF checkpoint folder (``config.json`` + safetensors).

    Requires ``distributed.setup.init_distributed`` first (single rank: TP=PP=EP=1).
    ``vocab_size`` defaults to the checkpoint's. Returns ``(ModelConfig, GPTModel)``.
    """
    from transformers import AutoConfig

    from .build import build_gpt_model

    hf_dir = Path(hf_dir)
    hf_config = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    cfg = model_config_from_hf(hf_config, params_dtype=params_dtype)
    vocab = vocab_size or hf_config.vocab_size
    if vocab != hf_config.vocab_size:
        raise HFImportError(f"vocab_size={vocab} != the checkpoint's {hf_config.vocab_size}")
    model = build_gpt_model(cfg, vocab, parallel)
    state = SafetensorsState(hf_dir)
    n = load_hf_into_megatron(model, state, cfg)
    logger.info("imported %s (%s) from %s: %d tensors", cfg.name, hf_config.model_type, hf_dir, n)
    return cfg, model
