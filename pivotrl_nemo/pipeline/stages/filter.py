"""``filter``: keep variance > 0 and mean < lambda_diff (the pivots); summary + histogram."""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.algorithms.filtering import PivotFilter
from pivotrl_nemo.data.jsonl_index import IndexedJsonlWriter
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline.stage import StageContext, stage
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.io import atomic_write_json, iter_jsonl


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
    keep, means = PivotFilter(cfg.filter), []
    # streamed: one profiled row in memory at a time (plus one float per row for the histogram)
    with IndexedJsonlWriter(layout.pivots) as out:
        for _, row in iter_jsonl(layout.profiled):
            if keep.keep(row):
                out.write(row)
            means.append(float((PivotRow.of(row).profile or {})["mean"]))  # keep() refused a row without one
    summary = keep.summary()
    atomic_write_json(layout.filter_summary, summary)
    plot_pass_rate_histogram(means, cfg.filter.lambda_diff, cfg.profile.k, layout.plots / "pass_rate_hist.png")
    if not summary["pivots"]:
        raise NoPivotsError(
            no_pivots_message(summary, cfg.profile.k, cfg.filter.lambda_diff, str(layout.filter_summary))
        )
    return summary
