"""``tool_call_args``: the paper's single-step argument-comparison verifier (method reference 5.1).

The shared steps come first (``verifiers.base.VerifierBase``: parse, message vs call). Then, for
a single predicted call against a single expected call, a name that is neither the expected one
nor among the row's tools (when the row lists any) fails ``unknown_tool``; batches skip this
check. Decision order for an expected ``function_call``: the tool name must match, the predicted
arguments must decode as a JSON object, then the decoded arguments are compared recursively and
type-aware:

- types must be identical (``5`` vs ``5.0`` fails; ``True`` is not ``1``);
- dicts: equal key sets, then each value; lists: equal length, elements in order;
- floats: ``|a - b| <= float_tolerance``;
- strings with fewer than 2 whitespace-separated words on either side: exact equality;
- longer strings: lower-cased multiset word overlap ``|A & B| / (|A| + |B|) >=
  word_overlap_threshold`` (identical strings score exactly 0.5);
- anything else (bool, int, null): plain equality.

Arguments the expected call's ``acceptable_arguments`` lists are decided by the list instead
(``verifiers.base.check_acceptable``: any listed value, compared by the rules above; ``""``
listed allows omission); the other arguments are compared as above.

An expected ``message`` is matched by any message (content not compared) and failed by any call;
an expected call is failed by a message. Several calls (``function_call_batch`` on either side)
are matched as unordered multisets by maximum bipartite matching (Kuhn's algorithm), an edge
meaning the pair passes the single-call comparison. ``parallel_mode='binary_strict'``: reward 1
iff the call counts are equal and every expected call is matched; ``'f1'``: reward
``2 * matched / (expected + predicted)``. Unlike Gym, surplus calls are never free.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pivotrl_nemo.config.schema import PARALLEL_MODES, VerifierConfig
from pivotrl_nemo.data.actions import Action, ToolCall
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.verifiers.base import (
    Category,
    Verdict,
    VerifierBase,
    check_acceptable,
    clip,
    decide_call,
    fail,
    json_normalised,
    ok,
)
from pivotrl_nemo.verifiers.matching import match_calls

_MAX_DEPTH = 64  # argument nesting deeper than this fails (bounded time, no RecursionError)


# ---------------------------------------------------------------------------------- values


def _type_name(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def word_overlap(a: str, b: str) -> float:
    """``|multiset(A) & multiset(B)| / (|A| + |B|)`` over lower-cased whitespace words."""
    wa, wb = Counter(a.strip().lower().split()), Counter(b.strip().lower().split())
    total = sum(wa.values()) + sum(wb.values())
    return sum((wa & wb).values()) / total if total else 0.0


def compare_values(
    pred: Any, exp: Any, path: str, float_tolerance: float, word_overlap_threshold: float, depth: int = 0
) -> tuple[str, str] | None:
    """None when ``pred`` matches ``exp``, else ``(category, detail naming the argument path)``."""
    if depth > _MAX_DEPTH:
        return Category.WRONG_ARGS, f"{path}: nested deeper than {_MAX_DEPTH}"
    if type(pred) is not type(exp):
        return Category.WRONG_ARG_TYPE, f"{path}: {_type_name(pred)} where {_type_name(exp)} expected"
    if isinstance(exp, dict):
        if set(pred) != set(exp):
            missing, extra = sorted(set(exp) - set(pred)), sorted(set(pred) - set(exp))
            return Category.WRONG_ARG_KEYS, f"{path}: missing keys {missing}, unexpected keys {extra}"
        for key in sorted(exp):
            sub = f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"
            bad = compare_values(pred[key], exp[key], sub, float_tolerance, word_overlap_threshold, depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(exp, list):
        if len(pred) != len(exp):
            return Category.WRONG_ARGS, f"{path}: list of {len(pred)} items where {len(exp)} expected"
        for i, (p, e) in enumerate(zip(pred, exp)):
            bad = compare_values(p, e, f"{path}[{i}]", float_tolerance, word_overlap_threshold, depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(exp, float):
        if math.isfinite(exp) and math.isfinite(pred) and abs(pred - exp) <= float_tolerance:
            return None
        if exp == pred:  # equal infinities
            return None
        return Category.WRONG_ARGS, f"{path}: {pred!r} != {exp!r}"
    if isinstance(exp, str):
        if len(pred.split()) < 2 or len(exp.split()) < 2:
            if pred == exp:
                return None
            return Category.WRONG_ARGS, f"{path}: {_clip(pred)} != {_clip(exp)}"
        overlap = word_overlap(pred, exp)
        if overlap >= word_overlap_threshold:
            return None
        return Category.WRONG_ARGS, f"{path}: word overlap {overlap:.3f} < {word_overlap_threshold}"
    if pred == exp:
        return None
    return Category.WRONG_ARGS, f"{path}: {_clip(pred)} != {_clip(exp)}"


def _clip(v: Any, n: int = 60) -> str:
    return clip(repr(v), n)


# ---------------------------------------------------------------------------------- calls


def compare_call(
    pred: ToolCall, exp: ToolCall, float_tolerance: float = 1e-6, word_overlap_threshold: float = 0.1
) -> Verdict:
    """The single-call comparison: name, JSON decode, then the recursive argument comparison."""
    decided = decide_call(pred, exp)
    if decided is not None:
        return decided
    assert pred.arguments is not None and exp.arguments is not None  # decide_call checked both
    try:
        pred_args, exp_args = json_normalised(pred.arguments), json_normalised(exp.arguments)
        if exp.acceptable is not None:
            pred_args, bad = check_acceptable(
                pred_args,
                json_normalised(exp.acceptable),
                lambda p, e, name: compare_values(p, e, name, float_tolerance, word_overlap_threshold) is None,
            )
            if bad is not None:
                return fail(bad[0], f"{pred.name}: {bad[1]}")
            exp_args = {k: v for k, v in exp_args.items() if k not in exp.acceptable}
        bad = compare_values(pred_args, exp_args, "args", float_tolerance, word_overlap_threshold)
    except (RecursionError, ValueError, TypeError) as e:
        return fail(Category.WRONG_ARGS, f"{pred.name}: arguments not comparable ({type(e).__name__})")
    if bad is None:
        return ok(pred.name)
    return fail(bad[0], f"{pred.name}: {bad[1]}")


def compare_calls(
    preds: Sequence[ToolCall],
    exps: Sequence[ToolCall],
    float_tolerance: float = 1e-6,
    word_overlap_threshold: float = 0.1,
    parallel_mode: str = "binary_strict",
) -> Verdict:
    """Compare predicted calls with expected calls as unordered multisets (``verifiers.matching``)."""
    return match_calls(
        preds, exps, lambda p, e: compare_call(p, e, float_tolerance, word_overlap_threshold), parallel_mode
    )


class ToolCallArgsVerifier(VerifierBase):
    """Argument-comparison verifier (Gym's ``single_step_tool_use_with_argument_comparison``),
    configured by ``cfg.word_overlap_threshold``, ``cfg.float_tolerance`` and ``cfg.parallel_mode``."""

    def __init__(self, cfg: VerifierConfig | None = None) -> None:
        super().__init__(cfg)
        if self.cfg.parallel_mode not in PARALLEL_MODES:
            raise ValueError(f"unknown parallel_mode {self.cfg.parallel_mode!r}; choices: {list(PARALLEL_MODES)}")
        self.word_overlap_threshold = self.cfg.word_overlap_threshold
        self.float_tolerance = self.cfg.float_tolerance
        self.parallel_mode = self.cfg.parallel_mode

    def unknown_tool(self, row: PivotRow, expected: Action, action: Action) -> Verdict | None:
        """Only a single call against a single expected call is checked, and only when its name
        differs from the expected one (batches go to the matching, where a stray name is a
        ``wrong_tool`` near miss or a count mismatch)."""
        if len(action.calls) != 1 or len(expected.calls) != 1:
            return None
        tools = row.tool_names
        call = action.calls[0]
        if tools and call.name != expected.calls[0].name and call.name not in tools:
            return fail(Category.UNKNOWN_TOOL, f"{call.name[:80]!r} is not among the row's tools")
        return None

    def compare_calls(self, row: PivotRow, expected: Action, action: Action) -> Verdict:
        # the module-level compare_calls (the multiset matching), not this method
        return compare_calls(
            action.calls, expected.calls, self.float_tolerance, self.word_overlap_threshold, self.parallel_mode
        )
