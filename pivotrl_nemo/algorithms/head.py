"""The output head on gathered hidden states: per-token log-probs of the targets.

One entry for both implementations of ``pivotrl_nemo.kernels``: ``impl='torch'`` (the readable,
vocab-parallel reference) builds [N, V/TP] logits for the N loss positions only; ``impl='triton'``
is the fused kernel, which never materialises them. Both return fp32 log-probs and entropies and
are differentiable wrt hidden and weight; the entropy is returned detached (a metric).
"""

from __future__ import annotations

import torch

from pivotrl_nemo.kernels import fused_token_logprobs


def action_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float, impl: str, tp_group=None
) -> tuple[torch.Tensor, torch.Tensor]:
    logprobs, entropy = fused_token_logprobs(
        hidden, weight, targets, temperature=temperature, tp_group=tp_group, impl=impl
    )
    return logprobs, entropy.detach()
