"""Verifier contract: ``verify(row, completion) -> Verdict``.

A verifier is pure, deterministic, bounded in time and never touches the network. The
completion is untrusted model text: verifiers parse it with ``data.actions`` (JSON, or
Python call syntax through ``ast`` with literals only) and never ``eval`` it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


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
    """A functional verifier. ``name`` is what configs select (``verifier.name``)."""

    name: str

    def verify(self, row: dict[str, Any], completion: str) -> Verdict:
        """Score one completion (raw model text) against the row's expected action."""
        ...
