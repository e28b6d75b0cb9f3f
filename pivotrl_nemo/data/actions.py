"""Actions: what an assistant turn does, parsed from untrusted text and rendered for training.

The text format the policy is trained to emit (and that ``render_action`` produces) is one
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block per call, several blocks for
parallel calls, and plain text for a message. The parser also accepts a bare JSON call object or
list, and Python call syntax (``mv(source='a', destination='b')``, BFCL's native format), which
is read with ``ast`` and literals only. Nothing is ever evaluated.

Untrusted text is bounded before it is decoded: a number written with more than
``MAX_NUMBER_DIGITS`` digits or brackets nested deeper than ``MAX_NESTING`` make a completion
``unparseable`` (whatever ``sys.set_int_max_str_digits`` says), so no verifier downstream meets
a value it cannot print, compare or copy.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from dataclasses import dataclass, field
from typing import Any, Literal

from ..utils import io as _io
from ..utils.io import BoundsError, json_depth_exceeds, json_loads_within, number_too_long

ActionKind = Literal["function_call", "function_call_batch", "message", "unparseable"]

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_MAX_TEXT = 20_000  # completions longer than this are not parsed (bounded verifier time)

MAX_NUMBER_DIGITS = _io.MAX_NUMBER_DIGITS
"""Longest number (characters of its literal, sign and underscores aside) a completion may hold;
a longer one makes it ``unparseable`` (one limit for completions and rows, set in ``utils.io``).
Far below Python's 4300-digit int conversion limit, so every accepted int can be printed and
re-encoded, and independent of ``sys.set_int_max_str_digits``."""

MAX_NESTING = 256
"""Deepest bracket nesting (lists, dicts, calls) a completion's calls may have; deeper makes it
``unparseable``. Keeps every recursive step downstream (JSON, ``ast``, argument comparison, deep
copies in the BFCL backends) well within Python's recursion limit; above the verifiers' own,
smaller depth limits, so a merely deep argument is still scored by them (``wrong_args``)."""


def _loads(text: str) -> Any:
    """``json.loads`` within the limits (raises ``BoundsError`` past them, JSONDecodeError on bad JSON)."""
    return json_loads_within(text, MAX_NESTING)


@dataclass(frozen=True)
class ToolCall:
    """One call. ``arguments`` is the decoded dict, or None when ``raw_arguments`` is not JSON.

    ``acceptable`` (expected calls only, from ``expected_action.acceptable_arguments``): per
    argument, every acceptable value, ``""`` meaning the argument may be omitted (BFCL's
    possible-answer form); None when the row lists none."""

    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str
    acceptable: dict[str, list[Any]] | None = field(default=None, compare=False)

    def arguments_json(self) -> str:
        return json.dumps(self.arguments if self.arguments is not None else {}, ensure_ascii=False)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    calls: tuple[ToolCall, ...] = field(default_factory=tuple)
    content: str = ""
    error: str = ""

    @property
    def is_call(self) -> bool:
        return self.kind in ("function_call", "function_call_batch")


def _calls_action(calls: list[ToolCall]) -> Action:
    if not calls:
        return Action("unparseable", error="no calls")
    return Action("function_call" if len(calls) == 1 else "function_call_batch", tuple(calls))


def make_call(name: str, arguments: Any) -> ToolCall:
    """Build a ToolCall from a name and arguments given as a dict or a JSON string. Never raises
    on a string: one that is not a JSON object within the limits gives ``arguments=None``."""
    if isinstance(arguments, str):
        raw = arguments
        try:
            decoded = _loads(arguments)
        except ValueError:  # JSONDecodeError or BoundsError
            return ToolCall(name, None, raw)
        return ToolCall(name, decoded if isinstance(decoded, dict) else None, raw)
    if isinstance(arguments, dict):
        return ToolCall(name, arguments, json.dumps(arguments, ensure_ascii=False))
    return ToolCall(name, None, repr(arguments))


def _call_from_obj(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        _loads_or_none(args)  # past the limits: the completion is unparseable, not bad arguments
    return make_call(obj["name"], args)


def _loads_or_none(text: str) -> Any:
    """``_loads``, None on malformed JSON; ``BoundsError`` propagates."""
    try:
        return _loads(text)
    except BoundsError:
        raise
    except ValueError:
        return None


def _parse_json_calls(text: str) -> list[ToolCall] | None:
    """The calls of a JSON call object or list, None when it is not one; raises ``BoundsError``."""
    try:
        obj = _loads(text)
    except BoundsError:
        raise
    except ValueError:
        return None
    items = obj if isinstance(obj, list) else [obj]
    calls = [_call_from_obj(o) for o in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def _literal(node: ast.AST) -> Any:
    # ast.literal_eval accepts only literals (strings, numbers, tuples, lists, dicts, sets,
    # booleans, None): never names, calls or attribute access.
    return ast.literal_eval(node)


def _check_python_limits(text: str) -> None:
    """Raise ``BoundsError`` when Python-syntax ``text`` holds a number literal longer than
    ``MAX_NUMBER_DIGITS`` (read from its tokens, before ``ast`` converts any literal) or brackets
    nested deeper than ``MAX_NESTING`` (outside string literals). Text that does not tokenize is
    left to ``ast.parse``."""
    if json_depth_exceeds(text, MAX_NESTING, quotes="\"'"):
        raise BoundsError(f"nested deeper than {MAX_NESTING}")
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NUMBER and number_too_long(tok.string):
                raise BoundsError(f"number longer than {MAX_NUMBER_DIGITS} digits")
    except (tokenize.TokenError, SyntaxError, RecursionError, MemoryError):
        return


def _dotted_name(func: ast.AST) -> str | None:
    """``f`` or ``math.factorial`` as written (tool names may hold dots, as in BFCL); None for
    anything that is not a plain or dotted name."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    return ".".join([func.id, *reversed(parts)])


