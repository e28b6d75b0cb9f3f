"""Build the trained policy: ``build_model`` for every architecture family (``registry.MODEL_ARCHS``),
and the ``gpt`` family itself: a Qwen3-MoE-like megatron-core ``GPTModel`` on the local layer spec
(the ``hybrid`` family is ``models.megatron.hybrid``).

Architecture (matching ``transformers``' Qwen3-MoE / Qwen3 so the HF twin in
``models.megatron.hf.mapping`` computes the same function): pre-norm RMSNorm, GQA self-attention
with per-head RMSNorm on queries and keys (qk layernorm), rotary embeddings (non-interleaved,
base ``cfg.rotary_base``), no linear biases, SwiGLU MLPs; every layer's MLP is an MoE with
``cfg.num_experts`` routed experts (0 builds a dense model). Routing is softmax top-k with the
top-k probabilities renormalised, which megatron computes as a softmax over the top-k logits
(``moe_router_pre_softmax=False``); Qwen3-MoE's ``norm_topk_prob=True`` is the same function.

The local spec (no Transformer Engine) runs on CPU and GPU; the TE spec can replace it on GPU
without changing parameter names that matter to ``hf.mapping``.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from pivotrl_nemo.config.schema import ModelConfig, ParallelConfig
from pivotrl_nemo.distributed.cpu_compat import cuda_to_cpu
from pivotrl_nemo.distributed.setup import seed_everything
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def params_dtype(cfg: ModelConfig) -> torch.dtype:
    """``cfg.params_dtype`` as a torch dtype (rejects unknown names with the accepted ones)."""
    if cfg.params_dtype not in _DTYPES:
        raise ValueError(f"model.params_dtype={cfg.params_dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[cfg.params_dtype]


def transformer_config(cfg: ModelConfig, parallel: ParallelConfig | None = None) -> Any:
    """The megatron ``TransformerConfig`` for ``cfg`` under the ``parallel`` layout."""
    from megatron.core.activations import squared_relu  # lazy: megatron (its own, so TE maps it)
    from megatron.core.transformer.transformer_config import TransformerConfig  # lazy: megatron

    parallel = parallel or ParallelConfig()
    if cfg.num_attention_heads % cfg.num_query_groups != 0:
        raise ValueError(
            f"model.num_attention_heads={cfg.num_attention_heads} is not a multiple of "
            f"model.num_query_groups={cfg.num_query_groups}"
        )
    dtype = params_dtype(cfg)
    moe = cfg.num_experts > 0
    hybrid = cfg.arch == "hybrid"
    if moe and not 0 < cfg.moe_router_topk <= cfg.num_experts:
        raise ValueError(f"model.moe_router_topk={cfg.moe_router_topk} must be in [1, num_experts={cfg.num_experts}]")
    if cfg.moe_router_expert_bias and cfg.moe_router_score_function != "sigmoid":
        raise ValueError("model.moe_router_expert_bias=true needs model.moe_router_score_function=sigmoid")
    moe_kwargs: dict[str, Any] = {}
    if moe:
        moe_kwargs = dict(
            num_moe_experts=cfg.num_experts,
            moe_ffn_hidden_size=cfg.moe_ffn_hidden_size,
            moe_router_topk=cfg.moe_router_topk,
            moe_router_score_function=cfg.moe_router_score_function,
            # False: top-k over logits, then softmax over the k logits == Qwen3-MoE's softmax over
            # all experts, top-k, renormalise (norm_topk_prob=True). Sigmoid scores are always
            # renormalised over the k chosen (Nemotron-H's norm_topk_prob=True).
            moe_router_pre_softmax=False,
            moe_router_enable_expert_bias=cfg.moe_router_expert_bias,
            moe_router_bias_update_rate=cfg.moe_router_bias_update_rate,
            moe_router_topk_scaling_factor=None
            if cfg.moe_router_topk_scaling_factor == 1.0
            else cfg.moe_router_topk_scaling_factor,
            moe_shared_expert_intermediate_size=cfg.moe_shared_expert_ffn_hidden_size or None,
            moe_shared_expert_overlap=False,
            moe_router_load_balancing_type="aux_loss" if cfg.moe_aux_loss_coeff > 0 else "none",
            moe_aux_loss_coeff=cfg.moe_aux_loss_coeff,
            moe_router_dtype=None if cfg.moe_router_dtype == "none" else cfg.moe_router_dtype,
            moe_grouped_gemm=cfg.moe_grouped_gemm,
            moe_token_dispatcher_type=cfg.moe_token_dispatcher_type,
            moe_permute_fusion=False,
            moe_router_fusion=False,
        )
    hybrid_kwargs: dict[str, Any] = {}
    if hybrid:
        from pivotrl_nemo.models.megatron.hybrid import mamba_kernels_available  # lazy: no cycle at import

        hybrid_kwargs = dict(
            mamba_num_heads=cfg.mamba_num_heads,
            mamba_head_dim=cfg.mamba_head_dim,
            mamba_state_dim=cfg.mamba_state_dim,
            mamba_num_groups=cfg.mamba_num_groups,
            # the fused path needs the CUDA causal-conv1d and mamba-ssm kernels; the unfused path
            # is what runs on the CPU (megatron: "not functionally tested for training" upstream;
            # our parity tests cover it)
            use_mamba_mem_eff_path=mamba_kernels_available(),
        )
    swiglu = cfg.mlp_activation == "swiglu"
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim,
        ffn_hidden_size=cfg.ffn_hidden_size if hybrid or not moe else cfg.moe_ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        qk_layernorm=cfg.qk_layernorm,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else squared_relu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_method_std,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        **moe_kwargs,
        **hybrid_kwargs,
    )


class ParallelRMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm with megatron's norm constructor, usable under sequence parallelism.

    megatron's ``WrappedTorchNorm`` refuses ``sequence_parallel``. Under SP each TP rank
    normalises its own slice of the sequence, so the weight's gradient is partial per rank; the
    ``sequence_parallel`` tag on the weight makes megatron's ``finalize_model_grads`` sum it over
    the TP group (as it does for TE's norms). Same parameter name (``weight``) and function as
    ``torch.nn.RMSNorm``.
    """

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, **_: Any) -> None:
        if config.normalization != "RMSNorm":
            raise ValueError(f"ParallelRMSNorm implements RMSNorm, not {config.normalization}")
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        weight: Any = self.weight  # megatron tags parameters with attributes torch's stubs do not declare
        weight.sequence_parallel = config.sequence_parallel


