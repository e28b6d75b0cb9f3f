"""Supervised fine-tuning on expert actions (pi_0 for the quickstart, and the SFT baseline).

Cross-entropy on the action tokens only (prefix masked), normalised by the number of action
tokens in the whole batch, on the same megatron policy and the same prompts as PivotRL.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from ..config.schema import SFTConfig
from ..models.megatron.batching import chunks, make_batch
from ..utils.logging import get_logger
from ..utils.metrics import MetricsWriter
from .batches import epoch_batches
from .head import action_logprobs

log = get_logger(__name__)


def sft_step(
    policy, picked: list[tuple[list[int], list[int]]], pad_id: int, impl: str = "torch", micro_batch_size: int = 16
) -> dict:
    """One optimizer step of cross-entropy on ``picked`` (prompt ids, action ids) examples."""
    t0 = time.perf_counter()
    total_tokens = sum(len(a) for _, a in picked)
    processed = sum(len(p) + len(a) for p, a in picked)  # the forward pass runs on prompts too
    batches = [
        make_batch([picked[i][0] for i in mb], [picked[i][1] for i in mb], pad_id)
        for mb in chunks(len(picked), micro_batch_size)
    ]

    def loss_fn(i, batch, hidden, weight):
        lp, _ = action_logprobs(hidden, weight, batch.targets.to(hidden.device), 1.0, impl, policy.tp_group)
        loss = -lp.sum() / total_tokens
        return loss, {"loss": float(loss.detach())}

    policy.zero_grad()
    loss_sum = policy.pipeline_sum([sum(m["loss"] for m in policy.forward_backward(batches, loss_fn))])[0]
    grad_norm = policy.optimizer_step()
    return {
        "sft/loss": loss_sum,
        "sft/grad_norm": float(grad_norm),
        # both rates, named: the step processes every token, but only action tokens carry loss
        "sft/processed_tokens_per_s": processed / (time.perf_counter() - t0),
        "sft/trained_tokens_per_s": total_tokens / (time.perf_counter() - t0),
        "sft/tokens": float(total_tokens),
        "sft/lr": policy.current_lr(),
    }


def train_sft(
    policy,
    examples: list[tuple[list[int], list[int]]],
    cfg: SFTConfig,
    pad_id: int,
    metrics: MetricsWriter,
    impl: str = "torch",
    micro_batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """``examples`` are (prompt ids, action ids incl. end-of-turn). Returns final metrics."""
    if not examples:
        raise ValueError("SFT needs at least one example")
    bar = None
    if progress:
        bar = tqdm(total=cfg.steps, desc="sft", unit="step", dynamic_ncols=True)
    last: dict = {}
    policy.train()
    for step, idx in enumerate(epoch_batches(len(examples), cfg.batch_size, cfg.steps, cfg.seed), start=1):
        last = sft_step(policy, [examples[i] for i in idx], pad_id, impl, micro_batch_size)
        metrics.log(step, last)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last['sft/loss']:.3f}")
    if bar is not None:
        bar.close()
    return last


@torch.no_grad()
def action_nll(policy, examples: list[tuple[list[int], list[int]]], pad_id: int, micro_batch_size: int = 16) -> float:
    """Mean per-token negative log-likelihood of the expert actions (a held-out SFT metric)."""
    policy.eval()
    batches = [
        make_batch([examples[i][0] for i in mb], [examples[i][1] for i in mb], pad_id)
        for mb in chunks(len(examples), micro_batch_size)
    ]

    def nll_fn(i, batch, hidden, weight):
        lp, _ = action_logprobs(hidden, weight, batch.targets.to(hidden.device), 1.0, "torch", policy.tp_group)
        return hidden.sum() * 0.0, {"nll": -float(lp.sum()), "n": batch.num_tokens}

    stats = policy.forward_backward(batches, nll_fn, forward_only=True)
    total, count = policy.pipeline_sum([sum(m["nll"] for m in stats), sum(m["n"] for m in stats)])
    policy.train()
    return total / max(count, 1)
