"""The RL training loop every arm shares: steps, checkpoints, exact resume, preemption, turn counts.

An algorithm supplies ``step_fn(step) -> metrics`` (roll out, update, sync weights) and the loop
does the rest, so one-turn PivotRL and end-to-end episode RL resume and stop identically. A
run resumed from its last checkpoint continues at the next step, and its metrics continue from
that step (the steps a killed run logged after its last checkpoint are dropped: each step is
logged once). ``step_fn`` reports the assistant turns it generated as ``rollout/turns``; the
loop keeps their running total (``rollout/turns_cumulative``) in the checkpoint, so accuracy can
be plotted against rollout turns across a resume. On SIGTERM (Slurm preemption or time limit) or
SIGINT (Ctrl-C) the loop finishes the current step, checkpoints, writes ``PREEMPTED`` and raises
``Preempted`` (exit code 143 or 130); re-running the same command resumes. With
``algorithm.save_optimizer=false`` the final checkpoint (after step ``steps``) is weights-only;
every earlier one keeps the optimizer. A run that raises ``steps`` and resumes from such a final
checkpoint continues with a fresh optimizer and warns that this is not an exact resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ..config.schema import AlgorithmConfig
from ..distributed.dp import DataParallel
from ..models.megatron.checkpoint import Retention, find_latest, read_meta
from ..utils.io import atomic_write_json
from ..utils.logging import get_logger
from ..utils.metrics import MetricsWriter
from ..utils.preemption import Preempted, PreemptionGuard

log = get_logger(__name__)

StepFn = Callable[[int], dict[str, float]]
"""One training step (1-based): rollouts, update, weight sync; returns the step's metrics,
including ``rollout/turns`` (assistant turns generated this step, all ranks)."""
ValFn = Callable[[int], dict[str, float]]
"""Periodic validation after a step; returns metrics such as ``val/turn_acc``."""


def run_rl_loop(
    policy,
    synchronizer,
    step_fn: StepFn,
    a: AlgorithmConfig,
    out_dir: Path,
    metrics: MetricsWriter | None,
    config_yaml: str,
    dp: DataParallel | None = None,
    progress: bool = True,
    desc: str = "pivotrl",
    val_fn: ValFn | None = None,
    val_every: int = 0,
) -> dict:
    """Run (or resume) ``a.steps`` steps of ``step_fn``. Every DP rank calls this; rank 0 alone
    writes metrics; checkpoints are collective (each rank writes its shards, rank 0 finalizes),
    kept per ``algorithm.keep_last`` / ``best_metric``. ``val_fn`` runs every ``val_every`` steps
    and after the last (0 = never)."""
    dp = dp or DataParallel(0, 1)
    ckpt, state_file = out_dir / "checkpoint", out_dir / "trainer_state.json"
    start, turns = 1, 0.0
    if find_latest(ckpt) is not None:
        # The loop step lives in the checkpoint itself: weights, optimizer, RNG and step are one
        # atomic directory rename (trainer_state.json is a human-readable copy).
        weights_only = bool(read_meta(ckpt).get("weights_only", False))
        extra = policy.load(ckpt, allow_weights_only=True)  # weights only: a fresh optimizer, warned
        start, turns = int(extra["loop_step"]) + 1, float(extra.get("rollout_turns", 0.0))
        synchronizer.sync_weights()
        log.info("%s: resumed from %s at step %d", desc, ckpt, start)
        if weights_only and start <= a.steps:
            log.warning(
                "%s: %s is a weights-only final checkpoint (algorithm.save_optimizer=false); steps %d-%d "
                "run with a fresh optimizer, so they are NOT an exact continuation of an uninterrupted "
                "%d-step run (keep algorithm.save_optimizer=true for runs that may be extended)",
                desc,
                ckpt,
                start,
                a.steps,
                a.steps,
            )
    if metrics is not None:
        metrics.resume(start - 1)  # a fresh start (0) too: rows of a run killed before its first checkpoint
    bar = None
    if progress and dp.is_main:
        bar = tqdm(total=a.steps, initial=start - 1, desc=desc, unit="step", dynamic_ncols=True)
    last: dict = {}
    policy.train()
    with PreemptionGuard() as guard:
        for step in range(start, a.steps + 1):
            last = dict(step_fn(step))
            turns += last.get("rollout/turns", 0.0)
            last["rollout/turns_cumulative"] = turns
            if val_fn is not None and val_every > 0 and (step % val_every == 0 or step == a.steps):
                last.update(val_fn(step))
                policy.train()
            # a SIGTERM / SIGINT seen by any rank stops every rank at the same step
            stop = dp.sum(float(guard.requested)) > 0
            if metrics is not None:
                metrics.log(step, last)
            if step % a.save_every == 0 or step == a.steps or stop:
                # collective: every rank writes its shards; metrics rank checkpoints for best_metric
                policy.save(
                    ckpt,
                    step,
                    extra={"loop_step": step, "rollout_turns": turns},
                    metrics=last,
                    config_yaml=config_yaml,
                    retention=Retention.from_config(a),
                    # intermediate checkpoints are resume points: always with the optimizer
                    save_optimizer=a.save_optimizer or step < a.steps,
                )
                if dp.is_main:
                    atomic_write_json(state_file, {"step": step, "rollout_turns": turns})
                dp.barrier()
            if bar is not None:
                bar.update(1)
                reward = last.get("train/reward_mean", float("nan"))
                bar.set_postfix(reward=f"{reward:.3f}", zero_var=f"{last.get('train/zero_variance_groups', 0.0):.2f}")
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
