"""``tool_call_schema``: argument comparison under each tool's JSON schema (the ``jsonl`` default).

``tool_call_args`` is the paper's rule (types identical, long strings by a lenient word overlap);
measured against official judges it both rewards wrong calls and fails right ones
(docs/verifiers.md). This verifier reads the schema of the called tool from the row's tool list
(``PivotRow.tool_parameters``; BFCL's dialect, ``dict`` / ``float`` / ``tuple``, is read too) and
decides every argument by one named rule, quoted in the verdict's ``detail``:

- ``number``: an int or a float within ``number_tolerance`` (relative); ``integer``, ``boolean``
  and ``null`` exact, and the JSON type must fit the schema (``"5"`` is not ``5``);
- ``enum``: exact (or normalised, ``exact_enums=False``);
- strings: recognised and compared by ``verifiers.strings`` (dates and times as values, ids and
  emails exact, short text normalised, free text by a measured similarity);
- arrays: in order, or as multisets when the schema says ``uniqueItems`` or ``set_arguments``
  names them; items under the ``items`` schema;
- objects (the arguments themselves, and nested ones): ``required`` properties must be given;
  optional ones follow ``optional_omitted`` / ``optional_added`` (the schema ``default`` is the
  harmless value); top-level expected arguments the schema does not declare are not compared,
  predicted ones follow ``undeclared_prediction`` (nested undeclared keys are compared);
- ``acceptable``: an argument the expected call's ``acceptable_arguments`` lists passes with any
  listed value, or omitted when ``""`` is listed (``verifiers.base.check_acceptable``); with such
  a list, an argument neither expected nor listed fails (the possible-answer form is exhaustive).

Without a schema (a tool the row does not describe, or an untyped property) a value's rule is
inferred from the expected value, with every int or float a ``number``. The shared steps
(``verifiers.base.VerifierBase``) come first; any predicted call naming a tool the row does not
offer fails ``unknown_tool``; several calls are matched as multisets (``verifiers.matching``).
Nesting deeper than ``MAX_DEPTH`` fails, so time is bounded by the completion's size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from pivotrl_nemo.config.schema import SchemaVerifierConfig, VerifierConfig
from pivotrl_nemo.data.actions import Action, ToolCall
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.verifiers.base import (
    OMITTED,
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
from pivotrl_nemo.verifiers.matching import match_calls, maximum_matching
from pivotrl_nemo.verifiers.strings import compare_strings, normalised_equal

MAX_DEPTH = 32
"""Argument nesting deeper than this fails ``wrong_args`` (tool arguments nest a few levels)."""
MAX_SET_ITEMS = 64
"""Set-compared arrays longer than this must be equal in order (the pairing costs items**2 comparisons)."""

_TYPE_ALIASES = {"dict": "object", "float": "number", "double": "number", "int": "integer", "long": "integer"}
_TYPE_ALIASES.update({"str": "string", "bool": "boolean", "list": "array", "tuple": "array"})
_KNOWN_TYPES = frozenset({"object", "number", "integer", "string", "boolean", "array", "null"})

Failure = tuple[str, str]
"""``(category, detail)`` of a failed comparison."""


def json_type(v: Any) -> str:
    """The JSON type name of a decoded value (bool is ``boolean``, not ``integer``)."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object", type(None): "null"}.get(type(v), "unknown")


def schema_types(schema: dict[str, Any]) -> list[str]:
    """The JSON types a schema node allows (BFCL names mapped); ``[]`` when unconstrained."""
    declared = schema.get("type")
    names = declared if isinstance(declared, list) else [declared]
    return [t for t in (_TYPE_ALIASES.get(n, n) for n in names if isinstance(n, str)) if t in _KNOWN_TYPES]


def _fits(value_type: str, allowed: str) -> bool:
    return value_type == allowed or (allowed == "number" and value_type == "integer")


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


