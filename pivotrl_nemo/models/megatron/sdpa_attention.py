"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` materialises [batch x heads x seq x seq] scores
with baddbmm + masked softmax; on CPU that is most of a step at PivotRL prompt lengths
(~600 tokens). SDPA's fused causal kernel (flash attention on CPU, and on GPUs without
Transformer Engine) computes the same function without the score tensor. With Transformer
Engine installed, TE's spec is used instead and this module is not involved.

Same inputs and outputs as ``DotProductAttention.forward``: query [sq, b, np, hn], key/value
[sk, b, ng, hn] (GQA: ng query groups), output [sq, b, np * hn]. Causal masks only; anything
else (padding masks, attention bias, packed sequences, dropout) is refused rather than silently
ignored.
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPADotProductAttention(DotProductAttention):
    def forward(
        self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPA core attention: packed sequences and attention bias need the TE spec")
        if mask_type != AttnMaskType.causal:
            raise NotImplementedError(f"SDPA core attention supports causal masks only, got {mask_type}")
        if self.training and self.attention_dropout.p > 0:
            raise NotImplementedError("SDPA core attention: set attention_dropout=0 (RL needs deterministic log-probs)")
        q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        scale = self.softmax_scale
        if self.config.apply_query_key_layer_scaling:
            scale = scale * self.layer_number  # the local path rescales inside its softmax
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
        sq, b = query.shape[0], query.shape[1]
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


def use_sdpa(spec) -> None:
    """Swap the core attention of a megatron local layer spec for SDPA (in place)."""
    spec.submodules.self_attention.submodules.core_attention = SDPADotProductAttention