@functools.cache
def _policy_router_class() -> type:
    from megatron.core.transformer.moe.router import TopKRouter  # lazy: megatron

    class PolicyTopKRouter(TopKRouter):
        """megatron-core 0.19.2's ``TopKRouter`` with its expert-bias token count fixed.

        ``_apply_expert_bias`` masks the ``[tokens, experts]`` routing map with the ``[tokens]``
        padding mask, a broadcast error as soon as a right-padded batch meets an expert-bias
        (sigmoid, Nemotron-H) router. Same counting, with the mask broadcast per token.
        """

        def _apply_expert_bias(self, routing_map: torch.Tensor, padding_mask: torch.Tensor | None = None) -> None:
            if self.enable_expert_bias and torch.is_grad_enabled():
                with torch.no_grad():
                    if padding_mask is not None:
                        routing_map = routing_map & ~padding_mask.reshape(-1, 1)
                    self.local_tokens_per_expert += routing_map.sum(dim=0)

    return PolicyTopKRouter


def with_policy_router(moe_spec: Any) -> Any:
    """``moe_spec`` (megatron's MoE module spec: a partial of ``MoELayer``) with ``PolicyTopKRouter``."""
    import dataclasses

    submodules = dataclasses.replace(moe_spec.keywords["submodules"], router=_policy_router_class())
    return functools.partial(moe_spec.func, *moe_spec.args, **(moe_spec.keywords | {"submodules": submodules}))


def use_transformer_engine(cfg: ModelConfig) -> bool:
    """Whether ``cfg.transformer_impl`` selects the Transformer Engine spec here."""
    if cfg.transformer_impl == "local":
        return False
    available = torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None
    if cfg.transformer_impl == "transformer_engine" and not available:
        raise RuntimeError(
            "model.transformer_impl=transformer_engine needs CUDA and Transformer Engine "
            "(an NGC PyTorch/NeMo image); use model.transformer_impl=local or auto"
        )
    return available


def layer_spec(cfg: ModelConfig) -> Any:
    """One transformer layer's spec: the TE spec (``use_transformer_engine``) or the local spec.

    Local: RMSNorm (``ParallelRMSNorm``, so sequence parallelism works), qk layernorm
    (``cfg.qk_layernorm``), SequentialMLP experts, SDPA core attention when
    ``cfg.attention_backend == 'sdpa'``.
    """
    from megatron.core.models.gpt import gpt_layer_specs as specs  # lazy: megatron

    experts = cfg.num_experts if cfg.num_experts > 0 else None
    if use_transformer_engine(cfg):
        spec = specs.get_gpt_layer_with_transformer_engine_spec(
            num_experts=experts, moe_grouped_gemm=cfg.moe_grouped_gemm, qk_layernorm=cfg.qk_layernorm
        )
        if experts:
            spec.submodules.mlp = with_policy_router(spec.submodules.mlp)
        return spec
    if cfg.moe_grouped_gemm:
        raise ValueError(
            "model.moe_grouped_gemm=true needs the Transformer Engine spec "
            "(model.transformer_impl=transformer_engine on a GPU); the local spec runs experts one by one"
        )
    spec = specs.get_gpt_layer_local_spec(
        num_experts=experts, moe_grouped_gemm=False, qk_layernorm=cfg.qk_layernorm, normalization="RMSNorm"
    )
    sub = spec.submodules
    if experts:
        sub.mlp = with_policy_router(sub.mlp)
    sub.input_layernorm = ParallelRMSNorm
    sub.pre_mlp_layernorm = ParallelRMSNorm
    if cfg.qk_layernorm:
        sub.self_attention.submodules.q_layernorm = ParallelRMSNorm
        sub.self_attention.submodules.k_layernorm = ParallelRMSNorm
    if cfg.attention_backend == "sdpa":
        from .sdpa_attention import use_sdpa  # lazy: it subclasses megatron's attention at import

        use_sdpa(spec)
    return spec


