"""``report``: report.md with plots, and report.json, from every finished stage's outputs."""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.pipeline.runner import stage_seconds
from pivotrl_nemo.pipeline.stage import StageContext, stage


@stage("report", upstream=("eval",), help="report.md (result, pivots, curves, stage times) and report.json")
def report(ctx: StageContext) -> dict[str, Any]:
    """report.md and report.json from the run's outputs and stage markers."""
    from pivotrl_nemo.pipeline.report import write_report  # lazy: matplotlib

    return write_report(ctx.cfg, ctx.layout, stage_seconds(ctx.layout))  # it leaves out "report" itself
