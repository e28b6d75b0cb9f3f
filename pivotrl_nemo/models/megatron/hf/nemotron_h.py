"""The hybrid family's Hugging Face twin: transformers' Nemotron-H (``model_type='nemotron_h'``).

Names, megatron (``models.megatron.hybrid``, global single-rank names) -> HF, per layer
``decoder.layers.L.*`` -> ``model.layers.L.*`` (checkpoints on disk: ``backbone.layers.L.*``):

=====================================  ==============================================
Mamba  ``norm.weight``                  ``norm.weight``
       ``mixer.in_proj.weight``         ``mixer.in_proj.weight`` (same [z, x, B, C, dt] rows)
       ``mixer.conv1d_weight/_bias``    ``mixer.conv1d.weight/.bias``
       ``mixer.{dt_bias,A_log,D}``      same; ``mixer.norm.weight``, ``mixer.out_proj.weight`` same
Attn   ``input_layernorm.weight``       ``norm.weight``
       ``self_attention.linear_qkv``    ``mixer.{q,k,v}_proj`` (megatron interleaves per KV group)
       ``self_attention.linear_proj``   ``mixer.o_proj``
MLP    ``pre_mlp_layernorm.weight``     ``norm.weight``; ``mlp.linear_fc1/2`` -> ``mixer.up/down_proj``
MoE    ``pre_mlp_layernorm.weight``     ``norm.weight``; ``mlp.router.weight`` -> ``mixer.gate.weight``
       ``mlp.router.expert_bias``       ``mixer.gate.e_score_correction_bias`` (a buffer both sides)
       ``...local_experts.e.linear_fc1``  in memory row e of ``mixer.experts.up_proj`` [E, I, H];
                                        on disk ``mixer.experts.e.up_proj.weight`` (fc2: down_proj)
       ``mlp.shared_experts.linear_fc1/2``  ``mixer.shared_experts.up/down_proj``
=====================================  ==============================================

plus ``embedding.word_embeddings`` / ``decoder.final_norm`` / ``output_layer`` -> ``embeddings`` /
``norm_f`` / ``lm_head``. The Transformer Engine spec fuses each pre-norm into the next linear
(``mixer.in_proj.layer_norm_weight``, ``self_attention.linear_qkv.layer_norm_weight``,
``mlp.linear_fc1.layer_norm_weight``) and runs experts as one grouped GEMM
(``mlp.experts.linear_fc1.weight{e}``); those names are mapped too, written against megatron-core
0.19's TE spec and **not run** until a GPU runs them.

Semantics that differ and are handled: Nemotron-H has no RoPE (``position_embedding='none'``);
its router is sigmoid, top-k on score + bias, renormalised, times ``routed_scaling_factor``
(megatron: ``moe_router_score_function='sigmoid'``, expert bias, ``topk_scaling_factor``);
megatron fixes its Mamba gated norms' eps at 1e-5, HF's default (a checkpoint with another
``layer_norm_epsilon`` differs by that eps in those norms only). One more difference: transformers'
mixer clamps ``softplus(dt + dt_bias)`` from below at ``time_step_min`` (it ignores
``time_step_limit``), megatron does not clamp. The two compute the same function wherever a head's
step is at least ``time_step_min`` (1e-3 in Nemotron-H checkpoints); below it the HF twin takes a
slightly larger step. The parity tests use a twin with ``time_step_min`` far below any step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.models.megatron.hf.family import HFFamily, fuse_qkv, read_hf_tensor, split_qkv
from pivotrl_nemo.models.megatron.hf.importer import HFImportError

PATTERN_TO_HF = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
"""Hybrid pattern symbol -> NemotronH ``layers_block_type`` (transformers canonicalises mamba /
attention to 'linear_attention' / 'full_attention')."""
_HF_TO_PATTERN = {
    "mamba": "M",
    "linear_attention": "M",
    "attention": "*",
    "full_attention": "*",
    "mlp": "-",
    "moe": "E",
}

_TOP = {
    "embedding.word_embeddings.weight": "embeddings.weight",
    "decoder.final_norm.weight": "norm_f.weight",
}
_IN_LAYER = {
    "norm.weight": "norm.weight",
    "mixer.in_proj.layer_norm_weight": "norm.weight",  # TE: fused into in_proj
    "mixer.in_proj.weight": "mixer.in_proj.weight",
    "mixer.conv1d_weight": "mixer.conv1d.weight",
    "mixer.conv1d_bias": "mixer.conv1d.bias",
    "mixer.dt_bias": "mixer.dt_bias",
    "mixer.A_log": "mixer.A_log",
    "mixer.D": "mixer.D",
    "mixer.norm.weight": "mixer.norm.weight",
    "mixer.out_proj.weight": "mixer.out_proj.weight",
    "input_layernorm.weight": "norm.weight",
    "self_attention.linear_qkv.layer_norm_weight": "norm.weight",  # TE
    "self_attention.linear_proj.weight": "mixer.o_proj.weight",
    "pre_mlp_layernorm.weight": "norm.weight",
    "mlp.linear_fc1.layer_norm_weight": "norm.weight",  # TE dense MLP
    "mlp.linear_fc1.weight": "mixer.up_proj.weight",
    "mlp.linear_fc2.weight": "mixer.down_proj.weight",
    "mlp.router.weight": "mixer.gate.weight",
    "mlp.router.expert_bias": "mixer.gate.e_score_correction_bias",
    "mlp.shared_experts.linear_fc1.weight": "mixer.shared_experts.up_proj.weight",
    "mlp.shared_experts.linear_fc2.weight": "mixer.shared_experts.down_proj.weight",
}
_MAMBA: tuple[str, ...] = (
    "norm.weight",
    "mixer.in_proj.weight",
    "mixer.conv1d_weight",
    "mixer.conv1d_bias",
    "mixer.dt_bias",
    "mixer.A_log",
    "mixer.D",
    "mixer.norm.weight",
    "mixer.out_proj.weight",
)
_LAYER = re.compile(r"^decoder\.layers\.(?P<layer>\d+)\.(?P<rest>.+)$")
_EXPERT = re.compile(
    r"^mlp\.experts\.(?:local_experts\.(?P<e>\d+)\.linear_(?P<fc>fc[12])\.weight"
    r"|linear_(?P<gfc>fc[12])\.weight(?P<ge>\d+))$"  # local SequentialMLP | TE grouped GEMM
)
_QKV = "self_attention.linear_qkv.weight"


@dataclass(frozen=True)
class HybridTensor:
    """A global megatron tensor of the hybrid model: its HF name relative to the model prefix
    (``layers.L.mixer.experts.up_proj`` for an expert), and the expert index (or None)."""

    hf: str
    layer: int | None = None
    expert: int | None = None
    qkv: bool = False


def classify(global_name: str) -> HybridTensor:
    """Where a global megatron name of the hybrid model goes in Nemotron-H (``ValueError`` if nowhere)."""
    if global_name in _TOP:
        return HybridTensor(_TOP[global_name])
    if global_name == "output_layer.weight":
        return HybridTensor("lm_head.weight")
    m = _LAYER.match(global_name)
    if m:
        layer, rest = int(m["layer"]), m["rest"]
        p = f"layers.{layer}"
        if rest in _IN_LAYER:
            return HybridTensor(f"{p}.{_IN_LAYER[rest]}", layer)
        if rest == _QKV:
            return HybridTensor(f"{p}.mixer", layer, qkv=True)
        e = _EXPERT.match(rest)
        if e:
            fc = e["fc"] or e["gfc"]
            expert = int(e["e"] if e["e"] is not None else e["ge"])
            return HybridTensor(f"{p}.mixer.experts.{'up_proj' if fc == 'fc1' else 'down_proj'}", layer, expert)
    raise ValueError(f"megatron tensor {global_name} has no Nemotron-H counterpart")


def _full(hf: str) -> str:
    return hf if hf.startswith("lm_head.") else f"model.{hf}"


# --------------------------------------------------------------------------- config


def hf_config_for(cfg: ModelConfig, vocab_size: int, **token_ids: Any) -> Any:
    """The ``NemotronHConfig`` computing the same function as ``build_model(cfg)`` (arch=hybrid)."""
    from transformers import NemotronHConfig  # lazy: transformers

    ids = {k: v for k, v in token_ids.items() if v is not None}
    config = NemotronHConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        layers_block_type=[PATTERN_TO_HF[s] for s in cfg.hybrid_layer_pattern],
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        intermediate_size=cfg.ffn_hidden_size,
        mlp_hidden_act="relu2",
        mamba_num_heads=cfg.mamba_num_heads,
        mamba_head_dim=cfg.mamba_head_dim,
        ssm_state_size=cfg.mamba_state_dim,
        n_groups=cfg.mamba_num_groups,
        conv_kernel=cfg.mamba_conv_kernel,
        chunk_size=cfg.mamba_chunk_size,
        n_routed_experts=max(cfg.num_experts, 1),
        num_experts_per_tok=cfg.moe_router_topk,
        moe_intermediate_size=cfg.moe_ffn_hidden_size,
        moe_shared_expert_intermediate_size=cfg.moe_shared_expert_ffn_hidden_size,
        routed_scaling_factor=cfg.moe_router_topk_scaling_factor,
        norm_topk_prob=True,
        n_group=1,
        topk_group=1,
        layer_norm_epsilon=cfg.norm_epsilon,
        initializer_range=cfg.init_method_std,
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_bias=False,
        mlp_bias=False,
        attention_bias=False,
        **ids,
    )
    return config  # vLLM reads the pattern through transformers' hybrid_override_pattern property


def model_config_from_hf(hf_config: Any, params_dtype: str) -> ModelConfig:
    """The ``ModelConfig`` (arch=hybrid) equivalent to a transformers ``NemotronHConfig``."""

    def refuse(what: str) -> None:
        raise HFImportError(f"nemotron_h: {what} is not supported by the hybrid policy")

    def get(key: str, default: Any = None) -> Any:
        return getattr(hf_config, key, default)

    if get("use_bias") or get("mlp_bias") or get("attention_bias") or get("mamba_proj_bias"):
        refuse("a linear bias (use_bias / mlp_bias / attention_bias / mamba_proj_bias)")
    if not get("use_conv_bias", True):
        refuse("use_conv_bias=false (megatron's Mamba conv always has a bias)")
    if get("mlp_hidden_act", "relu2") != "relu2" or get("mamba_hidden_act", "silu") != "silu":
        refuse(f"activations mlp={get('mlp_hidden_act')!r} / mamba={get('mamba_hidden_act')!r} (need relu2 / silu)")
    if get("moe_latent_size") is not None:
        refuse("moe_latent_size (Nemotron-3-Super's latent MoE)")
    if get("num_nextn_predict_layers", 0):
        refuse("multi-token prediction layers (num_nextn_predict_layers > 0)")
    if get("sliding_window") is not None:
        refuse("sliding-window attention")
    if get("n_group", 1) != 1 or get("topk_group", 1) != 1:
        refuse("group-limited routing (n_group / topk_group != 1)")
    pattern = "".join(_HF_TO_PATTERN[t] for t in hf_config.layers_block_type)
    moe = "E" in pattern
    if moe and get("num_experts_per_tok", 1) > 1 and not get("norm_topk_prob", True):
        refuse("norm_topk_prob=false with top-k > 1 (megatron renormalises sigmoid scores)")
    if moe and get("n_shared_experts", 1) not in (0, 1):
        refuse("more than one shared expert block (n_shared_experts > 1)")
    return ModelConfig(
        name=Path(get("name_or_path", "") or "nemotron_h").name,
        arch="hybrid",
        hybrid_layer_pattern=pattern,
        num_layers=len(pattern),
        hidden_size=hf_config.hidden_size,
        num_attention_heads=hf_config.num_attention_heads,
        num_query_groups=get("num_key_value_heads") or hf_config.num_attention_heads,
        head_dim=get("head_dim") or hf_config.hidden_size // hf_config.num_attention_heads,
        qk_layernorm=False,
        ffn_hidden_size=hf_config.intermediate_size,
        mlp_activation="squared_relu",
        position_embedding="none",
        mamba_num_heads=hf_config.mamba_num_heads,
        mamba_head_dim=hf_config.mamba_head_dim,
        mamba_state_dim=hf_config.ssm_state_size,
        mamba_num_groups=hf_config.n_groups,
        mamba_conv_kernel=hf_config.conv_kernel,
        mamba_chunk_size=hf_config.chunk_size,
        num_experts=hf_config.n_routed_experts if moe else 0,
        moe_ffn_hidden_size=hf_config.moe_intermediate_size,
        moe_router_topk=hf_config.num_experts_per_tok,
        moe_router_score_function="sigmoid",
        moe_router_expert_bias=moe,
        moe_router_topk_scaling_factor=float(get("routed_scaling_factor", 1.0)),
        moe_shared_expert_ffn_hidden_size=hf_config.moe_shared_expert_intermediate_size
        if moe and get("n_shared_experts", 1)
        else 0,
        moe_aux_loss_coeff=0.0,
        max_position_embeddings=hf_config.max_position_embeddings,
        norm_epsilon=hf_config.layer_norm_epsilon,
        init_method_std=get("initializer_range", 0.02),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        params_dtype=params_dtype,
    )


# --------------------------------------------------------------------------- megatron -> HF


@dataclass
class _Experts:
    fc1: dict[int, torch.Tensor] = field(default_factory=dict)
    fc2: dict[int, torch.Tensor] = field(default_factory=dict)


def hf_from_megatron_stream(
    named_full_tensors: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(global megatron name, full tensor)`` -> ``(transformers in-memory name, tensor)``: q/k/v
    split, a layer's experts stacked into ``mixer.experts.up_proj`` / ``down_proj`` once all have
    arrived, the tied output layer dropped."""
    pending: dict[int, _Experts] = {}
    for name, t in named_full_tensors:
        kind = classify(name)
        if kind.hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if kind.qkv:
            q, k, v = split_qkv(t, cfg)
            for proj, w in zip("qkv", (q, k, v)):
                yield f"model.{kind.hf}.{proj}_proj.weight", w
            continue
        if kind.expert is None:
            yield _full(kind.hf), t
            continue
        assert kind.layer is not None
        buf = pending.setdefault(kind.layer, _Experts())
        slot = buf.fc1 if kind.hf.endswith("up_proj") else buf.fc2
        if kind.expert in slot or not 0 <= kind.expert < cfg.num_experts:
            raise ValueError(f"{name}: expert received twice or outside num_experts={cfg.num_experts}")
        slot[kind.expert] = t
        if len(buf.fc1) == len(buf.fc2) == cfg.num_experts:
            del pending[kind.layer]
            prefix = f"model.layers.{kind.layer}.mixer.experts"
            yield f"{prefix}.up_proj", torch.stack([buf.fc1[e] for e in range(cfg.num_experts)])
            yield f"{prefix}.down_proj", torch.stack([buf.fc2[e] for e in range(cfg.num_experts)])
    if pending:
        raise ValueError(f"incomplete experts at the end of the stream (layers {sorted(pending)})")


