"""Fused lm-head log-probs and the PivotRL policy-gradient loss without ``[N, V]`` logits.

Public API (``impl="triton"`` is the fused kernel, ``impl="torch"`` the readable reference):

* ``fused_token_logprobs(hidden, weight, targets, temperature, tp_group)`` -> ``(logprobs,
  entropy)``, fp32 ``[N]``, differentiable wrt ``hidden`` and ``weight``;
* ``fused_logprobs_no_grad(...)``: the same values, no graph and no gradient work (the old /
  reference log-prob passes and profiling);
* ``fused_pg_loss(...)`` -> ``(LossOutput, logprobs, entropy)``: the clipped PG loss (+ k3 KL)
  of ``losses.clipped_pg_loss`` (this package's readable torch steps) on the fused log-probs.

Shapes: ``hidden`` [N, H] holds only the positions that carry loss (gathered by the caller),
identical on every TP rank; ``weight`` [V/TP, H] is this rank's lm-head shard (rank ``r`` owns
global ids ``[r V/TP, (r+1) V/TP)``); ``targets`` [N] are global ids. With a TP group the
per-shard max / sum-exp / target logit are combined by all-reduces over ``tp_group``, and the
gradient of ``hidden`` is the full (all-reduced) one on every rank. Log-probs are ``<= 0``.
"""

from __future__ import annotations

import torch

from . import losses, reference
from .losses import LossOutput, clipped_pg_loss
from .triton_logprobs import (
    GPU_CONFIG,
    INTERPRETER_CONFIG,
    KernelConfig,
    availability,
    forward_logprobs,
    fused_logprobs,
)

IMPLS = ("triton", "torch")

__all__ = [
    "GPU_CONFIG",
    "IMPLS",
    "INTERPRETER_CONFIG",
    "KernelConfig",
    "LossOutput",
    "clipped_pg_loss",
    "fused_logprobs_no_grad",
    "fused_pg_loss",
    "fused_token_logprobs",
    "losses",
    "masked_mean",
    "triton_unavailable_reason",
]


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """None when ``impl='triton'`` can run on tensors of ``device``; else why not."""
    return availability(torch.device(device))


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def fused_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    tp_group=None,
    impl: str = "triton",
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token target log-probs and entropies of softmax(hidden @ W^T / T), fp32 [N]."""
    _check_impl(impl)
    if impl == "torch":
        return reference.token_logprobs_entropy(hidden, weight, targets, temperature, tp_group)
    return fused_logprobs(hidden, weight, targets, temperature, tp_group, config)


@torch.no_grad()
def fused_logprobs_no_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    tp_group=None,
    impl: str = "triton",
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fused_token_logprobs`` without autograd: forward kernel only, nothing saved."""
    _check_impl(impl)
    if impl == "torch":
        return reference.token_logprobs_entropy(hidden, weight, targets, temperature, tp_group)
    _, logprobs, entropy = forward_logprobs(hidden, weight, targets, temperature, tp_group, config)
    return logprobs, entropy


def fused_pg_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    global_valid_tokens: float | torch.Tensor,
    clip_low: float,
    clip_high: float,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    tp_group=None,
    impl: str = "triton",
    config: KernelConfig | None = None,
) -> tuple[LossOutput, torch.Tensor, torch.Tensor]:
    """Clipped PG loss (+ ``kl_coef`` * k3 KL) normalised by ``global_valid_tokens``.

    The kernel gives log-probs (and their backward); ratio, clip, KL and the reduction are the
    elementwise steps of ``losses.clipped_pg_loss`` on [N] vectors, so no logits exist at any
    point. Returns (LossOutput, logprobs, entropy); ``masked_mean(entropy, mask)`` is the
    entropy metric.
    """
    logprobs, entropy = fused_token_logprobs(hidden, weight, targets, temperature, tp_group, impl, config)
    out = clipped_pg_loss(
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


@torch.no_grad()
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens (a metric, e.g. the entropy estimate); 0 when none is valid."""
    mask = mask.float()
    return (values.float() * mask).sum() / mask.sum().clamp(min=1.0)
