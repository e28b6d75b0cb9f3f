"""The hybrid policy family: megatron-core's ``HybridModel`` (Mamba-2 + attention + MLP/MoE layers).

Nemotron-H / Nemotron-3 (transformers' ``nemotron_h``) are built this way: one layer kind per
symbol of ``model.hybrid_layer_pattern``, ``M`` a Mamba-2 mixer, ``*`` self-attention (no
RoPE: ``model.position_embedding=none``), ``-`` a dense MLP, ``E`` an MoE MLP (sigmoid router
with expert bias, a shared expert, squared-ReLU experts). Every layer is pre-norm with its own
RMSNorm and a residual; the stack ends with a final RMSNorm.

megatron-core 0.19 ships only Transformer Engine specs for hybrid models; ``local_stack_spec``
is the same stack on megatron's own modules (torch RMSNorm, Column/RowParallelLinear, SDPA or
megatron's attention, SequentialMLP experts), which runs on CPU and GPU. With Transformer Engine
present (``build.use_transformer_engine``) the TE spec is used unchanged, with its fused norms
(``*.layer_norm_weight``), as on NVIDIA's clusters. The Mamba kernels: ``mamba-ssm`` on a GPU
(the ``gpu`` extra); on a CPU ``distributed.cpu_compat`` registers the torch SSD scan and gated
norm of ``pivotrl_nemo.kernels.ssd_reference`` in their place.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.config.validate import hybrid_pattern_problems
from pivotrl_nemo.models.megatron.build import (
    ParallelRMSNorm,
    rotary_base,
    use_transformer_engine,
    with_policy_router,
)


def _local_stack_spec(cfg: ModelConfig) -> Any:
    """The hybrid stack on megatron-core's local modules (no Transformer Engine)."""
    # lazy: megatron
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
    from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import (
        MoETransformerLayer,
        TransformerLayer,
        TransformerLayerSubmodules,
    )

    core_attention: Any = DotProductAttention
    if cfg.attention_backend == "sdpa":
        from .sdpa_attention import SDPADotProductAttention  # lazy: it subclasses megatron's attention

        core_attention = SDPADotProductAttention
    mamba = ModuleSpec(
        module=MambaLayer,
        submodules=MambaLayerSubmodules(
            norm=ParallelRMSNorm,
            mixer=ModuleSpec(
                module=MambaMixer,
                params={"d_conv": cfg.mamba_conv_kernel, "chunk_size": cfg.mamba_chunk_size},
                submodules=MambaMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear),
            ),
            mamba_bda=get_bias_dropout_add,
        ),
    )
    attention = ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=ParallelRMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=core_attention,
                    linear_proj=RowParallelLinear,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
        ),
    )
    dense = ModuleSpec(
        module=MLPLayer,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=ParallelRMSNorm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )
    moe = ModuleSpec(
        module=MoETransformerLayer,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=ParallelRMSNorm,
            mlp=with_policy_router(
                get_moe_module_spec(use_te=False, num_experts=max(cfg.num_experts, 1), moe_grouped_gemm=False)
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )
    return ModuleSpec(
        module=HybridStack,
        # HybridStack builds its final norm from a hard-coded TENorm; the local stack builds it
        # without one and ``construct_hybrid`` attaches a torch RMSNorm (no patching needed)
        params={"post_layer_norm": False},
        submodules=HybridStackSubmodules(mamba_layer=mamba, attention_layer=attention, mlp_layer=dense, moe_layer=moe),
    )


def stack_spec(cfg: ModelConfig) -> Any:
    """The hybrid stack spec: megatron's Transformer Engine spec, or ``_local_stack_spec``."""
    if use_transformer_engine(cfg):
        import copy

        from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec  # lazy: megatron + TE

        spec = copy.deepcopy(hybrid_stack_spec)
        moe_layer = spec.submodules.moe_layer.submodules
        moe_layer.mlp = with_policy_router(moe_layer.mlp)
        return spec
    if cfg.moe_grouped_gemm:
        raise ValueError(
            "model.moe_grouped_gemm=true needs the Transformer Engine spec "
            "(model.transformer_impl=transformer_engine on a GPU); the local spec runs experts one by one"
        )
    return _local_stack_spec(cfg)


@functools.cache  # one class, however many policies are built
def _policy_model_class() -> type:
    from megatron.core.models.hybrid.hybrid_model import HybridModel  # lazy: megatron

    class PolicyHybridModel(HybridModel):
        """``HybridModel`` with two things GPTModel does: it takes an ``output_processor`` (the
        policy's fused log-prob head reads the final hidden states and the output weight instead
        of logits), and under sequence parallelism it splits the ``[B, S]`` padding mask along the
        sequence like the hidden states (megatron-core 0.19.2's HybridModel passes it whole, so
        an MoE router sees a mask twice its tokens)."""

        def forward(self, *args: Any, output_processor: Any = None, **kwargs: Any) -> Any:
            mask = kwargs.get("padding_mask")
            if mask is not None and self.config.sequence_parallel:
                from megatron.core.tensor_parallel import scatter_to_sequence_parallel_region  # lazy: megatron

                scattered = scatter_to_sequence_parallel_region(
                    mask.transpose(0, 1).contiguous(), group=self.pg_collection.tp
                )
                kwargs["padding_mask"] = scattered.transpose(0, 1).contiguous()
            if output_processor is None or not self.post_process:
                return super().forward(*args, **kwargs)
            with _hidden_states_only(self):
                hidden = super().forward(*args, **kwargs)  # after the stack's final norm
            weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
            return output_processor(
                hidden_states=hidden, output_layer=self.output_layer, output_weight=weight, config=self.config
            )

    return PolicyHybridModel


@contextlib.contextmanager
def _hidden_states_only(model: Any) -> Iterator[None]:
    # HybridModel.forward returns the decoder's output when post_process is False (as a middle
    # pipeline stage does); the stack itself keeps its final norm.
    model.post_process = False
    try:
        yield
    finally:
        model.post_process = True


def construct_hybrid(
    cfg: ModelConfig, config: Any, vocab_size: int, pre_process: bool, post_process: bool, pg_collection: Any
) -> Any:
    """``registry.MODEL_ARCHS['hybrid']``: a HybridModel for ``cfg`` (called by ``build.build_model``)."""
    problems = hybrid_pattern_problems(cfg)
    if problems:
        raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
    if pg_collection.pp.size() > 1:
        raise ValueError("arch=hybrid with pipeline parallelism is not supported yet (PP=1)")
    model = _policy_model_class()(
        config=config,
        hybrid_stack_spec=stack_spec(cfg),
        vocab_size=vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        hybrid_layer_pattern=cfg.hybrid_layer_pattern,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=False,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        position_embedding_type=cfg.position_embedding,
        rotary_base=rotary_base(cfg),
        pg_collection=pg_collection,
    )
    stack = model.decoder
    if post_process and not stack.post_layer_norm:  # the local stack: see _local_stack_spec
        stack.final_norm = ParallelRMSNorm(config, config.hidden_size, eps=config.layernorm_epsilon)
        stack.post_layer_norm = True
    return model


def mamba_kernels_available() -> bool:
    """Whether the fused Mamba path can run here (CUDA and ``mamba-ssm``'s compiled kernels)."""
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None
