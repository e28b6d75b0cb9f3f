"""The pivot filter (paper Eq. 5): keep a candidate iff var > min_variance and mean < lambda_diff.

With binary rewards this is 0 < mean < lambda_diff. The summary records what was dropped and
why, by action type, so users can see whether their pi_0 is too weak (most candidates all-0)
or too strong (most all-1).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from ..config.schema import FilterConfig
from ..data.pivot_row import PivotRow, RowLike


def is_pivot(profile: dict, cfg: FilterConfig) -> bool:
    return profile["variance"] > cfg.min_variance and profile["mean"] < cfg.lambda_diff


def _profile(row: PivotRow) -> dict:
    p = row.profile
    if p is None:
        raise ValueError(f"row {row.id!r} has no profile: only profiled rows can be filtered")
    return p


class PivotFilter:
    """The filter applied one row at a time (``keep(row)``), so a stage can stream a file of any
    size through it; ``summary()`` is what ``filter_pivots`` returns beside the pivots."""

    def __init__(self, cfg: FilterConfig) -> None:
        self.cfg, self.n, self.kept, self.mean_sum = cfg, 0, 0, 0.0
        self.reasons: Counter = Counter()
        self.by_type: dict[str, Counter] = defaultdict(Counter)

    def keep(self, row: RowLike) -> bool:
        """Whether ``row`` (a profiled row) is a pivot; counts it either way."""
        cfg, view = self.cfg, PivotRow.of(row)
        p = _profile(view)
        kind = view.expected_type
        self.n += 1
        self.mean_sum += p["mean"]
        self.by_type[kind]["candidates"] += 1
        if is_pivot(p, cfg):
            self.kept += 1
            self.by_type[kind]["kept"] += 1
            return True
        if p["variance"] <= cfg.min_variance:
            reason = (
                "zero_variance_all_fail"
                if p["mean"] == 0
                else ("zero_variance_all_pass" if p["mean"] == 1 else "zero_variance")
            )
        else:
            reason = "too_easy"
        self.reasons[reason] += 1
        self.by_type[kind][reason] += 1
        return False

    def summary(self) -> dict:
        n, cfg = self.n, self.cfg
        zero_var = sum(v for k, v in self.reasons.items() if k.startswith("zero_variance"))
        return {
            "candidates": n,
            "pivots": self.kept,
            "kept_fraction": self.kept / n if n else 0.0,
            "zero_variance_fraction": zero_var / n if n else 0.0,
            "dropped": dict(self.reasons),
            "by_action_type": {k: dict(v) for k, v in self.by_type.items()},
            "mean_pass_rate": self.mean_sum / n if n else 0.0,
            "rule": f"variance > {cfg.min_variance} and mean < {cfg.lambda_diff}",
        }


def filter_pivots(rows: Iterable[RowLike], cfg: FilterConfig) -> tuple[list[RowLike], dict]:
    """Split profiled rows into pivots; returns (pivots, summary). Pivots are the rows as given."""
    f = PivotFilter(cfg)
    pivots = [row for row in rows if f.keep(row)]
    return pivots, f.summary()
