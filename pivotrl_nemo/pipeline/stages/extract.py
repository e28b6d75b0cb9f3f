"""``extract``: one pivot row per eligible assistant turn, per split (split by trajectory id)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline.candidates import candidates_by_split
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
    for split, rows in candidates_by_split(ctx).items():
        atomic_write_jsonl(ctx.layout.candidates(split), rows)
        summary[split] = {
            "candidates": len(rows),
            "by_action_type": dict(Counter(PivotRow.of(r).expected_type for r in rows)),
        }
    return summary
