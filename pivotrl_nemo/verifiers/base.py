"""Verifier contract: ``verify(row, completion) -> Verdict``, and the shared template.

A verifier is pure, deterministic, bounded in time and never touches the network. The
completion is untrusted model text: verifiers parse it with ``data.actions`` (JSON, or
Python call syntax through ``ast`` with literals only) and never ``eval`` it.

Every built-in verifier is a ``VerifierBase``, built as ``Cls(cfg)`` from a ``VerifierConfig``
(configs select it by its ``registry.VERIFIERS`` name). ``VerifierBase.verify`` decides, in order:

1. the row's expected action (a malformed ``expected_action`` raises ValueError: a data error);
2. an unparseable completion fails ``unparseable``;
3. message vs call: a message where a message is expected goes to ``compare_message``; a call
   where a message is expected fails ``message_expected``, a message where a call is expected
   fails ``call_expected``;
4. calls naming tools the row does not offer: ``unknown_tool`` (a hook; see each verifier);
5. everything else: ``compare_calls``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pivotrl_nemo.config.schema import VerifierConfig
from pivotrl_nemo.data.actions import Action, ToolCall, parse_completion
from pivotrl_nemo.data.pivot_row import PivotRow, RowLike


class Category:
    """Verdict categories: one per way an action can pass or fail (kept in metrics)."""

    CORRECT = "correct"
    UNPARSEABLE = "unparseable"
    MESSAGE_EXPECTED = "message_expected"  # a tool call where a message was expected
    CALL_EXPECTED = "call_expected"  # a message where a tool call was expected
    WRONG_TOOL = "wrong_tool"
    UNKNOWN_TOOL = "unknown_tool"  # a name the row's tool list does not offer
    BAD_ARGUMENTS_JSON = "bad_arguments_json"
    WRONG_ARG_KEYS = "wrong_arg_keys"
    WRONG_ARG_TYPE = "wrong_arg_type"
    WRONG_ARGS = "wrong_args"
    WRONG_CALL_COUNT = "wrong_call_count"
    EXECUTION_ERROR = "execution_error"
    STATE_MISMATCH = "state_mismatch"
    OUTPUT_MISMATCH = "output_mismatch"
    NOT_EXACT = "not_exact"


@dataclass(frozen=True)
class Verdict:
    """Outcome of one verification. ``reward`` is in [0, 1]; binary for every built-in verifier."""

    reward: float
    category: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.reward >= 1.0


def ok(detail: str = "") -> Verdict:
    return Verdict(1.0, Category.CORRECT, detail)


def fail(category: str, detail: str = "") -> Verdict:
    return Verdict(0.0, category, detail)


class Verifier(Protocol):
    """A functional verifier (selected by its ``registry.VERIFIERS`` name, ``verifier.name``)."""

    def verify(self, row: RowLike, completion: str) -> Verdict:
        """Score one completion (raw model text) against the row's expected action."""
        ...


# ---------------------------------------------------------------------------------- shared helpers


def expected_action(row: RowLike) -> Action:
    """The row's expected action (raises ValueError on a malformed row: a data error, not the model's)."""
    return PivotRow.of(row).expected


def row_tool_names(row: RowLike) -> set[str]:
    """Tool names a pivot row offers (Responses format ``{name}`` or chat format ``{function: {name}}``)."""
    return PivotRow.of(row).tool_names


def decide_kind(expected: Action, action: Action) -> Verdict | None:
    """The verdict when parse failure or message-vs-call decides it alone, else None (a message
    where a message is expected passes here: content not compared)."""
    if action.kind == "unparseable":
        return fail(Category.UNPARSEABLE, action.error)
    if expected.kind == "message":
        if action.kind == "message":
            return ok("message expected and given (content not compared)")
        return fail(Category.MESSAGE_EXPECTED, f"called {', '.join(c.name for c in action.calls)}")
    if action.kind == "message":
        return fail(Category.CALL_EXPECTED, f"expected a call to {', '.join(c.name for c in expected.calls)}")
    return None


def json_normalised(args: dict[str, Any]) -> Any:
    """Arguments as JSON would give them back (tuples -> lists, non-string keys -> strings)."""
    return json.loads(json.dumps(args, ensure_ascii=False))


def clip(s: str, n: int) -> str:
    """``s`` cut to at most ``n`` characters, ending in "..." when cut (keeps details short)."""
    return s if len(s) <= n else s[: n - 3] + "..."


