"""``strict``: exact match of the canonical action (a lower bound on functional rewards).

A call's canonical form is its name plus the canonical JSON of its arguments (sorted keys, no
whitespace, so argument order and call syntax do not matter but ``5`` vs ``5.0`` does). A batch
matches when the multisets of canonical calls are equal. A message matches when its content
equals the expected content after stripping surrounding whitespace. There is no separate
unknown-tool check: a call to any other name, offered or not, is ``not_exact``.
"""

from __future__ import annotations

import json

from pivotrl_nemo.data.actions import Action, ToolCall
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.verifiers.base import Category, Verdict, VerifierBase, clip, fail, ok


def canonical_call(call: ToolCall) -> str | None:
    """``name(canonical JSON arguments)``, or None when the arguments are not a JSON object."""
    if call.arguments is None:
        return None
    try:
        args = json.dumps(call.arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None
    return f"{call.name}({args})"


class StrictVerifier(VerifierBase):
    """Exact canonical-action match; ``StrictVerifier(cfg)`` (no strict-specific settings)."""

    def compare_message(self, expected: Action, action: Action) -> Verdict:
        if action.content.strip() == expected.content.strip():
            return ok("message")
        return fail(Category.NOT_EXACT, "message content differs")

    def unknown_tool(self, row: PivotRow, expected: Action, action: Action) -> Verdict | None:
        return None  # a wrong name is not_exact, like any other difference

    def compare_calls(self, row: PivotRow, expected: Action, action: Action) -> Verdict:
        pred = [canonical_call(c) for c in action.calls]
        if any(p is None for p in pred):
            return fail(Category.BAD_ARGUMENTS_JSON, "arguments do not decode as a JSON object")
        exp = [canonical_call(c) for c in expected.calls]
        if any(e is None for e in exp):  # a data error (validation refuses such rows), as in tool_call_args
            bad = next(c for c, e in zip(expected.calls, exp) if e is None)
            raise ValueError(f"expected arguments of {bad.name} are not a JSON object: {bad.raw_arguments[:80]!r}")
        if sorted(pred) == sorted(exp):  # type: ignore[type-var]
            return ok(", ".join(c.name for c in action.calls))
        if len(pred) != len(exp):
            return fail(Category.NOT_EXACT, f"{len(pred)} calls where {len(exp)} expected")
        return fail(Category.NOT_EXACT, f"{clip(' '.join(sorted(pred)), 120)} != {clip(' '.join(sorted(exp)), 120)}")  # type: ignore[arg-type]
