"""The PivotRL training loop: sample pivots, roll out one turn, score, GRPO step, sync weights.

Synchronous and colocated: one optimizer step per rollout batch, so pi_old is the policy that
sampled. The batch order is a pure function of (seed, step), so a run resumed from its last
checkpoint sees exactly the batches it would have seen, and its metrics continue from that
step (the steps a killed run logged after its last checkpoint are dropped: each step is logged
once). On SIGTERM (Slurm preemption or time limit) or SIGINT (Ctrl-C) the loop finishes the
current step, checkpoints, writes ``PREEMPTED`` and raises ``Preempted`` (exit code 143 or 130);
re-running the same command resumes.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ..config import to_yaml
from ..config.schema import PivotRLConfig
from ..distributed.dp import DataParallel, ModelParallel, current_mp
from ..models.megatron.checkpoint import Retention, find_latest
from ..utils.io import atomic_write_json
from ..utils.logging import get_logger
from ..utils.metrics import MetricsWriter
from ..utils.preemption import Preempted, PreemptionGuard
from .grpo_step import grpo_step
from .rollouts import TurnSampler

log = get_logger(__name__)


def pivot_batches(n_pivots: int, per_step: int, steps: int, seed: int) -> list[list[int]]:
    """Pivot indices for every step: shuffled epochs, each pivot once per epoch."""
    rng = random.Random(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < per_step:
            epoch = list(range(n_pivots))
            rng.shuffle(epoch)
            order.extend(epoch)
        batches.append(order[:per_step])
        del order[:per_step]
    return batches


def _step_metrics(m: dict, groups, t0: float, t1: float, t2: float, t3: float, lr: float) -> dict:
    cats = Counter(v.category for g in groups for v in g.verdicts)
    n_cat = max(sum(cats.values()), 1)
    out = {f"train/{k}": v for k, v in m.items()}
    out.update(
        {
            "train/tokens_per_s": m["trained_tokens"] / max(t2 - t1, 1e-9),  # tokens trained on, all ranks
            "time/rollout_s": t1 - t0,
            "time/train_s": t2 - t1,
            "time/weight_sync_s": t3 - t2,
            "train/lr": lr,
            **{f"verdict/{k}": v / n_cat for k, v in cats.items()},
        }
    )
    return out


def _rollouts(
    sampler: TurnSampler, rows: list[dict], cfg: PivotRLConfig, step: int, dp: DataParallel, mp: ModelParallel
) -> list:
    """This DP rank's scored groups of the step. Each row's random stream is keyed by its
    position in the global batch, so the samples do not depend on the DP size; the first rank
    of each model-parallel group samples and the others receive its groups (TP/PP peers must
    train on identical data)."""
    a = cfg.algorithm
    keys = dp.shard(list(range(len(rows))))
    groups = None
    if mp.rank == 0:
        groups = sampler.sample_and_score(
            dp.shard(rows),
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
    pivots: list[dict],
    cfg: PivotRLConfig,
    out_dir: Path,
    metrics: MetricsWriter | None,
    pad_id: int,
    dp: DataParallel | None = None,
    progress: bool = True,
    ref_policy=None,
) -> dict:
    """Run (or resume) training. Every DP rank calls this; each samples its share of the step's
    pivots; rank 0 alone writes metrics; checkpoints are collective (each rank writes its shards,
    rank 0 finalizes), kept per ``algorithm.keep_last`` / ``best_metric``."""
    a = cfg.algorithm
    dp = dp or DataParallel(0, 1)
    mp = current_mp()
    ckpt, state_file = out_dir / "checkpoint", out_dir / "trainer_state.json"
    start = 1
    if find_latest(ckpt) is not None:
        # The loop step lives in the checkpoint itself: weights, optimizer, RNG and step are one
        # atomic directory rename (trainer_state.json is a human-readable copy).
        start = int(policy.load(ckpt)["loop_step"]) + 1
        synchronizer.sync_weights()
        log.info("train: resumed from %s at step %d", ckpt, start)
    if metrics is not None:
        metrics.resume(start - 1)  # a fresh start (0) too: rows of a run killed before its first checkpoint
    batches = pivot_batches(len(pivots), a.prompts_per_step, a.steps, a.seed)
    bar = None
    if progress and dp.is_main:
        bar = tqdm(total=a.steps, initial=start - 1, desc="pivotrl", unit="step", dynamic_ncols=True)
    last: dict = {}
    policy.train()
    with PreemptionGuard() as guard:
        for step in range(start, a.steps + 1):
            t0 = time.perf_counter()
            groups = _rollouts(sampler, [pivots[i] for i in batches[step - 1]], cfg, step, dp, mp)
            sampler.engine.sleep()  # colocated engines free the GPU for training; sync_weights wakes them
            t1 = time.perf_counter()
            m = grpo_step(policy, groups, a, pad_id, cfg.rollout.sampling.temperature, cfg.loss.impl, dp, ref_policy)
            t2 = time.perf_counter()
            synchronizer.sync_weights()
            last = _step_metrics(m, groups, t0, t1, t2, time.perf_counter(), policy.current_lr())
            # a SIGTERM / SIGINT seen by any rank stops every rank at the same step
            stop = dp.sum(float(guard.requested)) > 0
            if metrics is not None:
                metrics.log(step, last)
            if step % a.save_every == 0 or step == a.steps or stop:
                # collective: every rank writes its shards; metrics rank checkpoints for best_metric
                policy.save(
                    ckpt,
                    step,
                    extra={"loop_step": step},
                    metrics=last,
                    config_yaml=to_yaml(cfg),
                    retention=Retention.from_config(a),
                )
                if dp.is_main:
                    atomic_write_json(state_file, {"step": step})
                dp.barrier()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward_mean']:.3f}", zero_var=f"{m['zero_variance_groups']:.2f}")
            if stop and step < a.steps:
                if dp.is_main:
                    (out_dir / "PREEMPTED").write_text(f"{step}\n")
                raise Preempted(
                    f"checkpoint saved at step {step} after {guard.signal_name}; re-run the same command to resume",
                    exit_code=guard.exit_code,
                )
    if bar is not None:
        bar.close()
    if dp.is_main:
        (out_dir / "PREEMPTED").unlink(missing_ok=True)
    return last
