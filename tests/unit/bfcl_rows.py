"""Test helper: pivot rows (docs/contracts.md) built by hand from real BFCL trajectories."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pivotrl_nemo.domains.bfcl.build import build_entry, load_category


@cache
def _category(category: str):
    return load_category(category)


def trajectory(entry_id: str, category: str = "multi_turn_base") -> dict[str, Any]:
    entries, answers = _category(category)
    entry = next(e for e in entries if e["id"] == entry_id)
    traj = build_entry(entry, answers[entry_id], category)
    assert traj is not None
    return traj


def _items(msg: dict[str, Any]) -> list[dict[str, Any]]:
    if msg["role"] == "assistant" and msg.get("tool_calls"):
        return [
            {
                "type": "function_call",
                "call_id": tc["id"],
                "name": tc["function"]["name"],
                "arguments": tc["function"]["arguments"],
            }
            for tc in msg["tool_calls"]
        ]
    if msg["role"] == "tool":
        return [{"type": "function_call_output", "call_id": msg["tool_call_id"], "output": msg["content"]}]
    return [{"role": msg["role"], "content": msg["content"]}]


def pivot_rows(traj: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per assistant step: prefix items before it, the step as the expected action."""
    tools = [
        {
            "type": "function",
            "name": t["function"]["name"],
            "description": t["function"]["description"],
            "parameters": t["function"]["parameters"],
            "strict": False,
        }
        for t in traj["tools"]
    ]
    rows, prefix = [], []
    for msg in traj["messages"]:
        if msg["role"] == "assistant":
            fn = msg["tool_calls"][0]["function"]
            k = len(rows)
            rows.append(
                {
                    "id": f"{traj['id']}#{k}",
                    "responses_create_params": {
                        "input": [dict(i) for i in prefix],
                        "tools": tools,
                        "tool_choice": "auto",
                    },
                    "expected_action": {"type": "function_call", "name": fn["name"], "arguments": fn["arguments"]},
                    "agent_ref": {"name": "bfcl_state"},
                    "metadata": {
                        "trajectory_id": traj["id"],
                        "turn_index": k,
                        "depth": k,
                        "domain": "bfcl",
                        "split": "rl",
                        "source": traj["source"],
                        "env": traj["metadata"]["env"],
                    },
                }
            )
        prefix.extend(_items(msg))
    return rows


def row_for(entry_id: str, name: str, nth: int = 0, category: str = "multi_turn_base") -> dict[str, Any]:
    """The row whose expected call is the ``nth`` call to ``name`` in the entry's trajectory."""
    hits = [r for r in pivot_rows(trajectory(entry_id, category)) if r["expected_action"]["name"] == name]
    return hits[nth]


def with_expected(row: dict[str, Any], expected: dict[str, Any], suffix: str) -> dict[str, Any]:
    """A copy of ``row`` with another expected action (and its own id, so caches stay apart)."""
    out = json.loads(json.dumps(row))
    out["expected_action"] = expected
    out["id"] = f"{row['id']}/{suffix}"
    return out


def tool_call(name: str, /, **arguments: Any) -> str:
    """The policy's text format for one call."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def expected_args(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["expected_action"]["arguments"])
