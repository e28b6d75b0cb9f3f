"""The megatron <-> Hugging Face name mapping: GPTModel (``models.megatron.build``) and its HF twin.

The one table of names and tensor families shared by the importer (``hf.importer``), the
exporter (``hf.exporter``), weight sync (``weight_sync``) and the in-process rollout engine
(``rollout.hf``). Llama / Qwen3 / Qwen3-MoE.

``hf_config_for`` gives the ``transformers`` config of the twin model that computes the same
function as ``build_model(cfg, vocab_size)``; ``megatron_to_hf`` yields the twin's tensors by
name. Names are those of the *in-memory* modules of transformers 5.23 (``named_parameters()``):
its Qwen3-MoE keeps each layer's experts fused as 3-D parameters ``mlp.experts.gate_up_proj``
``[E, 2*I, H]`` (gate rows first, then up) and ``mlp.experts.down_proj`` ``[E, H, I]``, and the
router as ``mlp.gate.weight``. (Loading/saving safetensors goes through transformers' own
per-expert conversion; these names are for in-place weight updates of a live model.)

Any TP / PP / EP layout: ``megatron_to_hf`` consumes ``models.megatron.sharding.iter_full_state``,
the collective stream of ``(global megatron name, full tensor)`` that every rank receives in
full, and converts it tensor by tensor (``hf_from_megatron_stream``); an MoE layer's experts are
buffered until all of them have arrived, then emitted as the two fused tensors. Every rank of
the world must drain the generator (export, weight sync).

``megatron_tensor_kind`` is the one table of megatron names, shared with the importer
(``hf.importer``). It also accepts the Transformer Engine spec's names where they
differ from the local spec: ``self_attention.linear_qkv.layer_norm_weight`` (input layernorm
fused into the QKV projection) and ``mlp.linear_fc1.layer_norm_weight`` (the pre-MLP norm fused
into a dense layer's fc1). Those aliases follow megatron-core 0.19's TE layer spec but are not
exercised by the CPU tests (no Transformer Engine there); TE's grouped-GEMM experts
(``experts.linear_fc1.weight{i}``) and the TE op-fuser names are not mapped.

``load_named_tensors_into`` copies such an HF-named stream into a live HF model (the rollout
engine's twin, the exporter's), strictly: every parameter exactly once (``WeightLoadError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.models.megatron.build import params_dtype
from pivotrl_nemo.models.megatron.hf.family import split_qkv
from pivotrl_nemo.models.megatron.sharding import iter_full_state

# --------------------------------------------------------------------------- config


def hf_config_for(
    cfg: ModelConfig,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """The ``transformers`` config of the HF twin of ``build_model(cfg, vocab_size)``, for any
    ``cfg.arch`` (``registry.HF_FAMILIES``)."""
    from pivotrl_nemo.registry import HF_FAMILIES

    family = HF_FAMILIES.get(cfg.arch)
    return family.hf_config_for(
        cfg, vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )


def gpt_hf_config_for(
    cfg: ModelConfig,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """The ``transformers`` config of the HF twin: ``Qwen3MoeConfig``, or ``Qwen3Config`` when dense,
    or ``LlamaConfig`` (dense, ``cfg.qk_layernorm=False``, e.g. an imported SmolLM2)."""
    from transformers import Qwen3Config, Qwen3MoeConfig  # lazy: transformers takes ~1 s to import

    # dict[str, Any], not the inferred dict[str, object]: the values are the typed kwargs of the
    # transformers config constructors below (ints, floats, bools, a rope dict, token ids).
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.init_method_std,
        rms_norm_eps=cfg.norm_epsilon,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        attention_bias=False,
        attention_dropout=0.0,
        use_sliding_window=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    if not cfg.qk_layernorm:
        if cfg.num_experts > 0:
            raise NotImplementedError("an MoE model without qk layernorm has no HF twin here (Qwen3-MoE has qk norms)")
        from transformers import LlamaConfig  # lazy: transformers

        common.pop("use_sliding_window")
        return LlamaConfig(intermediate_size=cfg.ffn_hidden_size, mlp_bias=False, **common)
    if cfg.num_experts == 0:
        return Qwen3Config(intermediate_size=cfg.ffn_hidden_size, **common)
    return Qwen3MoeConfig(
        intermediate_size=cfg.ffn_hidden_size,
        moe_intermediate_size=cfg.moe_ffn_hidden_size,
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.moe_router_topk,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        router_aux_loss_coef=cfg.moe_aux_loss_coeff,
        output_router_logits=False,
        **common,
    )


def build_hf_model(cfg: ModelConfig, vocab_size: int, tokenizer: Any = None) -> Any:
    """An HF twin (``AutoModelForCausalLM`` from ``hf_config_for``) in eval mode, without grads.

    Its weights are random until the first ``load_named_tensors_into`` / weight sync. Token ids
    (bos/eos/pad) come from ``tokenizer`` when given. On the GPU when CUDA is available.
    """
    from transformers import AutoModelForCausalLM  # lazy: transformers

    ids: dict[str, Any] = {}
    if tokenizer is not None:
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = hf_config_for(cfg, vocab_size, **ids)
    model = AutoModelForCausalLM.from_config(config, dtype=params_dtype(cfg))
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- tensor families


def split_gate_up(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A SwiGLU ``linear_fc1.weight`` ``[2I, H]`` -> ``(gate [I, H], up [I, H])`` (megatron: gate first)."""
    if fc1.shape[0] % 2:
        raise ValueError(f"linear_fc1 rows {fc1.shape[0]} is odd; expected a gated (SwiGLU) MLP")
    gate, up = fc1.chunk(2, dim=0)
    return gate, up


