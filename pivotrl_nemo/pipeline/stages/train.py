"""``train``: GRPO on the pivots with one-turn rollouts, from pi_0 (data-parallel over ranks)."""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.data.row_store import load_pivot_rows
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.utils.metrics import MetricsWriter


@stage(
    "train",
    upstream=("filter",),
    sections=lambda c: [c.algorithm, c.loss, c.rollout, c.verifier, c.model.moe_router_freeze],
    state_dirs=("train",),
    multi_rank=True,
    help="GRPO on the pivots with one-turn rollouts (checkpoints; SIGTERM -> checkpoint -> exit 143)",
)
def train(ctx: StageContext) -> dict[str, Any]:
    """GRPO on the pivots with one-turn rollouts, starting from pi_0 (data-parallel over ranks)."""
    from pivotrl_nemo.algorithms.pivot_rl import train_pivot_rl  # lazy: torch, megatron
    from pivotrl_nemo.distributed.dp import current_dp

    cfg, layout, rt = ctx.cfg, ctx.layout, ctx.runtime
    # lazy: the filter's output is validated, so each rank holds its index alone and parses rows per batch
    pivots, skipped = load_pivot_rows(layout.pivots, cfg.data.skip_invalid, lazy=True)
    policy = rt.pi0(cfg.algorithm.optim, cfg.algorithm.steps)
    # The KL reference is pi_0 itself, frozen; with kl_coef == 0 (the default) it is never built.
    ref = rt.pi0() if cfg.algorithm.kl_coef > 0 else None
    dp = current_dp()
    engine, sync = rt.engine_for(policy)
    mw = MetricsWriter(layout.train_dir, wandb=cfg.logging.wandb, run_config=cfg) if dp.is_main else None
    failed = True
    try:
        last = train_pivot_rl(
            policy, rt.sampler_for(engine), sync, pivots, cfg, layout.train_dir, mw, rt.pad_id, dp, ref_policy=ref
        )
        failed = False
    finally:
        if mw is not None:
            mw.close(failed=failed)  # a crash or preemption is not a finished W&B run
    return {
        "pivots": len(pivots),
        "skipped_invalid": skipped,
        "steps": cfg.algorithm.steps,
        "dp_size": dp.size,
        **{k: v for k, v in last.items() if k.startswith("train/")},
    }
