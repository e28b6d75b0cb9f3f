"""The output head on gathered hidden states: per-token log-probs of the targets.

``impl='torch'`` builds [N, V] logits for the N loss positions only (the readable reference);
``impl='triton'`` calls the fused kernel, which never materialises them. Both return fp32
log-probs and a detached entropy per token, and both are differentiable wrt hidden and weight.
"""

from __future__ import annotations

import torch

from .losses import token_entropy, token_logprobs


def action_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float,
                    impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "triton":
        from pivotrl_nemo.kernels import fused_token_logprobs

        return fused_token_logprobs(hidden, weight, targets, temperature=temperature)
    if impl != "torch":
        raise ValueError(f"loss.impl must be 'torch' or 'triton', got {impl!r}")
    logits = hidden.float() @ weight.float().t()
    lp = token_logprobs(logits, targets, temperature)
    with torch.no_grad():
        ent = token_entropy(logits, temperature)
    return lp, ent