def block_spec(cfg: ModelConfig, config: Any, pp_rank: int) -> Any:
    """The decoder block of pipeline stage ``pp_rank``: its layers and the final norm."""
    # lazy: megatron
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    spec = layer_spec(cfg)
    if use_transformer_engine(cfg):
        from megatron.core.extensions.transformer_engine import TENorm  # lazy: megatron + transformer_engine

        norm = TENorm
    else:
        norm = ParallelRMSNorm
    return TransformerBlockSubmodules(
        layer_specs=[spec] * get_num_layers_to_build(config, pp_rank=pp_rank), layer_norm=norm
    )


def router_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The MoE router weights of ``model`` (``...mlp.router.weight``), by name."""
    return [(n, p) for n, p in model.named_parameters() if ".mlp.router." in n]


def freeze_router(model: torch.nn.Module) -> int:
    """Stop gradients to the MoE routers (call before wrapping in DDP); returns how many tensors."""
    params = router_parameters(model)
    for _, p in params:
        p.requires_grad_(False)
    return len(params)


def rotary_base(cfg: ModelConfig) -> int | float:
    """``cfg.rotary_base`` as megatron's rotary embedding takes it (an int when it is whole)."""
    return int(cfg.rotary_base) if float(cfg.rotary_base).is_integer() else cfg.rotary_base


def construct_gpt(
    cfg: ModelConfig, config: Any, vocab_size: int, pre_process: bool, post_process: bool, pg_collection: Any
) -> Any:
    """``registry.MODEL_ARCHS['gpt']``: a GPTModel for ``cfg`` (called by ``build_model``)."""
    from megatron.core.models.gpt import GPTModel  # lazy: megatron

    if cfg.position_embedding != "rope":
        raise ValueError("model.arch=gpt needs model.position_embedding=rope")
    return GPTModel(
        config=config,
        transformer_layer_spec=block_spec(cfg, config, pg_collection.pp.rank()),
        vocab_size=vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=False,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=rotary_base(cfg),
        pg_collection=pg_collection,
    )


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    parallel: ParallelConfig | None = None,
    pg_collection: Any = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
) -> Any:
    """The megatron-core model of ``cfg.arch`` (``registry.MODEL_ARCHS``), initialised from ``cfg.seed``.

    Requires ``distributed.setup.init_distributed`` first; ``pg_collection`` defaults to the
    process groups it initialized (``parallel_state``). Re-seeds torch and the
    model-parallel RNG tracker with ``cfg.seed`` so the init does not depend on prior RNG use.
    ``pre_process``/``post_process`` (embedding / output layer) default to this rank's pipeline
    stage: first and last.
    Freezes the routers when ``cfg.moe_router_freeze``.
    """
    from pivotrl_nemo.registry import MODEL_ARCHS

    construct = MODEL_ARCHS.get(cfg.arch)
    config = transformer_config(cfg, parallel)
    if pg_collection is None:
        from megatron.core.process_groups_config import ProcessGroupCollection  # lazy: megatron

        pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    tp = pg_collection.tp.size()
    if vocab_size % tp != 0:
        raise ValueError(
            f"vocabulary size {vocab_size} is not divisible by tensor_model_parallel_size={tp}; "
            "pick a TP that divides it (or train a domain tokenizer with model.tokenizer_vocab_size "
            "a multiple of TP)"
        )
    pp = pg_collection.pp
    pre_process = pp.rank() == 0 if pre_process is None else pre_process
    post_process = pp.rank() == pp.size() - 1 if post_process is None else post_process
    seed_everything(cfg.seed)
    # cuda_to_cpu: a tied output layer on a later pipeline stage calls .cuda() in the constructor
    with cuda_to_cpu():
        model = construct(cfg, config, vocab_size, pre_process, post_process, pg_collection)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if cfg.moe_router_freeze:
        n = freeze_router(model)
        logger.info("froze %d MoE router weight tensors", n)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "built %s (%s%s): %d layers, hidden %d, %d experts top-%d, vocab %d, %.2fM parameters",
        cfg.name,
        cfg.arch,
        f" {cfg.hybrid_layer_pattern}" if cfg.arch == "hybrid" else "",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_experts,
        cfg.moe_router_topk,
        vocab_size,
        n_params / 1e6,
    )
    return model
