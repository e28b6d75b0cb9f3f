"""Readable torch reference of the fused log-prob / policy-gradient loss.

It is the CPU default (``loss.impl=torch``) and the oracle of the Triton kernel's tests. It
materialises this rank's ``[N, V/TP]`` logits, so it is for correctness, not memory. The steps:

0. ``shard_logits``         this shard's logits ``hidden @ W_shard^T / T`` (upcast first)
1. ``global_max``           row max: per shard (``losses.logits_max``), MAX all-reduce over TP
2. ``global_target_logit``  the owning shard picks the target's logit (``losses.target_logit``),
                            SUM all-reduce over TP (the other shards contribute 0)
3. ``global_sum_exp``       per-shard sum of exp(logit - global max) (``losses.log_sum_exp``),
                            SUM all-reduce; lse = max + log S; log-prob = target logit - lse,
                            clamped to <= 0
3b. ``global_entropy``      log S - E_p[logit - max], the expectation summed over shards
4-7. ratio, clip, k3 KL and the global-token reduction: ``losses.clipped_pg_loss``
    (``importance_ratio``, ``clipped_surrogate``, ``k3_kl``, ``masked_global_sum``).

With ``tp_group=None`` (or a group of one) the all-reduces are no-ops and the result equals
``losses.token_logprobs`` / ``losses.token_entropy`` on the full logits.
"""

from __future__ import annotations

import torch

from . import losses
from .parallel import all_reduce_max_, copy_to_tp, reduce_from_tp, vocab_start


def shard_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float = 1.0,
    tp_group=None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Step 0: ``[N, V/TP]`` logits of this shard, divided by the temperature.

    Inputs are upcast to ``compute_dtype`` before the product (bf16 products are exact in fp32).
    ``copy_to_tp`` makes ``hidden``'s gradient the sum over all shards.
    """
    hidden = copy_to_tp(hidden, tp_group)
    logits = hidden.to(compute_dtype) @ weight.to(compute_dtype).T
    return logits / temperature if temperature != 1.0 else logits


def global_max(logits: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Step 1: row max over the whole vocabulary. No gradient: the log-sum-exp does not
    depend on the shift, so a constant shift gives the exact gradient."""
    return all_reduce_max_(losses.logits_max(logits.detach()), tp_group)


def global_target_logit(logits: torch.Tensor, targets: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Step 2: each row's target logit, taken on the shard that owns the target id.

    Target ids are global; ids outside ``[0, V)`` (e.g. padding at masked positions) give 0.
    """
    local_vocab = logits.shape[-1]
    local = targets.long() - vocab_start(local_vocab, tp_group)
    owned = (local >= 0) & (local < local_vocab)
    picked = losses.target_logit(logits, local.clamp(0, local_vocab - 1))
    return reduce_from_tp(torch.where(owned, picked, torch.zeros_like(picked)), tp_group)


def global_sum_exp(logits: torch.Tensor, row_max: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Step 3: ``S = sum over the whole vocabulary of exp(logit - max)``: per shard through
    ``losses.log_sum_exp``, then a SUM all-reduce. The log-sum-exp is ``max + log S``."""
    shard_sum_exp = torch.exp(losses.log_sum_exp(logits, row_max) - row_max)
    return reduce_from_tp(shard_sum_exp, tp_group)


def global_entropy(logits: torch.Tensor, row_max: torch.Tensor, sum_exp: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Step 3b: entropy of softmax(logits / T) = ``log S - E_p[logit - max]``.

    ``E_p[logit - max] = sum exp(logit - max) (logit - max) / S`` with the sum all-reduced.
    Each shard's term depends on its own logits only; everything after the all-reduces is the same
    on every rank, which is what makes the identity backward of ``reduce_from_tp`` exact. (Using
    the global lse inside a per-shard term that is reduced again would drop the other shards'
    share of its gradient.)
    """
    shifted = logits - row_max.unsqueeze(-1)
    shard_expected = (torch.exp(shifted) * shifted).sum(dim=-1)
    return torch.log(sum_exp) - reduce_from_tp(shard_expected, tp_group) / sum_exp


def token_logprobs_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    tp_group=None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``targets`` and entropies, fp32, differentiable wrt hidden and weight.

    hidden: [N, H] (same on every TP rank); weight: [V/TP, H] this rank's shard; targets: [N]
    global ids. Log-probs are clamped to ``<= 0``.
    """
    logits = shard_logits(hidden, weight, temperature, tp_group, compute_dtype)
    row_max = global_max(logits, tp_group)
    target = global_target_logit(logits, targets, tp_group)
    sum_exp = global_sum_exp(logits, row_max, tp_group)
    logprobs = torch.clamp(target - (row_max + torch.log(sum_exp)), max=0.0)
    entropy = global_entropy(logits, row_max, sum_exp, tp_group)
    return logprobs, entropy


def pg_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    global_valid_tokens: float | torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    tp_group=None,
) -> tuple[losses.LossOutput, torch.Tensor, torch.Tensor]:
    """Steps 0-7: (LossOutput, logprobs, entropy); the loss part is ``losses.clipped_pg_loss``."""
    logprobs, entropy = token_logprobs_entropy(hidden, weight, targets, temperature, tp_group)
    out = losses.clipped_pg_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        global_valid_tokens,
        clip_low=clip_low,
        clip_high=clip_high,
        kl_coef=kl_coef,
        ref_logprobs=ref_logprobs,
    )
    return out, logprobs, entropy
