"""``extract``: one pivot row per eligible assistant turn, per split (split by trajectory id); with
``data.ood_source``, also the OOD family's ('ood_sft', 'ood_test'), judged by its own verifier."""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.pipeline.candidates import OOD_PREFIX, candidate_stream, ood_candidate_stream, write_candidates
from pivotrl_nemo.pipeline.stage import StageContext, stage


@stage(
    "extract",
    upstream=("build",),
    sections=lambda c: [c.verifier.name],
    help="one candidate (pivot row) per assistant turn, per split",
)
def extract(ctx: StageContext) -> dict[str, Any]:
    """One pivot row per eligible assistant turn, per split (split by trajectory id)."""
    # streamed: one trajectory and its candidates in memory at a time
    summary = write_candidates(candidate_stream(ctx), ctx.layout.candidates)
    ood = ood_candidate_stream(ctx)
    if ood is not None:
        summary.update(write_candidates(ood, ctx.layout.candidates))
    else:  # a previous run's OOD candidates are not this run's (an eval must not find them)
        for stale in ctx.layout.candidates_dir.glob(f"{OOD_PREFIX}*.jsonl*"):
            stale.unlink()
    return summary
