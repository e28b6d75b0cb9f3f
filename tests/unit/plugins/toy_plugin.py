"""A plugin as a user would write one, outside the package: a toy domain, verifier and stage.

Imported with ``plugins=[toy_plugin]`` (on sys.path) or directly by a test; nothing in
``pivotrl_nemo`` is edited to add them.
"""

from __future__ import annotations

import json

from pivotrl_nemo.data.actions import parse_completion
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.pipeline import StageContext, stage
from pivotrl_nemo.registry import DOMAINS, VERIFIERS
from pivotrl_nemo.utils.io import atomic_write_json, read_jsonl
from pivotrl_nemo.verifiers.base import Verdict

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    }
]


def _trajectory(i: int) -> dict:
    args = json.dumps({"a": i, "b": 1})
    return {
        "id": f"toy/{i}",
        "domain": "toy",
        "source": "toy",
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": f"What is {i} + 1?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "add", "arguments": args}}],
            },
            {"role": "tool", "tool_call_id": "c0", "content": str(i + 1)},
            {"role": "assistant", "content": f"It is {i + 1}."},
        ],
    }


@DOMAINS.register("arith", replace=True)
class ToyDomain:
    """Ten arithmetic episodes; its default verifier is the toy one."""

    default_verifier = "toy_parity"

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @staticmethod
    def config_problems(cfg) -> list:
        return []

    def trajectories(self):
        return [_trajectory(i) for i in range(10)], {"skipped_invalid": 0}

    def environment(self):
        return None


@VERIFIERS.register("toy_parity", replace=True)
class ToyParityVerifier:
    """Passes a call to the expected tool whose argument 'a' is even (a deliberately odd rule)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def verify(self, row, completion: str) -> Verdict:
        expected = PivotRow.of(row).expected
        action = parse_completion(completion)
        if expected.kind == "message" or action.kind != "function_call":
            return Verdict(0.0, "toy_other")
        a = (action.calls[0].arguments or {}).get("a")
        return Verdict(1.0 if isinstance(a, int) and a % 2 == 0 else 0.0, "toy_parity")


@stage(
    "toy_score",
    upstream=("extract",),
    sections=lambda c: [c.verifier.name],
    in_run=False,
    help="score every candidate's expert action with the configured verifier",
)
def toy_score(ctx: StageContext) -> dict:
    """Writes toy_scores.json: the configured verifier's reward for each rl candidate's expert action."""
    from pivotrl_nemo.data.actions import render_action

    rows = [
        r
        for split in ctx.cfg.data.split_fractions
        if ctx.layout.candidates(split).exists()
        for r in read_jsonl(ctx.layout.candidates(split))
    ]
    verifier = ctx.runtime.verifier
    scores = {r["id"]: verifier.verify(r, render_action(PivotRow.of(r).expected)).reward for r in rows}
    atomic_write_json(ctx.layout.root / "toy_scores.json", scores)
    return {"scored": len(scores), "passed": sum(scores.values())}