def fuse_experts(fc1: list[torch.Tensor], fc2: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert ``linear_fc1`` ``[2I, H]`` / ``linear_fc2`` ``[H, I]`` (global expert order) ->
    transformers' fused ``gate_up_proj [E, 2I, H]`` (gate rows first, as megatron) and
    ``down_proj [E, H, I]``."""
    return torch.stack(fc1, dim=0), torch.stack(fc2, dim=0)


# --------------------------------------------------------------------------- megatron names

_LAYER_NAME = re.compile(r"^decoder\.layers\.(?P<layer>\d+)\.(?P<rest>.+)$")
_EXPERT_NAME = re.compile(r"^mlp\.experts\.local_experts\.(?P<expert>\d+)\.(?P<rest>.+)$")

_TOP_LEVEL = {
    "embedding.word_embeddings.weight": "embed",
    "decoder.final_layernorm.weight": "final_norm",
    "output_layer.weight": "output",
}
_IN_LAYER = {
    "input_layernorm.weight": "input_norm",
    "self_attention.linear_qkv.layer_norm_weight": "input_norm",  # TE: norm fused into linear_qkv
    "self_attention.linear_qkv.weight": "qkv",
    "self_attention.linear_proj.weight": "o_proj",
    "self_attention.q_layernorm.weight": "q_norm",
    "self_attention.k_layernorm.weight": "k_norm",
    "pre_mlp_layernorm.weight": "post_attn_norm",
    "mlp.linear_fc1.layer_norm_weight": "post_attn_norm",  # TE dense layer: norm fused into fc1
    "mlp.linear_fc1.weight": "fc1",
    "mlp.linear_fc2.weight": "fc2",
    "mlp.router.weight": "router",
}
_IN_EXPERT = {"linear_fc1.weight": "expert_fc1", "linear_fc2.weight": "expert_fc2"}


@dataclass(frozen=True)
class TensorKind:
    """What a global megatron tensor is: ``kind`` (see ``megatron_tensor_kind``), its global
    layer index (None outside the decoder layers) and global expert index (None unless an expert)."""

    kind: str
    layer: int | None = None
    expert: int | None = None


def megatron_tensor_kind(global_name: str) -> TensorKind:
    """Classify a *global* megatron parameter name (``sharding.global_name``: single-rank layer
    and expert indices), local or Transformer Engine spec.

    Kinds: ``embed``, ``final_norm``, ``output``; per layer ``input_norm``, ``qkv``, ``o_proj``,
    ``q_norm``, ``k_norm``, ``post_attn_norm``, ``fc1``, ``fc2``, ``router``, ``expert_fc1``,
    ``expert_fc2``. Raises ``ValueError`` for a name with no HF counterpart.
    """
    if global_name in _TOP_LEVEL:
        return TensorKind(_TOP_LEVEL[global_name])
    m = _LAYER_NAME.match(global_name)
    if m:
        layer, rest = int(m["layer"]), m["rest"]
        if rest in _IN_LAYER:
            return TensorKind(_IN_LAYER[rest], layer)
        e = _EXPERT_NAME.match(rest)
        if e and e["rest"] in _IN_EXPERT:
            return TensorKind(_IN_EXPERT[e["rest"]], layer, int(e["expert"]))
        if rest.startswith("mlp.experts.linear_fc"):
            raise ValueError(
                f"{global_name}: grouped-GEMM experts (TEGroupedMLP) are not mapped; use model.moe_grouped_gemm=false"
            )
    raise ValueError(f"megatron tensor {global_name} has no Hugging Face counterpart here")


def hf_layer_prefix(layer: int) -> str:
    """The HF module path of decoder layer ``layer`` (global index)."""
    return f"model.layers.{layer}"


_HF_SINGLE = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "output": "lm_head.weight",
    "input_norm": "input_layernorm.weight",
    "o_proj": "self_attn.o_proj.weight",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "post_attn_norm": "post_attention_layernorm.weight",
    "fc2": "mlp.down_proj.weight",
    "router": "mlp.gate.weight",
}
"""Kinds that are one HF tensor as they are (per-layer names relative to ``hf_layer_prefix``)."""


def hf_name_of(kind: TensorKind) -> str | None:
    """The HF name of a kind that maps to one tensor unchanged (None for qkv, fc1 and experts)."""
    name = _HF_SINGLE.get(kind.kind)
    if name is None or kind.layer is None:
        return name
    return f"{hf_layer_prefix(kind.layer)}.{name}"


# --------------------------------------------------------------------------- stream conversion


@dataclass
class _LayerExperts:
    fc1: dict[int, torch.Tensor] = field(default_factory=dict)
    fc2: dict[int, torch.Tensor] = field(default_factory=dict)


def hf_from_megatron_stream(
    named_full_tensors: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(global megatron name, full tensor)`` -> ``(hf_name, tensor)`` of ``cfg.arch``'s HF twin."""
    from pivotrl_nemo.registry import HF_FAMILIES

    yield from HF_FAMILIES.get(cfg.arch).to_hf(named_full_tensors, cfg)


def gpt_hf_from_megatron_stream(
    named_full_tensors: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """Convert a stream of ``(global megatron name, full tensor)`` (``sharding.iter_full_state``)
    into ``(hf_name, tensor)`` of the HF twin, in stream order.

    QKV is split per query group, a dense fc1 into gate/up; an MoE layer's experts are held until
    all ``cfg.num_experts`` fc1 and fc2 tensors of that layer arrived, then yielded as
    ``mlp.experts.gate_up_proj`` / ``down_proj``. ``output_layer.weight`` is dropped for tied
    embeddings. Raises ``ValueError`` for unknown names, experts received twice or left incomplete.
    """
    pending: dict[int, _LayerExperts] = {}
    for name, t in named_full_tensors:
        kind = megatron_tensor_kind(name)
        single = hf_name_of(kind)
        if kind.kind == "output" and cfg.tie_word_embeddings:
            continue
        if single is not None:
            yield single, t
            continue
        # Left: qkv, fc1, expert_fc1 / expert_fc2 (every other kind is in _HF_SINGLE), all of them
        # per-layer kinds, for which megatron_tensor_kind always sets the layer.
        assert kind.layer is not None, name
        prefix = hf_layer_prefix(kind.layer)
        if kind.kind == "qkv":
            q, k, v = split_qkv(t, cfg)
            yield f"{prefix}.self_attn.q_proj.weight", q
            yield f"{prefix}.self_attn.k_proj.weight", k
            yield f"{prefix}.self_attn.v_proj.weight", v
        elif kind.kind == "fc1":
            gate, up = split_gate_up(t)
            yield f"{prefix}.mlp.gate_proj.weight", gate
            yield f"{prefix}.mlp.up_proj.weight", up
        else:  # expert_fc1 / expert_fc2
            assert kind.expert is not None, name  # megatron_tensor_kind sets it for the expert kinds
            buf = pending.setdefault(kind.layer, _LayerExperts())
            slot = buf.fc1 if kind.kind == "expert_fc1" else buf.fc2
            if kind.expert in slot:
                raise ValueError(f"{name} received twice")
            if not 0 <= kind.expert < cfg.num_experts:
                raise ValueError(f"{name}: expert index outside num_experts={cfg.num_experts}")
            slot[kind.expert] = t
            if len(buf.fc1) == len(buf.fc2) == cfg.num_experts:
                del pending[kind.layer]
                order = range(cfg.num_experts)
                gate_up, down = fuse_experts([buf.fc1[e] for e in order], [buf.fc2[e] for e in order])
                yield f"{prefix}.mlp.experts.gate_up_proj", gate_up
                yield f"{prefix}.mlp.experts.down_proj", down
    if pending:
        detail = "; ".join(
            f"layer {layer}: {len(b.fc1)} fc1 / {len(b.fc2)} fc2 of {cfg.num_experts}"
            for layer, b in sorted(pending.items())
        )
        raise ValueError(f"incomplete experts at the end of the stream ({detail})")


@torch.no_grad()
def megatron_to_hf(model: Any, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for every parameter of the HF twin (``hf_config_for``).

    A collective under model parallelism: every rank of the world must drain the generator, and
    every rank receives every full tensor (``sharding.iter_full_state``: TP all-gather, experts
    from every EP rank, pipeline stages broadcast in order). Tensors are detached views of
    megatron's weights or fresh tensors (same dtype/device); copy them before the next optimizer
    step if they must outlive it. Accepts a ``MegatronPolicy``, the bare GPTModel or a
    DDP/Float16Module wrapper. Tied embeddings yield only ``model.embed_tokens.weight``.
    """
    yield from hf_from_megatron_stream(iter_full_state(model), cfg)


# --------------------------------------------------------------------------- loading into an HF model


class WeightLoadError(ValueError):
    """The named tensors do not cover the target model's parameters exactly once."""


@torch.no_grad()
def load_named_tensors_into(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy HF-named tensors into ``model``'s parameters in place; returns how many were copied.

    Every parameter of ``model`` (``named_parameters()``, tied weights once) and every persistent
    buffer must be covered exactly once, with the same shape; values are cast to the parameter's dtype and device.
    Raises ``WeightLoadError`` naming the missing, unexpected, duplicated or mis-shaped keys.
    Tensors are copied as they stream in, so after an error the model is partly updated and must
    be reloaded before use.
    """
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    persistent = set(model.state_dict())  # buffers that are weights (Nemotron-H's expert bias)
    params.update({n: b for n, b in model.named_buffers() if n in persistent})
    seen: set[str] = set()
    unexpected: list[str] = []
    duplicated: list[str] = []
    mis_shaped: list[str] = []
    for name, tensor in named_tensors:
        param = params.get(name)
        if param is None:
            unexpected.append(name)
            continue
        if name in seen:
            duplicated.append(name)
            continue
        seen.add(name)
        if tuple(param.shape) != tuple(tensor.shape):
            mis_shaped.append(f"{name}: got {tuple(tensor.shape)}, expected {tuple(param.shape)}")
            continue
        param.copy_(tensor)
    missing = sorted(set(params) - seen)
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("duplicated", duplicated),
        ("mis-shaped", mis_shaped),
    ):
        if keys:
            problems.append(f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
    if problems:
        raise WeightLoadError(f"weight load into {type(model).__name__} failed: " + "; ".join(problems))
    return len(seen)
