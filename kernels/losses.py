"""Token-level clipped policy-gradient loss, as readable named steps (torch only).

The readable reference of the fused path: ``reference`` (the vocab-parallel torch head) and
``fused_pg_loss`` compute their log-probs blockwise and then apply ``clipped_pg_loss`` from here,
the Triton kernel is tested against these steps, and the training step (``algorithms.grpo_step``)
calls ``clipped_pg_loss`` on the head's log-probs. All math is in fp32 whatever the input dtype.

Normalisation contract: the loss of a micro-batch is ``sum(per_token_loss * mask) /
global_valid_tokens``, where ``global_valid_tokens`` counts the mask over the *whole global
batch* (all micro-batches, all data-parallel ranks). Summing micro-batch losses (and averaging
nothing) therefore gives exactly the full-batch gradient, for any micro-batching or DP layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# ----- log-probs from logits (the unfused path) ------------------------------------------------


def logits_max(logits: torch.Tensor) -> torch.Tensor:
    """Step 1: row max over the vocabulary (for a stable log-sum-exp), fp32, shape [N]."""
    return logits.float().max(dim=-1).values


def target_logit(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Step 2: the logit of each target token, fp32, shape [N]."""
    return logits.float().gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def log_sum_exp(logits: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """Step 3: log(sum(exp(logits))) computed as max + log(sum(exp(logits - max)))."""
    return row_max + torch.log(torch.exp(logits.float() - row_max.unsqueeze(-1)).sum(dim=-1))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] for every row; never positive."""
    scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
    m = logits_max(scaled)
    return target_logit(scaled, targets) - log_sum_exp(scaled, m)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) per row, fp32 (a metric; no gradient needed)."""
    scaled = logits.float() / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


# ----- the loss on log-probs ------------------------------------------------------------------


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """Step 4: w = pi_theta / pi_old per token."""
    return torch.exp(logprobs - old_logprobs)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float):
    """Step 5: per-token loss ``-min(w A, clip(w, 1 - eps_low, 1 + eps_high) A)`` and a mask of
    tokens where the clipped branch was taken (it has zero gradient)."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped
    return loss, was_clipped


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Step 6: the k3 estimator of KL(pi_theta || pi_ref) per token: e^(r-l) - (r-l) - 1 >= 0."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


def masked_global_sum(values: torch.Tensor, mask: torch.Tensor, global_valid_tokens: float | torch.Tensor):
    """Step 7: sum over valid tokens divided by the global valid-token count."""
    return (values * mask).sum() / global_valid_tokens


@dataclass
class LossOutput:
    loss: torch.Tensor
    """Scalar to backpropagate (normalised by the global valid-token count)."""
    pg_loss: torch.Tensor
    kl: torch.Tensor
    """Sum of masked k3 KL / global valid tokens (0 when disabled)."""
    clip_fraction: torch.Tensor
    """Fraction of this micro-batch's valid tokens where clipping bound (local normaliser)."""
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor


def clipped_pg_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    global_valid_tokens: float | torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
) -> LossOutput:
    """The PivotRL/GRPO token-level objective on per-token tensors of one shape.

    ``advantages`` is per token (a sequence's advantage broadcast over its action tokens).
    """
    logprobs = logprobs.float()
    mask = mask.float()
    ratio = importance_ratio(logprobs, old_logprobs.float())
    per_token, was_clipped = clipped_surrogate(ratio, advantages.float(), clip_low, clip_high)
    pg = masked_global_sum(per_token, mask, global_valid_tokens)
    if kl_coef > 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        kl = masked_global_sum(k3_kl(logprobs, ref_logprobs.float()), mask, global_valid_tokens)
    else:
        kl = torch.zeros((), dtype=torch.float32, device=logprobs.device)
    n_local = mask.sum().clamp(min=1.0)
    valid = mask > 0
    big = torch.finfo(torch.float32).max
    with torch.no_grad():
        clip_fraction = (was_clipped.float() * mask).sum() / n_local
        ratio_min = torch.where(valid, ratio, torch.full_like(ratio, big)).min() if valid.any() else ratio.new_ones(())
        ratio_max = torch.where(valid, ratio, torch.full_like(ratio, -big)).max() if valid.any() else ratio.new_ones(())
    return LossOutput(pg + kl_coef * kl, pg, kl, clip_fraction, ratio_min, ratio_max)