# --------------------------------------------------------------------------- HF -> megatron


def megatron_global_names(cfg: ModelConfig) -> list[str]:
    """Global names (and the expert-bias buffers) of a single-rank local-spec hybrid model."""
    names = ["embedding.word_embeddings.weight"]
    for layer, kind in enumerate(cfg.hybrid_layer_pattern):
        p = f"decoder.layers.{layer}"
        if kind == "M":
            names += [f"{p}.{n}" for n in _MAMBA]
        elif kind == "*":
            names += [f"{p}.input_layernorm.weight", f"{p}.{_QKV}", f"{p}.self_attention.linear_proj.weight"]
        elif kind == "-":
            names += [f"{p}.pre_mlp_layernorm.weight", f"{p}.mlp.linear_fc1.weight", f"{p}.mlp.linear_fc2.weight"]
        else:
            names += [f"{p}.pre_mlp_layernorm.weight", f"{p}.mlp.router.weight", f"{p}.mlp.router.expert_bias"]
            for e in range(cfg.num_experts):
                names += [f"{p}.mlp.experts.local_experts.{e}.linear_fc{i}.weight" for i in (1, 2)]
            if cfg.moe_shared_expert_ffn_hidden_size:
                names += [f"{p}.mlp.shared_experts.linear_fc{i}.weight" for i in (1, 2)]
    names.append("decoder.final_norm.weight")
    if not cfg.tie_word_embeddings:
        names.append("output_layer.weight")
    return names


