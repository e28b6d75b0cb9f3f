"""One GRPO optimizer step on scored one-turn rollouts (the math; the loop is in pivot_rl.py).

Every sampled action is trained on with its group advantage. The loss is token-level and
divided by the global count of valid action tokens in the rollout batch, so micro-batching
gives exactly the full-batch gradient. Sequences whose advantage is zero contribute exactly
zero policy gradient; with KL off their forward pass is skipped (they still count in the
normaliser, which keeps the objective the same as computing them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.schema import AlgorithmConfig
from ..distributed.dp import DataParallel
from ..kernels.losses import clipped_pg_loss
from ..models.megatron.batching import chunks, make_batch
from .advantages import compute_advantages, zero_variance_fraction
from .head import action_logprobs
from .rollouts import ScoredGroup


@dataclass
class Sample:
    prompt: list[int]
    action: list[int]
    old_logprobs: list[float]
    advantage: float
    keep: list[int]  # 1 where the token carries loss


def flatten_groups(groups: list[ScoredGroup], cfg: AlgorithmConfig) -> tuple[list[Sample], torch.Tensor]:
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
    adv = compute_advantages(rewards, cfg.advantage)
    samples = []
    for gi, g in enumerate(groups):
        for ci, c in enumerate(g.completions):
            drop = cfg.mask_truncated and c.finish_reason == "length"
            samples.append(
                Sample(g.prompt_ids, c.token_ids, c.logprobs, float(adv[gi, ci]), [0 if drop else 1] * len(c.token_ids))
            )
    return samples, rewards


def _forward_logprobs(model, batches, temperature: float, impl: str) -> dict[int, torch.Tensor]:
    """Per micro-batch, the action tokens' log-probs under ``model`` (no grad). Every rank runs
    it: under EP / TP the forward is a collective; under PP the last stage holds the result."""
    out: dict[int, torch.Tensor] = {}

    def fn(i, batch, hidden, weight):
        with torch.no_grad():
            out[i], _ = action_logprobs(
                hidden, weight, batch.targets.to(hidden.device), temperature, impl, model.tp_group
            )
        return hidden.sum() * 0.0, {}

    model.forward_backward(batches, fn, forward_only=True)
    return out


def grpo_step(
    policy,
    groups: list[ScoredGroup],
    cfg: AlgorithmConfig,
    pad_id: int,
    temperature: float,
    impl: str,
    dp: DataParallel | None = None,
    ref_policy=None,
) -> dict[str, float]:
    """Compute advantages of one-turn groups, then one clipped-PG update (``grpo_update``)."""
    samples, rewards = flatten_groups(groups, cfg)
    return grpo_update(policy, samples, rewards, cfg, pad_id, temperature, impl, dp, ref_policy)


def grpo_update(
    policy,
    samples: list[Sample],
    rewards: torch.Tensor,
    cfg: AlgorithmConfig,
    pad_id: int,
    temperature: float,
    impl: str,
    dp: DataParallel | None = None,
    ref_policy=None,
) -> dict[str, float]:
    """Accumulate the clipped PG gradient of ``samples`` (advantages already set) over
    micro-batches and step. ``rewards`` ([groups, group size]) is for the metrics only. Shared
    by one-turn PivotRL and end-to-end RL, whose samples are every assistant turn of an episode.

    Under data parallelism each rank holds its own samples; the valid-token count is summed over
    ranks, and the loss is multiplied by the DP size because megatron DDP *averages* gradients:
    the result is exactly the gradient of the global-batch loss.
    """
    dp = dp or DataParallel(0, 1)
    if cfg.kl_coef > 0 and ref_policy is None:
        raise ValueError("algorithm.kl_coef > 0 needs the frozen reference policy (pi_0) as ref_policy")
    global_valid = dp.sum(sum(sum(s.keep) for s in samples))
    train = [s for s in samples if sum(s.keep) > 0 and (s.advantage != 0.0 or cfg.kl_coef > 0)]
    parts = [[train[i] for i in mb] for mb in chunks(len(train), cfg.micro_batch_size)]
    batches = [
        make_batch([s.prompt for s in part], [s.action for s in part], pad_id, [s.keep for s in part]) for part in parts
    ]
    refs = _forward_logprobs(ref_policy, batches, temperature, impl) if cfg.kl_coef > 0 else {}
    # pi_old recomputed by the trainer before the update (algorithm.old_logprobs='trainer')
    olds = _forward_logprobs(policy, batches, temperature, impl) if cfg.old_logprobs == "trainer" else {}

    def loss_fn(i, batch, hidden, weight):
        part, dev = parts[i], hidden.device
        lp, ent = action_logprobs(hidden, weight, batch.targets.to(dev), temperature, impl, policy.tp_group)
        engine = torch.tensor(
            [x for s in part for x, k in zip(s.old_logprobs, s.keep) if k], dtype=torch.float32, device=dev
        )
        old = olds[i].to(dev) if i in olds else engine
        adv = torch.tensor([s.advantage for s in part], dtype=torch.float32)[batch.seq_of_token].to(dev)
        out = clipped_pg_loss(
            lp, old, adv, torch.ones_like(lp), global_valid, cfg.clip_low, cfg.clip_high, cfg.kl_coef, refs.get(i)
        )
        n = batch.num_tokens
        return out.loss * dp.size, {
            "n": n,
            "loss": float(out.loss.detach()),
            "kl": float(out.kl.detach()),
            "clip": float(out.clip_fraction) * n,
            "ent": float(ent.detach().sum()),
            "mismatch": float((lp.detach() - engine).abs().sum()),  # trainer vs engine, per token
            "rmin": float(out.ratio_min),
            "rmax": float(out.ratio_max),
        }

    policy.zero_grad()
    per_mb = policy.forward_backward(batches, loss_fn)
    keys = ("n", "loss", "kl", "clip", "ent", "mismatch")
    stats = dict(zip(keys, policy.pipeline_sum([sum(m[k] for m in per_mb) for k in keys])))
    neg_rmin, rmax = policy.pipeline_sum(
        [-min((m["rmin"] for m in per_mb), default=1.0), max((m["rmax"] for m in per_mb), default=1.0)]
    )
    rmin = -neg_rmin
    # The decision to step is global, so DDP's collectives line up on every rank; a rank with no
    # local sequences contributes a zero gradient.
    trained_global = dp.sum(len(train))
    grad_norm = policy.optimizer_step() if trained_global > 0 else 0.0
    n = max(dp.sum(stats["n"]), 1)
    all_rewards = torch.tensor(dp.gather(rewards.tolist()), dtype=torch.float32).reshape(-1, rewards.shape[1])
    return {
        **policy.expert_load_metrics(),
        "reward_mean": float(all_rewards.mean()),
        "zero_variance_groups": zero_variance_fraction(all_rewards),
        "reward_group_variance": float(all_rewards.var(dim=1, unbiased=False).mean()),  # paper Fig. 3
        "loss": dp.sum(stats["loss"]),
        # normalised over every rank's trained tokens (sums of numerators / sum of token counts)
        "kl": dp.sum(stats["kl"]),
        "clip_fraction": dp.sum(stats["clip"]) / n,
        "entropy": dp.sum(stats["ent"]) / n,
        "logprob_mismatch": dp.sum(stats["mismatch"]) / n,
        "ratio_min": rmin if train else 1.0,
        "ratio_max": rmax if train else 1.0,
        "grad_norm": float(grad_norm),
        "valid_tokens": float(global_valid),
        "local_valid_tokens": float(sum(sum(x.keep) for x in samples)),
        "trained_sequences": trained_global,
        "trained_tokens": float(n if trained_global > 0 else 0),
        # prompt + action tokens through the forward-backward (all ranks), for the throughput metric
        "processed_tokens": float(dp.sum(sum(len(s.prompt) + len(s.action) for s in train))),
    }
