"""The PivotRL training loop: sample pivots, roll out one turn, score, GRPO step, sync weights.

Synchronous and colocated: one optimizer step per rollout batch, so pi_old is the policy that
sampled. The batch order is a pure function of (seed, step), so a run resumed from its last
checkpoint sees exactly the batches it would have seen. Checkpoints, exact resume, SIGTERM /
SIGINT and rollout-turn counts are the shared loop's (``rl_loop.run_rl_loop``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..config import to_yaml
from ..config.schema import PivotRLConfig
from ..distributed.dp import DataParallel, ModelParallel, current_mp
from ..utils.logging import get_logger
from ..utils.metrics import MetricsWriter
from .batches import epoch_batches
from .grpo_step import grpo_step
from .rl_loop import ValFn, run_rl_loop
from .rollouts import TurnSampler

log = get_logger(__name__)


def _step_metrics(m: dict, groups, t0: float, t1: float, t2: float, t3: float, lr: float) -> dict:
    cats = Counter(v.category for g in groups for v in g.verdicts)
    n_cat = max(sum(cats.values()), 1)
    out = {f"train/{k}": v for k, v in m.items()}
    out.update(
        {
            # both rates, all ranks: the step processes prompts and actions, only action tokens carry loss
            "train/trained_tokens_per_s": m["trained_tokens"] / max(t2 - t1, 1e-9),
            "train/processed_tokens_per_s": m["processed_tokens"] / max(t2 - t1, 1e-9),
            "time/rollout_s": t1 - t0,
            "time/train_s": t2 - t1,
            "time/weight_sync_s": t3 - t2,
            "train/lr": lr,
            **{f"verdict/{k}": v / n_cat for k, v in cats.items()},
        }
    )
    return out


def _rollouts(
    sampler: TurnSampler,
    pivots: Sequence[dict],
    batch: list[int],
    cfg: PivotRLConfig,
    step: int,
    dp: DataParallel,
    mp: ModelParallel,
) -> list:
    """This DP rank's scored groups of the step (``batch``: the global batch's pivot indices;
    only this rank's rows are read). Each row's random stream is keyed by its position in the
    global batch, so the samples do not depend on the DP size; the first rank of each
    model-parallel group samples and the others receive its groups (TP/PP peers must train on
    identical data)."""
    a = cfg.algorithm
    keys = dp.shard(list(range(len(batch))))
    groups = None
    if mp.rank == 0:
        groups = sampler.sample_and_score(
            [pivots[batch[k]] for k in keys],
            a.group_size,
            cfg.rollout.sampling,
            seed=(a.seed * 1_000_003 + step) * 4096,
            stream_keys=keys,
        )
    return mp.broadcast(groups)


def train_pivot_rl(
    policy,
    sampler: TurnSampler,
    synchronizer,
    pivots: Sequence[dict],
    cfg: PivotRLConfig,
    out_dir: Path,
    metrics: MetricsWriter | None,
    pad_id: int,
    dp: DataParallel | None = None,
    progress: bool = True,
    ref_policy=None,
    val_fn: ValFn | None = None,
    val_every: int = 0,
    desc: str = "pivotrl",
) -> dict:
    """Run (or resume) GRPO on ``pivots`` with one-turn rollouts. Every DP rank calls this; each
    samples its share of the step's pivots (see ``run_rl_loop`` for checkpoints and metrics)."""
    a = cfg.algorithm
    dp = dp or DataParallel(0, 1)
    mp = current_mp()
    batches = epoch_batches(len(pivots), a.prompts_per_step, a.steps, a.seed)

    def step_fn(step: int) -> dict:
        t0 = time.perf_counter()
        groups = _rollouts(sampler, pivots, batches[step - 1], cfg, step, dp, mp)
        sampler.engine.sleep()  # colocated engines free the GPU for training; sync_weights wakes them
        t1 = time.perf_counter()
        m = grpo_step(policy, groups, a, pad_id, cfg.rollout.sampling.temperature, cfg.loss.impl, dp, ref_policy)
        t2 = time.perf_counter()
        synchronizer.sync_weights()
        out = _step_metrics(m, groups, t0, t1, t2, time.perf_counter(), policy.current_lr())
        out["rollout/turns"] = float(dp.sum(sum(len(g.completions) for g in groups)))
        return out

    return run_rl_loop(
        policy, synchronizer, step_fn, a, out_dir, metrics, to_yaml(cfg), dp, progress, desc, val_fn, val_every
    )
