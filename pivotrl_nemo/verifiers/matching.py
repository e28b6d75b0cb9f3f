"""Several calls against several expected calls: unordered multisets, by maximum bipartite matching.

Shared by the argument verifiers (``tool_call_args``, ``tool_call_schema``): each supplies its
single-call comparison, an edge of the bipartite graph meaning that pair passes it.
``parallel_mode='binary_strict'``: reward 1 iff the call counts are equal and every expected call
is matched; ``'f1'``: reward ``2 * matched / (expected + predicted)``. Surplus calls are never free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pivotrl_nemo.config.schema import PARALLEL_MODES
from pivotrl_nemo.data.actions import ToolCall
from pivotrl_nemo.verifiers.base import Category, Verdict, clip, fail, ok

CompareOne = Callable[[ToolCall, ToolCall], Verdict]
"""``(predicted call, expected call) -> Verdict`` of one pair."""


def maximum_matching(candidates: Sequence[Sequence[int]]) -> dict[int, int]:
    """Kuhn's algorithm. ``candidates[e]`` lists predicted indices expected call ``e`` matches;
    returns predicted index -> expected index for a maximum matching."""
    matching: dict[int, int] = {}

    def augment(e: int, seen: set[int]) -> bool:
        for p in candidates[e]:
            if p in seen:
                continue
            seen.add(p)
            if p not in matching or augment(matching[p], seen):
                matching[p] = e
                return True
        return False

    # most constrained expected calls first keeps augmenting paths short
    for e in sorted(range(len(candidates)), key=lambda i: (len(candidates[i]), i)):
        augment(e, set())
    return matching


def match_calls(
    preds: Sequence[ToolCall], exps: Sequence[ToolCall], compare_one: CompareOne, parallel_mode: str = "binary_strict"
) -> Verdict:
    """Predicted calls vs expected calls as unordered multisets (see the module doc); a single
    call against a single expected call is ``compare_one``'s verdict itself."""
    if parallel_mode not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel_mode {parallel_mode!r}; choices: {list(PARALLEL_MODES)}")
    if len(preds) == 1 and len(exps) == 1:
        return compare_one(preds[0], exps[0])
    if parallel_mode == "binary_strict" and len(preds) != len(exps):
        return fail(Category.WRONG_CALL_COUNT, f"{len(preds)} calls where {len(exps)} expected")
    candidates: list[list[int]] = []
    first_failure: list[Verdict | None] = []
    passed: dict[tuple[int, int], str] = {}  # (expected, predicted) -> the pair's detail
    for e, exp in enumerate(exps):
        row, failure = [], None
        for j, pred in enumerate(preds):
            v = compare_one(pred, exp)
            if v.passed:
                row.append(j)
                passed[(e, j)] = v.detail
            elif failure is None or (failure.category == Category.WRONG_TOOL and v.category != Category.WRONG_TOOL):
                failure = v  # the first reason past the tool name explains the closest near miss
        candidates.append(row)
        first_failure.append(failure)
    matching = maximum_matching(candidates)
    matched = len(matching)
    if parallel_mode == "f1":
        reward = 2 * matched / (len(exps) + len(preds)) if (exps or preds) else 0.0
    else:
        reward = 1.0 if matched == len(exps) else 0.0
    detail = f"matched {matched} of {len(exps)} expected calls with {len(preds)} predicted"
    if reward >= 1.0:  # each matched pair's own detail names the rules that decided it
        pairs = "; ".join(passed[(e, p)] for p, e in sorted(matching.items(), key=lambda kv: kv[1]))
        return ok(clip(f"{detail}: {pairs}", 400))
    matched_exps = set(matching.values())
    unmatched = [i for i in range(len(exps)) if i not in matched_exps]
    if not unmatched or matched == len(preds):
        return Verdict(reward, Category.WRONG_CALL_COUNT, detail)
    near = first_failure[unmatched[0]]
    category = near.category if near is not None else Category.WRONG_TOOL
    return Verdict(
        reward, category, f"{detail}; expected call {unmatched[0]}: {near.detail if near else 'no candidate'}"
    )