def unknown_tool_verdict(
    calls: tuple[ToolCall, ...] | list[ToolCall], tools: set[str], name_chars: int = 80
) -> Verdict | None:
    """``unknown_tool`` naming the first call whose name is not in ``tools``, else None."""
    for call in calls:
        if call.name not in tools:
            return fail(Category.UNKNOWN_TOOL, f"{clip(call.name, name_chars)!r} is not among the row's tools")
    return None


def decide_call(pred: ToolCall, exp: ToolCall) -> Verdict | None:
    """The verdict when the tool name or undecodable arguments decide one call alone, else None
    (the argument verifiers' shared first steps). Expected arguments that do not decode are a
    data error (validation refuses such rows): ValueError."""
    if pred.name != exp.name:
        return fail(Category.WRONG_TOOL, f"called {clip(pred.name, 80)!r}, expected {exp.name!r}")
    if pred.arguments is None:
        return fail(Category.BAD_ARGUMENTS_JSON, f"{pred.name}: arguments do not decode as a JSON object")
    if exp.arguments is None:
        raise ValueError(f"expected arguments of {exp.name} are not a JSON object: {exp.raw_arguments[:80]!r}")
    return None


OMITTED = ""
"""In an ``acceptable_arguments`` list: the argument may be omitted (BFCL's possible-answer form)."""


def check_acceptable(
    pred: dict[str, Any],
    acceptable: dict[str, list[Any]],
    matches: Callable[[Any, Any, str], bool],
    required: frozenset[str] | set[str] = frozenset(),
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Decide the arguments an expected call's ``acceptable`` lists cover.

    An argument the prediction gives passes when ``matches(value, alternative, name)`` holds for
    listed value (``OMITTED`` included, so an explicit ``""`` passes only where the rules let it
    match ``""``); one it omits passes when ``OMITTED`` is listed and ``required`` (the tool
    schema's) does not name it (required wins, as in BFCL's checker).
    Returns the predicted arguments the lists do not cover (for the verifier's own comparison)
    and the first failure as ``(category, detail)``, or None."""
    for name in sorted(acceptable):
        values = acceptable[name]
        if name not in pred:
            if name in required:
                return {}, (Category.WRONG_ARG_KEYS, f"args.{name}: required, and omitted")
            if OMITTED in values:
                continue
            return {}, (
                Category.WRONG_ARG_KEYS,
                f"args.{name}: omitted, and omission is not among its acceptable values",
            )
        # a given value is compared with every listed one, "" included: an explicit "" passes where
        # the verifier's rules let "" match "" (a string argument), as in BFCL's checker
        if not any(matches(pred[name], v, name) for v in values):
            listed = clip(repr([v for v in values if v != OMITTED]), 80)
            return {}, (
                Category.WRONG_ARGS,
                f"args.{name}: {clip(repr(pred[name]), 60)} is not among its acceptable values {listed}",
            )
    return {k: v for k, v in pred.items() if k not in acceptable}, None


# ---------------------------------------------------------------------------------- template


class VerifierBase:
    """The shared ``verify`` (see the module doc); subclasses fill in the hooks.

    ``compare_calls`` must be overridden; ``compare_message`` passes any message by default and
    ``unknown_tool`` rejects, when the row lists tools, the first call naming none of them.
    """

    def __init__(self, cfg: VerifierConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else VerifierConfig()

    def verify(self, row: RowLike, completion: str) -> Verdict:
        """Score one completion (raw model text) against the row's expected action."""
        view = PivotRow.of(row)
        expected = view.expected
        action = parse_completion(completion)
        if expected.kind == "message" and action.kind == "message":
            return self.compare_message(expected, action)
        decided = decide_kind(expected, action)
        if decided is not None:
            return decided
        unknown = self.unknown_tool(view, expected, action)
        if unknown is not None:
            return unknown
        return self.compare_calls(view, expected, action)

    def compare_message(self, expected: Action, action: Action) -> Verdict:
        """A message where a message is expected; by default it passes (content not compared)."""
        return ok("message expected and given (content not compared)")

    def unknown_tool(self, row: PivotRow, expected: Action, action: Action) -> Verdict | None:
        """``unknown_tool`` when a predicted call names a tool the row does not offer, else None."""
        tools = row.tool_names
        return unknown_tool_verdict(action.calls, tools) if tools else None

    def compare_calls(self, row: PivotRow, expected: Action, action: Action) -> Verdict:
        """Predicted call(s) vs expected call(s); both sides are calls here."""
        raise NotImplementedError
