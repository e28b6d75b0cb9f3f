"""``extract``: one pivot row per eligible assistant turn, per split (split by trajectory id); with
``data.ood_source``, also the OOD family's ('ood_sft', 'ood_test'), judged by its own verifier."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline.candidates import OOD_PREFIX, candidates_by_split, ood_candidates_by_split
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.utils.io import atomic_write_jsonl


@stage(
    "extract",
    upstream=("build",),
    sections=lambda c: [c.verifier.name],
    help="one candidate (pivot row) per assistant turn, per split",
)
def extract(ctx: StageContext) -> dict[str, Any]:
    """One pivot row per eligible assistant turn, per split (split by trajectory id)."""
    summary = {}
    ood = ood_candidates_by_split(ctx)
    for split, rows in {**candidates_by_split(ctx), **ood}.items():
        atomic_write_jsonl(ctx.layout.candidates(split), rows)
        summary[split] = {
            "candidates": len(rows),
            "by_action_type": dict(Counter(PivotRow.of(r).expected_type for r in rows)),
        }
    if not ood:  # a previous run's OOD candidates are not this run's (an eval must not find them)
        for stale in ctx.layout.candidates_dir.glob(f"{OOD_PREFIX}*.jsonl"):
            stale.unlink()
    return summary
