"""megatron-core GPTModel (``models.megatron.build``) -> Hugging Face Qwen3-MoE / Qwen3 tensors.

``hf_config_for`` gives the ``transformers`` config of the twin model that computes the same
function as ``build_gpt_model(cfg, vocab_size)``; ``megatron_to_hf`` yields the twin's tensors by
name. Names are those of the *in-memory* modules of transformers 5.23 (``named_parameters()``):
its Qwen3-MoE keeps each layer's experts fused as 3-D parameters ``mlp.experts.gate_up_proj``
``[E, 2*I, H]`` (gate rows first, then up) and ``mlp.experts.down_proj`` ``[E, H, I]``, and the
router as ``mlp.gate.weight``. (Loading/saving safetensors goes through transformers' own
per-expert conversion; these names are for in-place weight updates of a live model.)

One function per tensor family converts full (unsharded) megatron tensors; ``megatron_to_hf``
walks the model and hands each family the tensors it needs through ``gather``. With TP/PP/EP
(issue 3) ``gather`` becomes a collective that returns the full tensor (TP all-gather along the
partition dim, experts from every EP rank) and layer indices already come from
``layer.layer_number`` (global under PP); the family functions stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from pivotrl_nemo.config.schema import ModelConfig

Gather = Callable[[str, torch.Tensor], torch.Tensor]
"""``gather(megatron_name, local_tensor) -> full tensor``; identity on a single rank."""


def local_gather(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The single-rank ``Gather``: the local tensor is the full tensor."""
    return tensor


# --------------------------------------------------------------------------- config


def hf_config_for(
    cfg: ModelConfig,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """The ``transformers`` config of the HF twin: ``Qwen3MoeConfig``, or ``Qwen3Config`` when dense,
    or ``LlamaConfig`` (dense, ``cfg.qk_layernorm=False``, e.g. an imported SmolLM2)."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    common = dict(
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
        from transformers import LlamaConfig

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
    from transformers import AutoModelForCausalLM

    from pivotrl_nemo.models.megatron.build import params_dtype

    ids: dict[str, Any] = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = hf_config_for(cfg, vocab_size, **ids)
    model = AutoModelForCausalLM.from_config(config, dtype=params_dtype(cfg))
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- tensor families


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


# --------------------------------------------------------------------------- walk


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


def _expert_tensors(mlp: Any, prefix: str, cfg: ModelConfig, gather: Gather) -> Iterator[tuple[str, torch.Tensor]]:
    experts = mlp.experts
    if not hasattr(experts, "local_experts"):
        raise NotImplementedError(
            f"{type(experts).__name__} experts: only SequentialMLP (moe_grouped_gemm=False) is mapped"
        )
    indices = list(mlp.local_expert_indices)
    if len(indices) != cfg.num_experts:
        raise NotImplementedError(
            f"{len(indices)} of {cfg.num_experts} experts on this rank: EP>1 needs an expert gather"
        )
    fc1: list[torch.Tensor] = [torch.empty(0)] * cfg.num_experts
    fc2: list[torch.Tensor] = [torch.empty(0)] * cfg.num_experts
    for local, global_idx in enumerate(indices):
        expert = experts.local_experts[local]
        name = f"{prefix}.mlp.experts.local_experts.{local}"
        fc1[global_idx] = gather(f"{name}.linear_fc1.weight", expert.linear_fc1.weight)
        fc2[global_idx] = gather(f"{name}.linear_fc2.weight", expert.linear_fc2.weight)
    gate_up, down = fuse_experts(fc1, fc2)
    yield "mlp.experts.gate_up_proj", gate_up
    yield "mlp.experts.down_proj", down


def _layer_norm_weight(layer: Any, module_name: str, fused_in: Any) -> torch.Tensor:
    """A pre-norm weight: a separate norm (local spec) or fused into the next linear (TE spec)."""
    norm = getattr(layer, module_name)
    weight = getattr(norm, "weight", None)
    if weight is None:
        weight = getattr(fused_in, "layer_norm_weight", None)
    if weight is None:
        raise ValueError(f"no {module_name} weight found (neither a norm module nor a fused norm)")
    return weight


def _layer_tensors(
    local_idx: int, layer: Any, cfg: ModelConfig, gather: Gather
) -> Iterator[tuple[str, torch.Tensor]]:
    src = f"decoder.layers.{local_idx}"  # this rank's parameter name
    dst = f"model.layers.{layer.layer_number - 1}"  # global index (layer_number includes the PP offset)
    attn = layer.self_attention
    yield f"{dst}.input_layernorm.weight", gather(
        f"{src}.input_layernorm.weight", _layer_norm_weight(layer, "input_layernorm", attn.linear_qkv))
    q, k, v = split_qkv(gather(f"{src}.self_attention.linear_qkv.weight", attn.linear_qkv.weight), cfg)
    yield f"{dst}.self_attn.q_proj.weight", q
    yield f"{dst}.self_attn.k_proj.weight", k
    yield f"{dst}.self_attn.v_proj.weight", v
    yield f"{dst}.self_attn.o_proj.weight", gather(f"{src}.self_attention.linear_proj.weight",
                                                  attn.linear_proj.weight)
    if cfg.qk_layernorm:
        yield f"{dst}.self_attn.q_norm.weight", gather(f"{src}.self_attention.q_layernorm.weight",
                                                      attn.q_layernorm.weight)
        yield f"{dst}.self_attn.k_norm.weight", gather(f"{src}.self_attention.k_layernorm.weight",
                                                      attn.k_layernorm.weight)
    mlp = layer.mlp
    yield f"{dst}.post_attention_layernorm.weight", gather(
        f"{src}.pre_mlp_layernorm.weight",
        _layer_norm_weight(layer, "pre_mlp_layernorm", getattr(mlp, "linear_fc1", None)))
    if cfg.num_experts > 0:
        yield f"{dst}.mlp.gate.weight", gather(f"{src}.mlp.router.weight", mlp.router.weight)
        for name, tensor in _expert_tensors(mlp, src, cfg, gather):
            yield f"{dst}.{name}", tensor
    else:
        gate, up = split_gate_up(gather(f"{src}.mlp.linear_fc1.weight", mlp.linear_fc1.weight))
        yield f"{dst}.mlp.gate_proj.weight", gate
        yield f"{dst}.mlp.up_proj.weight", up
        yield f"{dst}.mlp.down_proj.weight", gather(f"{src}.mlp.linear_fc2.weight", mlp.linear_fc2.weight)


@torch.no_grad()
def megatron_to_hf(
    model: torch.nn.Module, cfg: ModelConfig, gather: Gather = local_gather
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for every parameter of the HF twin (``hf_config_for``).

    Tensors are detached views or fresh tensors of megatron's weights (same dtype/device); copy
    them before the next optimizer step if they must outlive it. Accepts the bare GPTModel or a
    DDP/Float16Module wrapper. Tied embeddings yield only ``model.embed_tokens.weight``.
    """
    gpt = _unwrap(model)
    if getattr(gpt, "pre_process", True):
        yield "model.embed_tokens.weight", gather("embedding.word_embeddings.weight",
                                                  gpt.embedding.word_embeddings.weight)
    for local_idx, layer in enumerate(gpt.decoder.layers):
        yield from _layer_tensors(local_idx, layer, cfg, gather)
    if getattr(gpt, "post_process", True):
        yield "model.norm.weight", gather("decoder.final_layernorm.weight", gpt.decoder.final_layernorm.weight)
        if not cfg.tie_word_embeddings:
            yield "lm_head.weight", gather("output_layer.weight", gpt.output_layer.weight)
