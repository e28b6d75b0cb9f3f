"""``filter``: keep variance > 0 and mean < lambda_diff (the pivots); summary + histogram."""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.algorithms.filtering import filter_pivots
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.utils.io import atomic_write_json, atomic_write_jsonl, read_jsonl


class NoPivotsError(RuntimeError):
    """The filter kept nothing: there is nothing to train on."""


@stage(
    "filter",
    upstream=("profile",),
    sections=lambda c: [c.filter],
    help="keep candidates with 0 < pass rate < lambda_diff: the pivots",
)
def filter_stage(ctx: StageContext) -> dict[str, Any]:
    """Keep variance > 0 and mean < lambda_diff; summary + pass-rate histogram."""
    from pivotrl_nemo.pipeline.report import plot_pass_rate_histogram  # lazy: matplotlib

    cfg, layout = ctx.cfg, ctx.layout
    rows = read_jsonl(layout.profiled)
    pivots, summary = filter_pivots(rows, cfg.filter)
    atomic_write_jsonl(layout.pivots, pivots)
    atomic_write_json(layout.filter_summary, summary)
    means = [p["mean"] for p in (PivotRow.of(r).profile for r in rows) if p is not None]
    plot_pass_rate_histogram(means, cfg.filter.lambda_diff, cfg.profile.k, layout.plots / "pass_rate_hist.png")
    if not pivots:
        raise NoPivotsError(
            "the filter kept no pivots: pi_0 solves every candidate always or never "
            f"(summary: {layout.filter_summary}); try more SFT steps, a larger "
            "profile.k, or a higher filter.lambda_diff"
        )
    return summary
