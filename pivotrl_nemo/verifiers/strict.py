"""``strict``: exact match of the canonical action (a lower bound on functional rewards).

A call's canonical form is its name plus the canonical JSON of its arguments (sorted keys, no
whitespace, so argument order and call syntax do not matter but ``5`` vs ``5.0`` does). A batch
matches when the multisets of canonical calls are equal. A message matches when its content
equals the expected content after stripping surrounding whitespace.
"""

from __future__ import annotations

import json
from typing import Any

from pivotrl_nemo.data.actions import ToolCall, parse_completion
from pivotrl_nemo.verifiers.base import Category, Verdict, fail, ok
from pivotrl_nemo.verifiers.tool_call_args import expected_action


def canonical_call(call: ToolCall) -> str | None:
    """``name(canonical JSON arguments)``, or None when the arguments are not a JSON object."""
    if call.arguments is None:
        return None
    try:
        args = json.dumps(call.arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None
    return f"{call.name}({args})"


class StrictVerifier:
    """Exact canonical-action match."""

    name = "strict"

    def verify(self, row: dict[str, Any], completion: str) -> Verdict:
        expected = expected_action(row)
        action = parse_completion(completion)
        if action.kind == "unparseable":
            return fail(Category.UNPARSEABLE, action.error)
        if expected.kind == "message":
            if action.kind != "message":
                return fail(Category.MESSAGE_EXPECTED, f"called {', '.join(c.name for c in action.calls)}")
            if action.content.strip() == expected.content.strip():
                return ok("message")
            return fail(Category.NOT_EXACT, "message content differs")
        if action.kind == "message":
            return fail(Category.CALL_EXPECTED, f"expected a call to {', '.join(c.name for c in expected.calls)}")
        pred = [canonical_call(c) for c in action.calls]
        if any(p is None for p in pred):
            return fail(Category.BAD_ARGUMENTS_JSON, "arguments do not decode as a JSON object")
        exp = [canonical_call(c) for c in expected.calls]
        if sorted(pred) == sorted(exp):  # type: ignore[type-var]
            return ok(", ".join(c.name for c in action.calls))
        if len(pred) != len(exp):
            return fail(Category.NOT_EXACT, f"{len(pred)} calls where {len(exp)} expected")
        return fail(Category.NOT_EXACT, f"{_clip(' '.join(sorted(pred)))} != {_clip(' '.join(sorted(exp)))}")  # type: ignore[arg-type]


def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
