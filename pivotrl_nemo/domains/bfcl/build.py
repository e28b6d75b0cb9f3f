"""Expert trajectories from BFCL v4 multi-turn data (``docs/contracts.md`` trajectory format).

Per entry: the involved classes' tool schemas (OpenAI chat format, minus the entry's
``excluded_function`` names), then per user turn the turn's user message(s) and, for each
ground-truth call of the turn, an assistant message with one tool call and a tool message with
the output of that call on live backends. Call strings are parsed without evaluation
(``actions.parse_python_calls``; BFCL's few positional arguments are named from the backend
method's signature). Entries whose ground truth cannot be parsed are skipped and counted.

Supported categories: ``multi_turn_base``, ``multi_turn_miss_param`` (turns with no ground-truth
call keep their user message and no assistant step) and ``multi_turn_long_context`` (backends
loaded with ``long_context=True``, recorded as ``metadata.env.long_context``). Entries whose tool
list changes mid-episode (``miss_func``'s ``missed_function``) are skipped with a reason.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from typing import Any

from pivotrl_nemo.data.actions import ToolCall, parse_python_calls
from pivotrl_nemo.domains.bfcl import backends
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)

CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")


def load_category(category: str) -> tuple[list[dict[str, Any]], dict[str, list[list[str]]]]:
    """BFCL entries of a category and their ground truth (entry id -> per-turn call strings)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL multi-turn category {category!r}; choices: {list(CATEGORIES)}")
    root = backends.data_dir()
    entries = backends.read_jsonl(root / f"BFCL_v4_{category}.json")
    answers = backends.read_jsonl(root / "possible_answer" / f"BFCL_v4_{category}.json")
    return entries, {a["id"]: a["ground_truth"] for a in answers}


def _parse_positional_call(text: str, owners: dict[str, str]) -> ToolCall | None:
    """``f('a', b=1)`` with literal arguments; positional ones named from the method signature."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return None
    name = node.func.id
    if name not in owners:
        return None
    params = backends.parameter_names(owners[name], name)
    if len(node.args) > len(params) or any(isinstance(a, ast.Starred) for a in node.args):
        return None
    try:
        args = {params[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        for kw in node.keywords:
            if kw.arg is None or kw.arg in args:
                return None
            args[kw.arg] = ast.literal_eval(kw.value)
        raw = json.dumps(args, ensure_ascii=False)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    return ToolCall(name, json.loads(raw), raw)


def parse_ground_truth_call(text: str, owners: dict[str, str]) -> ToolCall | None:
    """One BFCL ground-truth call string as a ToolCall (never evaluated), or None."""
    calls = parse_python_calls(text)
    if calls is not None:
        return calls[0] if len(calls) == 1 else None
    return _parse_positional_call(text, owners)


def _skip_reason(entry: dict[str, Any], ground_truth: list[list[str]] | None) -> str | None:
    if ground_truth is None:
        return "no ground truth"
    if entry.get("missed_function"):
        return "tool list changes mid-episode (missed_function)"
    if len(ground_truth) != len(entry["question"]):
        return "ground truth and question turn counts differ"
    unknown = [c for c in entry["involved_classes"] if c not in backends.CLASS_MODULES]
    if unknown:
        return f"unsupported backend classes {unknown}"
    return None


def build_entry(entry: dict[str, Any], ground_truth: list[list[str]], category: str) -> dict[str, Any] | None:
    """One trajectory dict, or None when a ground-truth call cannot be parsed."""
    long_context = "long_context" in category
    env_meta: dict[str, Any] = {
        "initial_config": entry["initial_config"],
        "involved_classes": list(entry["involved_classes"]),
    }
    if long_context:
        env_meta["long_context"] = True
    env = backends.make_env(env_meta)
    messages: list[dict[str, Any]] = []
    n = 0
    for turn, calls in zip(entry["question"], ground_truth):
        for msg in turn:
            messages.append({"role": msg["role"], "content": msg["content"]})
        for text in calls:
            call = parse_ground_truth_call(text, env.method_owner)
            if call is None:
                log.debug("unparseable ground truth in %s: %r", entry["id"], text)
                return None
            result = env.execute(call)
            call_id = f"call_{n}"
            n += 1
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.raw_arguments},
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result.output})
    return {
        "id": f"bfcl/{entry['id']}",
        "domain": "bfcl",
        "source": f"bfcl_v4/{category}",
        "tools": backends.tool_schemas(entry["involved_classes"], exclude=entry.get("excluded_function", ())),
        "messages": messages,
        "metadata": {"env": json.loads(json.dumps(env_meta))},
    }


def build_bfcl_trajectories(categories: list[str], max_trajectories: int = 0) -> list[dict[str, Any]]:
    """Expert trajectories for the categories, in file order; ``max_trajectories`` > 0 caps the total."""
    out: list[dict[str, Any]] = []
    for category in categories:
        entries, answers = load_category(category)
        skipped: Counter[str] = Counter()
        for entry in entries:
            if max_trajectories > 0 and len(out) >= max_trajectories:
                break
            gt = answers.get(entry["id"])
            reason = _skip_reason(entry, gt)
            if reason is None:
                traj = build_entry(entry, gt, category)  # type: ignore[arg-type]
                if traj is not None:
                    out.append(traj)
                    continue
                reason = "unparseable ground-truth call"
            skipped[reason] += 1
        if skipped:
            log.warning("bfcl %s: skipped %d entries: %s", category, sum(skipped.values()), dict(skipped))
        log.info("bfcl %s: %d trajectories so far", category, len(out))
    return out