class _Comparison:
    """One predicted call against one expected call under the tool's schema; ``rules`` collects
    the names of the rules that decided, for the verdict's detail."""

    def __init__(self, cfg: SchemaVerifierConfig, tool: str) -> None:
        self.cfg, self.tool = cfg, tool
        self.rules: set[str] = set()

    def attempt(self, compare: Callable[[], Failure | None]) -> Failure | None:
        """``compare()``, keeping the rules it used only when it passed (a failed alternative,
        branch or set pairing did not decide the verdict)."""
        before = set(self.rules)
        bad = compare()
        if bad is not None:
            self.rules = before
        return bad

    def _named(self, names: list[str], name: str) -> bool:
        return name in names or f"{self.tool}.{name}" in names

    # ------------------------------------------------------------------------------ values

    def value(self, pred: Any, exp: Any, schema: Any, path: str, name: str, depth: int) -> Failure | None:
        if depth > MAX_DEPTH:
            return Category.WRONG_ARGS, f"{path}: nested deeper than {MAX_DEPTH}"
        node = schema if isinstance(schema, dict) else {}
        for key in ("anyOf", "oneOf"):
            branches = node.get(key)
            if isinstance(branches, list) and branches:
                first: Failure | None = None
                for branch in branches:
                    merged = {**node, key: None, **branch} if isinstance(branch, dict) else {**node, key: None}
                    bad = self.attempt(lambda m=merged: self.value(pred, exp, m, path, name, depth + 1))  # type: ignore[misc]
                    if bad is None:
                        return None
                    first = first or bad
                return first
        if isinstance(node.get("enum"), list):
            self.rules.add("enum")
            same = json_type(pred) == json_type(exp) and _canonical(pred) == _canonical(exp)
            if not self.cfg.exact_enums and isinstance(pred, str) and isinstance(exp, str):
                same = normalised_equal(pred, exp, self.cfg.string_normalisation)
            return None if same else (Category.WRONG_ARGS, f"{path}: {_clip(pred)} != {_clip(exp)} (enum)")
        inferred = ["number" if json_type(exp) == "integer" else json_type(exp)]
        allowed = schema_types(node) or inferred
        if not any(_fits(json_type(exp), t) for t in allowed):  # the expected value breaks its schema: trust the value
            allowed, node = inferred, {}
        kind = json_type(pred)
        if kind == "number" and self.cfg.integral_floats and "integer" in allowed and pred.is_integer():
            kind = "integer"  # 5.0 for an integer, where the judge executes (integral_floats)
        chosen = next((t for t in allowed if _fits(kind, t)), None)
        if chosen is None:
            return Category.WRONG_ARG_TYPE, f"{path}: {kind} where {' or '.join(allowed)} expected"
        return self._typed(chosen, pred, exp, node, path, name, depth)

    def _typed(self, t: str, pred: Any, exp: Any, node: dict, path: str, name: str, depth: int) -> Failure | None:
        if t == "number":
            self.rules.add("number")
            if json_type(exp) not in ("integer", "number"):
                return Category.WRONG_ARG_TYPE, f"{path}: a number where {json_type(exp)} expected"
            return None if _close(pred, exp, self.cfg.number_tolerance) else _differs(path, pred, exp, "number")
        if t in ("integer", "boolean", "null"):
            self.rules.add(t)
            same = json_type(exp) == t and pred == exp
            if t == "integer" and json_type(exp) == "number":  # an integral expected float under an integer schema
                same = float(exp).is_integer() and pred == exp
            return None if same else _differs(path, pred, exp, t)
        if t == "string":
            if not isinstance(exp, str):
                return Category.WRONG_ARG_TYPE, f"{path}: a string where {json_type(exp)} expected"
            rule, why = compare_strings(pred, exp, node.get("format"), self.cfg)
            self.rules.add(rule)
            return (
                None if why is None else (Category.WRONG_ARGS, f"{path}: {_clip(pred)} vs {_clip(exp)}: {rule} {why}")
            )
        if t == "array":
            return self._array(pred, exp, node, path, name, depth)
        if t == "object":
            return self.object(pred, exp, node, path, name, depth)
        return None  # unreachable: t is one of _KNOWN_TYPES

    def _array(self, pred: list, exp: Any, node: dict, path: str, name: str, depth: int) -> Failure | None:
        if not isinstance(exp, list):
            return Category.WRONG_ARG_TYPE, f"{path}: an array where {json_type(exp)} expected"
        if len(pred) != len(exp):
            return Category.WRONG_ARGS, f"{path}: {len(pred)} items where {len(exp)} expected"
        items = node.get("items")

        def item_schema(i: int) -> Any:
            return items[i] if isinstance(items, list) and i < len(items) else items

        as_set = (node.get("uniqueItems") is True or self._named(self.cfg.set_arguments, name)) and not isinstance(
            items, list
        )
        item_name = f"{name}[]"  # set_arguments names this array, not the arrays inside it
        if as_set and len(exp) <= MAX_SET_ITEMS:
            self.rules.add("set")

            def pairs(p: Any, e: Any) -> bool:
                return self.attempt(lambda: self.value(p, e, items, f"{path}[]", item_name, depth + 1)) is None

            edges = [[j for j, p in enumerate(pred) if pairs(p, e)] for e in exp]
            matched = len(maximum_matching(edges))
            if matched == len(exp):
                return None
            return Category.WRONG_ARGS, f"{path}: {matched} of {len(exp)} items matched (compared as a set)"
        self.rules.add("ordered_list")
        for i, (p, e) in enumerate(zip(pred, exp)):
            bad = self.value(p, e, item_schema(i), f"{path}[{i}]", item_name, depth + 1)
            if bad is not None:
                return bad
        return None

    # ------------------------------------------------------------------------------ objects

    def object(
        self,
        pred: Any,
        exp: Any,
        node: dict,
        path: str,
        name: str,
        depth: int,
        acceptable: dict[str, list[Any]] | None = None,
    ) -> Failure | None:
        if not isinstance(pred, dict) or not isinstance(exp, dict):
            return Category.WRONG_ARG_TYPE, f"{path}: {json_type(pred)} where {json_type(exp)} expected"
        if acceptable is not None:
            self.rules.add("acceptable")
            declared = node.get("properties")
            props_for: dict[str, Any] = declared if isinstance(declared, dict) else {}

            def matches(p: Any, e: Any, arg: str) -> bool:
                prop = props_for.get(arg)
                if isinstance(e, str) and e == OMITTED:  # the omission marker: "" only where a string may be ""
                    types = schema_types(prop) if isinstance(prop, dict) else []
                    return p == OMITTED and (not types or "string" in types)
                return self.attempt(lambda: self.value(p, e, prop, _sub(path, arg), arg, depth + 1)) is None

            pred, bad = check_acceptable(pred, acceptable, matches, set(node.get("required") or []))
            if bad is not None:
                return bad
            exp = {k: v for k, v in exp.items() if k not in acceptable}
        props = node.get("properties")
        if not isinstance(props, dict) or (not props and exp):
            return self._untyped_object(pred, exp, node, path, name, depth)
        required = set(node.get("required") or [])
        top = depth == 0
        for key in sorted(set(exp) | set(pred)):
            sub, sub_name = _sub(path, key), (f"{name}.{key}" if name else key)
            if key not in props and top:  # nested undeclared keys are compared below, as inferred
                if key in pred and key not in exp:
                    if self.cfg.undeclared_prediction == "fail":
                        return Category.WRONG_ARG_KEYS, f"{sub}: not declared by the tool's schema"
                    self.rules.add("undeclared_ignored")
                    continue
                if key in exp and self.cfg.undeclared_expected == "ignore":
                    self.rules.add("undeclared_ignored")
                    continue
            prop = props.get(key)
            if key in pred and key in exp:
                bad = self.value(pred[key], exp[key], prop, sub, sub_name, depth + 1)
            elif key in exp:
                bad = self._omitted(exp[key], prop, key in required, sub, sub_name, depth)
            elif acceptable is not None:  # the possible-answer form lists every acceptable argument
                return Category.WRONG_ARG_KEYS, f"{sub}: given, and neither expected nor among the acceptable arguments"
            elif prop is None:
                return Category.WRONG_ARG_KEYS, f"{sub}: given, and neither expected nor declared by the schema"
            else:
                bad = self._added(pred[key], prop, sub, sub_name, depth)
            if bad is not None:
                return bad
        return None

    def _untyped_object(self, pred: dict, exp: dict, node: dict, path: str, name: str, depth: int) -> Failure | None:
        """An object without declared properties: the same keys, each value under
        ``additionalProperties`` when that is a schema, else inferred from the expected value."""
        if set(pred) != set(exp):
            missing, extra = sorted(set(exp) - set(pred)), sorted(set(pred) - set(exp))
            return (
                Category.WRONG_ARG_KEYS,
                f"{path}: missing keys {clip(str(missing), 80)}, unexpected {clip(str(extra), 80)}",
            )
        extra_schema = node.get("additionalProperties")
        for key in sorted(exp):
            bad = self.value(
                pred[key], exp[key], extra_schema, _sub(path, key), f"{name}.{key}" if name else key, depth + 1
            )
            if bad is not None:
                return bad
        return None

    def _omitted(self, exp: Any, prop: Any, required: bool, path: str, name: str, depth: int) -> Failure | None:
        self.rules.add("optional_omitted")
        if required:
            return Category.WRONG_ARG_KEYS, f"{path}: required, and omitted"
        mode = self.cfg.optional_omitted
        if mode == "always" or (mode == "default" and self._named(self.cfg.omittable_arguments, name)):
            return None
        if mode == "default" and self._is_default(exp, prop, path, name, depth):
            return None
        return Category.WRONG_ARG_KEYS, f"{path}: omitted, and {_clip(exp)} is not its schema default"

    def _added(self, pred: Any, prop: Any, path: str, name: str, depth: int) -> Failure | None:
        self.rules.add("optional_added")
        mode = self.cfg.optional_added
        if mode == "always" or (mode == "default" and self._is_default(pred, prop, path, name, depth)):
            return None
        return Category.WRONG_ARG_KEYS, f"{path}: given as {_clip(pred)}, not expected and not its schema default"

    def _is_default(self, value: Any, prop: Any, path: str, name: str, depth: int) -> bool:
        if not isinstance(prop, dict) or "default" not in prop:
            return False
        return self.value(value, prop["default"], prop, path, name, depth + 1) is None


