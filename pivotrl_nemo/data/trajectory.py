"""Expert trajectories in OpenAI-chat form (docs/contracts.md): reading and validation.

``load_trajectories`` stops at the first malformed row with ``file:line: field: message``
unless ``skip_invalid`` is set, in which case bad rows are skipped and counted. Lines are read
as bytes (``utils.io.iter_jsonl``): invalid UTF-8 and nesting deeper than
``utils.io.MAX_JSON_DEPTH`` are malformed rows like any other. A file with no valid row is
refused (``FILE: no trajectories``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..utils.io import BoundsError, DataError, format_problem, iter_jsonl, loads_bounded
from ..utils.logging import get_logger

log = get_logger(__name__)

ROLES = ("system", "developer", "user", "assistant", "tool")


def _check_tool(tool: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(tool, dict):
        return [(where, "must be an object")]
    fn = tool.get("function", tool)  # chat format nests under "function"; Responses format is flat
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
        return [(f"{where}.function.name", "missing or not a string")]
    params = fn.get("parameters", {})
    if not isinstance(params, dict):
        return [(f"{where}.function.parameters", "must be a JSON-schema object")]
    return []


def validate_trajectory(obj: Any) -> list[tuple[str, str]]:
    """Every problem of one trajectory row as (field, message); empty when valid."""
    if not isinstance(obj, dict):
        return [("<row>", "must be a JSON object")]
    problems: list[tuple[str, str]] = []
    if not isinstance(obj.get("id"), str) or not obj.get("id"):
        problems.append(("id", "missing or not a non-empty string"))
    tools = obj.get("tools", [])
    if not isinstance(tools, list):
        problems.append(("tools", "must be a list"))
        tools = []
    names = set()
    for i, t in enumerate(tools):
        p = _check_tool(t, f"tools[{i}]")
        problems.extend(p)
        if not p:
            names.add(t.get("function", t)["name"])
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return problems + [("messages", "missing or empty")]
    open_calls: set[str] = set()
    for i, m in enumerate(msgs):
        w = f"messages[{i}]"
        if not isinstance(m, dict):
            problems.append((w, "must be an object"))
            continue
        role = m.get("role")
        if role not in ROLES:
            problems.append((f"{w}.role", f"must be one of {list(ROLES)}, got {role!r}"))
            continue
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            problems.append((f"{w}.content", "must be a string or null"))
        if role == "assistant":
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                problems.append((f"{w}.tool_calls", "must be a list"))
                continue
            if not calls and not (content or "").strip():
                problems.append((w, "assistant message has neither content nor tool_calls"))
            for j, c in enumerate(calls):
                cw = f"{w}.tool_calls[{j}]"
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    problems.append((f"{cw}.function.name", "missing or not a string"))
                    continue
                if names and fn["name"] not in names:
                    problems.append((f"{cw}.function.name", f"{fn['name']!r} is not in the trajectory's tools"))
                args = fn.get("arguments", "{}")
                bad_args = "must be a JSON object (string-encoded)"
                try:
                    decoded = loads_bounded(args) if isinstance(args, str) else args
                    if not isinstance(decoded, dict):
                        raise ValueError
                except BoundsError as e:
                    problems.append((f"{cw}.function.arguments", f"{bad_args} ({e})"))
                except (ValueError, TypeError):
                    problems.append((f"{cw}.function.arguments", bad_args))
                if isinstance(c.get("id"), str):
                    open_calls.add(c["id"])
        elif role == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str):
                problems.append((f"{w}.tool_call_id", "missing"))
            elif open_calls and cid not in open_calls:
                problems.append((f"{w}.tool_call_id", f"{cid!r} answers no earlier tool call"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
        problems.append(("messages", "no assistant turn: nothing to learn from"))
    return problems


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def load_trajectories(path: str, skip_invalid: bool = False) -> tuple[list[dict], LoadReport]:
    """The valid trajectories of a JSONL file and a report of what was skipped; DataError on the
    first bad row (unless ``skip_invalid``) and when no row at all is valid."""
    report = LoadReport()
    out = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path, yield_errors=True):
        problems = [(obj.field, obj.message)] if isinstance(obj, DataError) else validate_trajectory(obj)
        if not problems and obj["id"] in seen:
            problems = [("id", f"duplicate trajectory id (first at line {seen[obj['id']]})")]
        elif not problems:
            seen[obj["id"]] = lineno
        if problems:
            if not skip_invalid:
                f, msg = problems[0]
                raise DataError(path, lineno, f, msg)
            report.skipped += 1
            report.problems.extend(format_problem(path, lineno, f, msg) for f, msg in problems)
            continue
        out.append(obj)
    report.loaded = len(out)
    if not out:
        detail = f" ({report.skipped} invalid rows skipped; first: {report.problems[0]})" if report.skipped else ""
        raise DataError(path, 0, "", f"no trajectories{detail}")
    if report.skipped:
        log.warning(
            "skipped %d invalid trajectories in %s (data.skip_invalid=true); first: %s",
            report.skipped,
            path,
            report.problems[0],
        )
    return out, report