def parse_python_calls(text: str) -> list[ToolCall] | None:
    """Parse ``f(a=1)`` or ``[f(a=1), g(b='x')]`` with keyword literal arguments only; None when
    it is not such a call (or is past ``MAX_NUMBER_DIGITS`` / ``MAX_NESTING``)."""
    try:
        return _parse_python_calls(text)
    except BoundsError:
        return None


def _parse_python_calls(text: str) -> list[ToolCall] | None:
    _check_python_limits(text.strip())
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    nodes = tree.body.elts if isinstance(tree.body, (ast.List, ast.Tuple)) else [tree.body]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _dotted_name(node.func)
        if name is None:
            return None
        try:
            args = {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
        if len(args) != len(node.keywords):
            return None
        try:  # sets, bytes and complex numbers are literals but not JSON: not a valid call
            raw = json.dumps(args, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            return None
        calls.append(ToolCall(name, _loads(raw), raw))
    return calls or None


def parse_completion(text: str) -> Action:
    """Parse untrusted model text into an Action. Never raises: text past ``MAX_NUMBER_DIGITS``
    or ``MAX_NESTING`` is ``unparseable``."""
    try:
        return _parse_completion(text)
    except BoundsError as e:
        return Action("unparseable", error=str(e))
    except (RecursionError, MemoryError) as e:  # a last guard: the limits above should prevent both
        return Action("unparseable", error=f"{type(e).__name__} while parsing")


def _parse_completion(text: str) -> Action:
    if not isinstance(text, str):
        return Action("unparseable", error="completion is not text")
    if len(text) > _MAX_TEXT:
        return Action("unparseable", error=f"completion longer than {_MAX_TEXT} characters")
    stripped = text.strip()
    if not stripped:
        return Action("unparseable", error="empty completion")
    if "<tool_call>" in stripped:
        calls: list[ToolCall] = []
        for block in TOOL_CALL_RE.findall(stripped):
            parsed = _parse_json_calls(block.strip())
            if parsed is None:
                return Action("unparseable", error=f"tool_call block is not a JSON call: {block.strip()[:80]!r}")
            calls.extend(parsed)
        return _calls_action(calls)
    if stripped[0] in "[{":
        parsed = _parse_json_calls(stripped)
        if parsed is not None:
            return _calls_action(parsed)
    if re.match(r"^\[?\s*[A-Za-z_][\w.]*\(", stripped) and stripped.rstrip().endswith((")", "]")):
        parsed = _parse_python_calls(stripped)
        if parsed is not None:
            return _calls_action(parsed)
    return Action("message", content=stripped)


def _expected_call(obj: dict[str, Any]) -> ToolCall:
    call = make_call(obj["name"], obj["arguments"])
    acceptable = obj.get("acceptable_arguments")
    if acceptable is None:
        return call
    if not isinstance(acceptable, dict) or not all(isinstance(v, list) and v for v in acceptable.values()):
        raise ValueError("acceptable_arguments must map each argument to a non-empty list of values")
    return ToolCall(call.name, call.arguments, call.raw_arguments, acceptable)


def action_from_expected(expected: dict[str, Any]) -> Action:
    """The Action a pivot row's ``expected_action`` describes (with each call's acceptable values)."""
    kind = expected.get("type")
    if kind == "function_call":
        return Action("function_call", (_expected_call(expected),))
    if kind == "function_call_batch":
        return _calls_action([_expected_call(c) for c in expected["calls"]])
    if kind == "message":
        return Action("message", content=str(expected.get("content", "")))
    raise ValueError(f"unknown expected_action type {kind!r}")


def expected_from_action(action: Action) -> dict[str, Any]:
    """Inverse of ``action_from_expected`` (arguments as JSON strings, as in NVIDIA's rows)."""
    if action.kind == "function_call":
        return {"type": "function_call", **_expected_obj(action.calls[0])}
    if action.kind == "function_call_batch":
        return {"type": "function_call_batch", "calls": [_expected_obj(c) for c in action.calls]}
    if action.kind == "message":
        return {"type": "message", "content": action.content}
    raise ValueError("an unparseable action has no expected form")


def _expected_obj(call: ToolCall) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": call.name, "arguments": call.arguments_json()}
    if call.acceptable is not None:
        obj["acceptable_arguments"] = call.acceptable
    return obj


def render_action(action: Action) -> str:
    """The text the policy is trained to emit for an action (parsed back by parse_completion)."""
    if action.kind == "message":
        return action.content
    if not action.is_call:
        raise ValueError("cannot render an unparseable action")
    return "\n".join(
        "<tool_call>"
        + json.dumps({"name": c.name, "arguments": c.arguments or {}}, ensure_ascii=False)
        + "</tool_call>"
        for c in action.calls
    )
