"""Candidate extraction: every eligible assistant turn of a trajectory becomes a pivot row.

The prefix is everything before the turn (system, user, earlier assistant turns, tool calls
and their outputs) in Responses-API items; the turn itself becomes ``expected_action``. Nothing
of the target turn (its calls, text or reasoning) is ever in the prefix.
"""

from __future__ import annotations

import json
import random
from typing import Any

from .actions import Action, expected_from_action, make_call


def tools_to_responses(tools: list[dict]) -> list[dict]:
    """Chat-format tools (``{"type": "function", "function": {...}}``) to the flat Responses form."""
    out = []
    for t in tools:
        fn = t.get("function", t)
        out.append(
            {
                "type": "function",
                "name": fn["name"],
                "description": fn.get("description", ""),
                "parameters": fn.get("parameters", {"type": "object", "properties": {}}),
                "strict": False,
            }
        )
    return out


def _arguments_str(args: Any) -> str:
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def message_to_items(msg: dict) -> list[dict]:
    """One chat message as Responses input items (reasoning fields are dropped)."""
    role = msg["role"]
    if role == "tool":
        return [{"type": "function_call_output", "call_id": msg["tool_call_id"], "output": msg.get("content") or ""}]
    items: list[dict] = []
    content = msg.get("content")
    if content:
        items.append({"role": role, "content": content})
    if role == "assistant":
        for c in msg.get("tool_calls") or []:
            fn = c["function"]
            items.append(
                {
                    "type": "function_call",
                    "call_id": c.get("id", ""),
                    "name": fn["name"],
                    "arguments": _arguments_str(fn.get("arguments", "{}")),
                }
            )
    return items


def action_of_turn(msg: dict) -> Action:
    """The expert action of an assistant message: its calls when it has any, else its text."""
    calls = [
        make_call(c["function"]["name"], c["function"].get("arguments", "{}")) for c in msg.get("tool_calls") or []
    ]
    if calls:
        return Action("function_call" if len(calls) == 1 else "function_call_batch", tuple(calls))
    return Action("message", content=(msg.get("content") or "").strip())


def eligible(domain: str, msg: dict) -> bool:
    """Which assistant turns are candidates (paper App. A.2): tool-call turns and text replies
    for conversational tool use; BFCL trajectories only hold tool-call turns."""
    return bool(msg.get("tool_calls")) or bool((msg.get("content") or "").strip())


def extract_candidates(traj: dict, split: str, verifier: str) -> list[dict]:
    """Pivot rows (docs/contracts.md) for every eligible assistant turn of one trajectory."""
    tools = tools_to_responses(traj.get("tools", []))
    domain = traj.get("domain", "generic")
    meta_env = (traj.get("metadata") or {}).get("env")
    rows = []
    prefix: list[dict] = []
    turn = 0
    for msg in traj["messages"]:
        if msg["role"] == "assistant" and eligible(domain, msg):
            row: dict[str, Any] = {
                "id": f"{traj['id']}#{turn}",
                "responses_create_params": {"input": [dict(i) for i in prefix], "tools": tools, "tool_choice": "auto"},
                "expected_action": expected_from_action(action_of_turn(msg)),
                "agent_ref": {"name": verifier},
                "metadata": {
                    "trajectory_id": traj["id"],
                    "turn_index": turn,
                    "depth": turn,
                    "domain": domain,
                    "source": traj.get("source", ""),
                    "split": split,
                },
            }
            if meta_env is not None:
                row["metadata"]["env"] = meta_env
            rows.append(row)
            turn += 1
        prefix.extend(message_to_items(msg))
    return rows


def split_ids(ids: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assign each trajectory id to a split (seeded shuffle, then cut by fractions).

    Splitting by trajectory, never by row: neighbouring prefixes of one trajectory are
    near-duplicates, so a row-level split leaks the test set into training.
    """
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    names = [n for n, f in fractions.items() if f > 0]
    assignment: dict[str, str] = {}
    start = 0
    for i, name in enumerate(names):
        end = len(order) if i == len(names) - 1 else start + round(fractions[name] * len(order))
        for tid in order[start:end]:
            assignment[tid] = name
        start = end
    return assignment
