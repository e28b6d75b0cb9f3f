"""Pivot-row validation (``pivotrl validate FILE``) and summaries.

Every problem is reported as ``file:line: field: message``; the summary counts rows by action
type and depth, as NVIDIA's pivot-dataset validator does. ``validate_file`` also checks a
trajectory file (OpenAI-chat rows with ``messages``; the format is read off the first parseable
row), reports duplicate ids, and refuses NaN / infinite rewards (``json.loads`` accepts
``NaN`` and ``Infinity``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..utils.io import BoundsError, DataError, format_problem, iter_jsonl, loads_bounded
from .trajectory import validate_trajectory

FORMATS = ("pivot", "trajectory")
PASS_RATE_FIELDS = ("pass_rate", "pass_rate_total", "pass_rate_passed")

MESSAGE_ROLES = ("system", "developer", "user", "assistant")


def _arguments_problem(arguments: Any) -> str:
    """Why a call's ``arguments`` is not a JSON object encoded as a string ("" when it is one),
    naming the limit when it is past ``MAX_JSON_DEPTH`` or ``MAX_NUMBER_DIGITS``."""
    message = "must be a JSON object encoded as a string"
    try:
        # json.loads reads str / bytes only; any other value (None: missing) is malformed too
        if not isinstance(arguments, str | bytes | bytearray) or not isinstance(loads_bounded(arguments), dict):
            return message
    except BoundsError as e:
        return f"{message} ({e})"
    except (TypeError, ValueError):
        return message
    return ""


def _validate_input(items: Any) -> list[tuple[str, str]]:
    base = "responses_create_params.input"
    if not isinstance(items, list) or not items:
        return [(base, "missing or empty list")]
    problems = []
    pending: dict[str, int] = {}
    for i, it in enumerate(items):
        w = f"{base}[{i}]"
        if not isinstance(it, dict):
            problems.append((w, "must be an object"))
            continue
        kind = it.get("type")
        if kind == "function_call":
            if not isinstance(it.get("name"), str):
                problems.append((f"{w}.name", "missing"))
            arguments = it.get("arguments")
            problem = _arguments_problem(arguments)
            if problem:
                problems.append((f"{w}.arguments", problem))
            pending[str(it.get("call_id"))] = i
        elif kind == "function_call_output":
            if not isinstance(it.get("output"), str):
                problems.append((f"{w}.output", "must be a string"))
            pending.pop(str(it.get("call_id")), None)
        elif kind in (None, "message"):
            if it.get("role") not in MESSAGE_ROLES:
                problems.append((f"{w}.role", f"must be one of {list(MESSAGE_ROLES)}"))
            if not isinstance(it.get("content"), (str, list)):
                problems.append((f"{w}.content", "must be a string or a list of content parts"))
        elif kind != "reasoning":
            problems.append((f"{w}.type", f"unknown item type {kind!r}"))
    if isinstance(items[-1], dict) and items[-1].get("type") == "function_call":
        problems.append(
            (
                f"{base}[{len(items) - 1}]",
                "prefix ends with a tool call that has no output (the target action leaked into the prefix?)",
            )
        )
    return problems


def _validate_expected(exp: Any, tool_names: set[str]) -> list[tuple[str, str]]:
    if not isinstance(exp, dict):
        return [("expected_action", "missing or not an object")]
    kind = exp.get("type")
    calls: list[tuple[str, Any]] = []
    if kind == "function_call":
        calls = [("expected_action", exp)]
    elif kind == "function_call_batch":
        if not isinstance(exp.get("calls"), list) or not exp["calls"]:
            return [("expected_action.calls", "must be a non-empty list")]
        calls = [(f"expected_action.calls[{i}]", c) for i, c in enumerate(exp["calls"])]
    elif kind == "message":
        return [] if isinstance(exp.get("content"), str) else [("expected_action.content", "must be a string")]
    else:
        return [("expected_action.type", f"must be function_call, function_call_batch or message, got {kind!r}")]
    problems = []
    for w, c in calls:
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str):
            problems.append((f"{w}.name", "missing"))
        elif tool_names and name not in tool_names:
            problems.append((f"{w}.name", f"{name!r} is not in responses_create_params.tools"))
        problem = _arguments_problem(c.get("arguments") if isinstance(c, dict) else None)
        if problem:
            problems.append((f"{w}.arguments", problem))
        if isinstance(c, dict) and "acceptable_arguments" in c:
            problems += _acceptable_problems(c["acceptable_arguments"], f"{w}.acceptable_arguments")
    return problems


def _acceptable_problems(acceptable: Any, where: str) -> list[tuple[str, str]]:
    """``acceptable_arguments``: an object mapping each argument to a non-empty list of values."""
    if not isinstance(acceptable, dict):
        return [(where, "must be an object mapping argument names to lists of acceptable values")]
    return [
        (f"{where}.{arg}", 'must be a non-empty list of acceptable values ("" allows omission)')
        for arg, values in acceptable.items()
        if not isinstance(values, list) or not values
    ]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _not_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def _validate_profile(p: Any) -> list[tuple[str, str]]:
    if not isinstance(p, dict):
        return [("profile", "must be an object")]
    rewards = p.get("rewards")
    if not isinstance(rewards, list) or not all(isinstance(r, (int, float)) for r in rewards):
        return [("profile.rewards", "must be a list of numbers")]
    problems = [(f"profile.rewards[{i}]", "not a finite number") for i, r in enumerate(rewards) if _not_finite(r)]
    for key in ("mean", "variance"):
        if _not_finite(p.get(key)):
            problems.append((f"profile.{key}", "not a finite number"))
    if problems:
        return problems
    if p.get("k") != len(rewards):
        problems.append(("profile.k", f"is {p.get('k')!r} but there are {len(rewards)} rewards"))
    mean = p.get("mean")
    if not isinstance(mean, (int, float)) or isinstance(mean, bool):
        problems.append(("profile.mean", "must be a number"))
    elif rewards and abs(float(mean) - sum(rewards) / len(rewards)) > 1e-6:
        problems.append(("profile.mean", "does not equal the mean of profile.rewards"))
    if not isinstance(p.get("variance"), (int, float)) or isinstance(p.get("variance"), bool):
        problems.append(("profile.variance", "must be a number"))
    return problems


def validate_pivot_row(row: Any) -> list[tuple[str, str]]:
    """Every problem of one pivot row as (field, message); empty when valid."""
    if not isinstance(row, dict):
        return [("<row>", "must be a JSON object")]
    problems: list[tuple[str, str]] = []
    if not isinstance(row.get("id"), str):
        problems.append(("id", "missing or not a string"))
    rcp = row.get("responses_create_params")
    if not isinstance(rcp, dict):
        return problems + [("responses_create_params", "missing or not an object")]
    problems += _validate_input(rcp.get("input"))
    tools = rcp.get("tools", [])
    names: set[str] = set()
    if not isinstance(tools, list):
        problems.append(("responses_create_params.tools", "must be a list"))
    else:
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                problems.append((f"responses_create_params.tools[{i}].name", "missing"))
            elif t.get("parameters") is None:
                problems.append((f"responses_create_params.tools[{i}].parameters", "must not be null"))
            else:
                names.add(t["name"])
    problems += _validate_expected(row.get("expected_action"), names)
    meta = row.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("trajectory_id"), str):
        problems.append(("metadata.trajectory_id", "missing (needed to split by trajectory)"))
    elif not isinstance(meta.get("depth", 0), int) or isinstance(meta.get("depth", 0), bool):
        problems.append(("metadata.depth", "must be an integer"))
    if "profile" in row:
        problems += _validate_profile(row["profile"])
    for key in PASS_RATE_FIELDS:
        if key not in row:
            continue
        if not _is_number(row[key]):
            problems.append((key, "must be a number"))
        elif _not_finite(row[key]):
            problems.append((key, "not a finite number"))
    return problems


@dataclass
class ValidationReport:
    rows: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)
    by_action: Counter = field(default_factory=Counter)
    by_depth: Counter = field(default_factory=Counter)
    format: str = "pivot"  # which format was checked: "pivot" or "trajectory" (see FORMATS)

    def summary(self) -> dict:
        return {
            "format": self.format,
            "rows": self.rows,
            "invalid": self.invalid,
            "by_action_type": dict(self.by_action),
            "depth_histogram": {str(k): v for k, v in sorted(self.by_depth.items())},
        }


def detect_format(row: Any) -> str:
    """``"trajectory"`` for an OpenAI-chat trajectory row (``messages``), else ``"pivot"``."""
    if isinstance(row, dict) and "messages" in row and "responses_create_params" not in row:
        return "trajectory"
    return "pivot"


def validate_file(path: str) -> ValidationReport:
    """Check every row of a pivot or trajectory JSONL file (the format of the first parseable
    row); never stops at the first problem. Reading errors (OSError) propagate."""
    rep = ValidationReport()
    detected = False
    seen: dict[str, int] = {}
    for lineno, row in iter_jsonl(path, yield_errors=True):
        rep.rows += 1
        if not detected and not isinstance(row, DataError):
            rep.format, detected = detect_format(row), True
        if isinstance(row, DataError):
            problems = [(row.field, row.message)]
        elif rep.format == "trajectory":
            problems = validate_trajectory(row)
        else:
            problems = validate_pivot_row(row)
        rid = row.get("id") if isinstance(row, dict) else None
        if isinstance(rid, str):
            if rid in seen:
                problems.append(("id", f"duplicate of line {seen[rid]}"))
            else:
                seen[rid] = lineno
        if problems:
            rep.invalid += 1
            rep.problems.extend(format_problem(path, lineno, f, m) for f, m in problems)
            continue
        if rep.format == "trajectory":
            rep.by_action["trajectory"] += 1
            continue
        rep.by_action[row["expected_action"]["type"]] += 1
        rep.by_depth[int(row["metadata"].get("depth", 0))] += 1
    return rep