def _sub(path: str, key: str) -> str:
    key = clip(key, 40)  # untrusted keys: details stay short
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def _close(a: float, b: float, tol: float) -> bool:
    """Equal numbers: two ints exactly (ids and timestamps are ints), else within a relative
    ``tol``; an int too large for a float is never close to a float."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        fa, fb = float(a), float(b)
    except OverflowError:
        return False
    if not (math.isfinite(fa) and math.isfinite(fb)):
        return fa == fb
    return abs(fa - fb) <= tol * max(1.0, abs(fa), abs(fb))


def _clip(v: Any, n: int = 60) -> str:
    return clip(repr(v), n)


def _differs(path: str, pred: Any, exp: Any, rule: str) -> Failure:
    return Category.WRONG_ARGS, f"{path}: {_clip(pred)} != {_clip(exp)} ({rule})"


def compare_call(
    pred: ToolCall, exp: ToolCall, schemas: dict[str, dict[str, Any]], cfg: SchemaVerifierConfig
) -> Verdict:
    """One predicted call against one expected call under ``schemas[exp.name]`` (when there is one)."""
    decided = decide_call(pred, exp)
    if decided is not None:
        return decided
    assert pred.arguments is not None and exp.arguments is not None  # decide_call checked both
    comparison = _Comparison(cfg, exp.name)
    schema = schemas.get(exp.name, {})
    acceptable = json_normalised(exp.acceptable) if exp.acceptable is not None else None
    try:
        bad = comparison.object(
            json_normalised(pred.arguments), json_normalised(exp.arguments), schema, "args", "", 0, acceptable
        )
    except (RecursionError, ValueError, TypeError, OverflowError) as e:
        return fail(Category.WRONG_ARGS, f"{pred.name}: arguments not comparable ({type(e).__name__})")
    if bad is not None:
        return fail(bad[0], f"{pred.name}: {bad[1]}")
    rules = ", ".join(sorted(comparison.rules)) or "no arguments"
    return ok(f"{pred.name}: {rules}{'' if schema else ' (no schema: inferred)'}")


class ToolCallSchemaVerifier(VerifierBase):
    """Schema-aware argument comparison, configured by ``cfg.schema`` (``SchemaVerifierConfig``)
    and ``cfg.parallel_mode``."""

    def __init__(self, cfg: VerifierConfig | None = None) -> None:
        super().__init__(cfg)
        self.rules = self.cfg.schema

    def compare_calls(self, row: PivotRow, expected: Action, action: Action) -> Verdict:
        schemas = row.tool_parameters()
        return match_calls(
            action.calls, expected.calls, lambda p, e: compare_call(p, e, schemas, self.rules), self.cfg.parallel_mode
        )