class NemotronHSource:
    """``source(global megatron name) -> full tensor`` over Nemotron-H tensors ``state``: an
    in-memory ``state_dict()`` (``model.`` names, fused 3-D experts) or a checkpoint on disk
    (``backbone.`` names, per-expert tensors; a ``SafetensorsState``). Same interface as
    ``importer.HFSource`` (``keys_for``, ``known_keys``, ``used``)."""

    def __init__(self, state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> None:
        self.state = state
        self.cfg = cfg
        self.prefix = "backbone." if any(k.startswith("backbone.") for k in state) else "model."
        self.fused_experts = any(re.search(r"\.mixer\.experts\.(up|down)_proj$", k) for k in state)
        self.used: set[str] = set()

    def _name(self, hf: str) -> str:
        return hf if hf.startswith("lm_head.") else self.prefix + hf

    def keys_for(self, global_name: str) -> list[str]:
        """The HF keys ``self(global_name)`` reads (``ValueError`` for an unmapped name)."""
        kind = classify(global_name)
        if kind.qkv:
            return [self._name(f"{kind.hf}.{x}_proj.weight") for x in "qkv"]
        if kind.expert is not None and not self.fused_experts:
            stem, proj = kind.hf.rsplit(".", 1)
            return [self._name(f"{stem}.{kind.expert}.{proj}.weight")]
        if kind.hf == "embeddings.weight" and self.cfg.tie_word_embeddings and self._name(kind.hf) not in self.state:
            return ["lm_head.weight"]
        return [self._name(kind.hf)]

    def known_keys(self) -> set[str]:
        """Every HF key the whole model reads (plus both copies of tied embeddings)."""
        keys = {k for n in megatron_global_names(self.cfg) for k in self.keys_for(n)}
        if self.cfg.tie_word_embeddings:
            keys |= {"lm_head.weight", self._name("embeddings.weight")}
        return keys

    def _get(self, key: str, index: int | None = None) -> torch.Tensor:
        self.used.add(key)
        return read_hf_tensor(self.state, key, index)

    def __call__(self, global_name: str) -> torch.Tensor:
        kind = classify(global_name)
        keys = self.keys_for(global_name)
        if kind.qkv:
            q, k, v = (self._get(key) for key in keys)
            return fuse_qkv(q, k, v, self.cfg)
        if kind.expert is not None and self.fused_experts:
            return self._get(keys[0], kind.expert)
        return self._get(keys[0])


NEMOTRON_H_FAMILY = HFFamily(
    model_types=("nemotron_h",),
    hf_config_for=hf_config_for,
    to_hf=hf_from_megatron_stream,
    source=NemotronHSource,
    from_hf_config=model_config_from_hf,
)
"""``registry.HF_FAMILIES['hybrid']``."""
