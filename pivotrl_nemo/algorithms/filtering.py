"""The pivot filter (paper Eq. 5): keep a candidate iff var > min_variance and mean < lambda_diff.

With binary rewards this is 0 < mean < lambda_diff. The summary records what was dropped and
why, by action type, so users can see whether their pi_0 is too weak (most candidates all-0)
or too strong (most all-1).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ..config.schema import FilterConfig
from ..data.pivot_row import PivotRow, RowLike


def is_pivot(profile: dict, cfg: FilterConfig) -> bool:
    return profile["variance"] > cfg.min_variance and profile["mean"] < cfg.lambda_diff


def _profile(row: PivotRow) -> dict:
    p = row.profile
    if p is None:
        raise ValueError(f"row {row.id!r} has no profile: only profiled rows can be filtered")
    return p


def filter_pivots(rows: list[RowLike], cfg: FilterConfig) -> tuple[list[RowLike], dict]:
    """Split profiled rows into pivots; returns (pivots, summary). Pivots are the rows as given."""
    pivots = []
    reasons: Counter = Counter()
    by_type: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        view = PivotRow.of(row)
        p = _profile(view)
        kind = view.expected_type
        by_type[kind]["candidates"] += 1
        if is_pivot(p, cfg):
            pivots.append(row)
            by_type[kind]["kept"] += 1
            continue
        if p["variance"] <= cfg.min_variance:
            reason = (
                "zero_variance_all_fail"
                if p["mean"] == 0
                else ("zero_variance_all_pass" if p["mean"] == 1 else "zero_variance")
            )
        else:
            reason = "too_easy"
        reasons[reason] += 1
        by_type[kind][reason] += 1
    n = len(rows)
    zero_var = sum(v for k, v in reasons.items() if k.startswith("zero_variance"))
    summary = {
        "candidates": n,
        "pivots": len(pivots),
        "kept_fraction": len(pivots) / n if n else 0.0,
        "zero_variance_fraction": zero_var / n if n else 0.0,
        "dropped": dict(reasons),
        "by_action_type": {k: dict(v) for k, v in by_type.items()},
        "mean_pass_rate": sum(_profile(PivotRow.of(r))["mean"] for r in rows) / n if n else 0.0,
        "rule": f"variance > {cfg.min_variance} and mean < {cfg.lambda_diff}",
    }
    return pivots, summary
