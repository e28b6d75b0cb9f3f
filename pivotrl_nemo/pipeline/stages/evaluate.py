"""``eval``: turn-level functional accuracy of pi_0 and the PivotRL policy on held-out candidates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pivotrl_nemo.algorithms.evaluation import paired_bootstrap_ci, sampled_turn_scores
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.data.row_store import load_pivot_rows
from pivotrl_nemo.pipeline.runner import check_finished_state
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.utils.io import atomic_write_json


def turn_scores(ctx: StageContext, policy: Any, rows: Sequence[dict[str, Any]]) -> list[float]:
    """Mean reward of ``eval.samples_per_candidate`` sampled actions per row."""
    cfg, rt, e = ctx.cfg, ctx.runtime, ctx.cfg.eval
    engine, _ = rt.engine_for(policy)
    return sampled_turn_scores(
        rt.sampler_for(engine),
        rows,
        e.samples_per_candidate,
        cfg.rollout.sampling,
        e.seed,
        e.temperature,
        cfg.rollout.batch_size,
        progress=True,
    )


@stage(
    "eval",
    upstream=("train",),
    sections=lambda c: [c.eval, c.rollout.sampling],
    state_dirs=("eval",),
    help="turn-level accuracy of pi_0 and the trained policy on held-out candidates (paired bootstrap CI)",
)
def evaluate(ctx: StageContext) -> dict[str, Any]:
    """Turn-level functional accuracy of pi_0 and the PivotRL policy on held-out candidates.
    Memory: the split's candidates, compact (``PivotRows``, ~1-2 KB per BFCL-shaped row)."""
    cfg, layout, rt = ctx.cfg, ctx.layout, ctx.runtime
    # Both policies come from checkpoints: refuse one that a later, unfinished run under another
    # configuration replaced (its stamp would differ from the finished stage's marker).
    for which in ("sft", "train"):
        check_finished_state(layout, which, action="evaluate")
    rows, _ = load_pivot_rows(str(layout.candidates(cfg.eval.split)), cfg.data.skip_invalid)
    s0 = turn_scores(ctx, rt.pi0(), rows)
    trained = rt.new_policy(cfg.algorithm.optim, total_steps=1)
    trained.load(layout.train_checkpoint, load_optimizer=False)
    s1 = turn_scores(ctx, trained, rows)
    lo, hi = paired_bootstrap_ci(s0, s1, cfg.eval.bootstrap_samples, cfg.eval.seed)
    res: dict[str, Any] = {
        "split": cfg.eval.split,
        "n_eval": len(rows),
        "samples_per_candidate": cfg.eval.samples_per_candidate,
        "temperature": cfg.eval.temperature,
        "pi0_accuracy": sum(s0) / len(s0),
        "pivotrl_accuracy": sum(s1) / len(s1),
        "delta_ci95": [lo, hi],
        "pi0_scores": s0,
        "pivotrl_scores": s1,
        "by_action_type": dict(Counter(PivotRow.of(r).expected_type for r in rows)),
    }
    res["delta"] = sum(s1) / len(s1) - sum(s0) / len(s0)
    atomic_write_json(layout.eval_results, res)
    return {k: v for k, v in res.items() if not k.endswith("_scores")}
