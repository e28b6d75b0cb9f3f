"""``filter``: keep variance > 0 and mean < lambda_diff (the pivots); summary + histogram."""

from __future__ import annotations

import os
from typing import Any

from pivotrl_nemo.algorithms.filtering import PivotFilter
from pivotrl_nemo.config.schema import FilterConfig
from pivotrl_nemo.data.jsonl_index import IndexedJsonlWriter, id_hash
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.data.row_store import CheckedLines, PivotRows
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.io import atomic_write_json
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)


class NoPivotsError(UserError, RuntimeError):
    """The filter kept nothing: there is nothing to train on (a ``UserError``: the CLI prints
    what pi_0 did and which settings to change, and exits 2)."""


def no_pivots_message(summary: dict[str, Any], k: int, lambda_diff: float, where: str) -> str:
    """What pi_0 did on the candidates (from the filter summary) and which knobs move it."""
    n, dropped = summary["candidates"], summary["dropped"]
    if n == 0:
        return (
            "the filter kept no pivots: there were no candidates to profile (the rl split is empty); "
            "raise data.split_fractions.rl or data.max_trajectories"
        )
    fail, ok = dropped.get("zero_variance_all_fail", 0), dropped.get("zero_variance_all_pass", 0)
    easy = dropped.get("too_easy", 0) + dropped.get("zero_variance", 0)
    what = (
        f"the filter kept no pivots of {n} candidates: pi_0 failed all {k} samples on {fail}, "
        f"passed all {k} on {ok}, and {easy} were too easy (mean pass rate >= filter.lambda_diff={lambda_diff}); "
        f"summary: {where}. "
    )
    if fail >= ok + easy:
        fix = (
            "pi_0 is too weak for this data: train it more (raise sft.steps or sft.optim.lr, or give it more "
            "data with data.max_trajectories / data.split_fractions.sft), start from a stronger checkpoint "
            "(model_from=...), or sample more per candidate (raise profile.k). A pretrained model taken as "
            "pi_0 as it is (sft.steps=0) that never emits this domain's tool-call format fails every turn: "
            "give it a short SFT first (sft.steps > 0 at a small sft.optim.lr, as experiment=smollm2 does)"
        )
    else:
        fix = (
            "pi_0 is too strong for this data: raise filter.lambda_diff (at most 1), sample more per "
            "candidate (raise profile.k), or use harder data"
        )
    return what + fix


def filter_file(
    profiled: str | os.PathLike, pivots: str | os.PathLike, cfg: FilterConfig, skip_invalid: bool = False
) -> tuple[dict[str, Any], list[float]]:
    """Stream ``profiled`` (checked row by row) through the filter into ``pivots``, each kept
    row written as ``dumps_row`` writes it (a line the pipeline wrote is copied as it is, being
    those bytes already); returns the summary and every candidate's mean pass rate. Memory: one
    row at a time, the distinct tool lists, one float and one id per candidate."""
    keep, means = PivotFilter(cfg), []
    lines = CheckedLines(str(profiled), skip_invalid, (0, 1), PivotRows(str(profiled)))
    with IndexedJsonlWriter(pivots, validated=True) as out:
        for line in lines:
            pivot = keep.keep(line.row)  # counts the row: call once
            if pivot and lines.canonical:
                out.write_raw(line.raw, id_hash(line.row["id"]), line.spans)
            elif pivot:  # written by hand or elsewhere: spacing, key order, CRLF may differ
                out.write(line.row)
            means.append(float((PivotRow.of(line.row).profile or {})["mean"]))  # keep() needs one
    if lines.skipped:
        log.warning("%s: skipped %d invalid rows (data.skip_invalid)", profiled, lines.skipped)
    return keep.summary(), means


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
    summary, means = filter_file(layout.profiled, layout.pivots, cfg.filter, cfg.data.skip_invalid)
    atomic_write_json(layout.filter_summary, summary)
    plot_pass_rate_histogram(means, cfg.filter.lambda_diff, cfg.profile.k, layout.plots / "pass_rate_hist.png")
    if not summary["pivots"]:
        raise NoPivotsError(
            no_pivots_message(summary, cfg.profile.k, cfg.filter.lambda_diff, str(layout.filter_summary))
        )
    return summary
