"""``bfcl_state``: execution-based functional verifier for BFCL multi-turn pivot rows.

The prefix's earlier calls (the ``function_call`` items of ``responses_create_params.input``) are
replayed on fresh backends built from ``metadata.env``; the expected call(s) run on one copy and
the candidate call(s) on another. The candidate passes iff the backend states (canonical
fingerprints, see ``backends``) are equal and the tool outputs are equal (JSON outputs compared
canonically; a batch's outputs as a multiset). Argument order, JSON vs Python call syntax, ``5``
vs ``5.0`` where the backend stores and returns the same value, and any other call with the same
effect and the same observation all pass; a wrong target fails.

The replayed prefix and the expected side's result are cached per row (bounded LRU), so the K
samples of a row cost one replay plus one deep copy and the candidate's calls each.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pivotrl_nemo.domains.bfcl import backends
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.data.actions import Action, ToolCall, make_call, parse_completion
from pivotrl_nemo.verifiers.base import Category, Verdict, fail, ok
from pivotrl_nemo.verifiers.tool_call_args import decide_kind, expected_action, row_tool_names

log = get_logger(__name__)


@dataclass(frozen=True)
class _Reference:
    env: backends.BfclEnv  # the replayed prefix; never mutated (copied for each candidate)
    results: tuple[backends.ExecResult, ...]
    class_fps: dict[str, str]
    outputs: tuple[str, ...]  # canonical, in call order
    raw_outputs: tuple[str, ...]


def prefix_calls(row: dict[str, Any]) -> list[ToolCall]:
    """The earlier calls of a pivot row's prefix, in order (Responses items or chat messages)."""
    calls: list[ToolCall] = []
    for item in (row.get("responses_create_params") or {}).get("input") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            calls.append(make_call(str(item.get("name", "")), item.get("arguments", "{}")))
        elif item.get("role") == "assistant" and item.get("tool_calls"):
            for tc in item["tool_calls"]:
                fn = tc.get("function", tc)
                calls.append(make_call(str(fn.get("name", "")), fn.get("arguments", "{}")))
    return calls


def _outputs(results: list[backends.ExecResult] | tuple[backends.ExecResult, ...]) -> tuple[str, ...]:
    return tuple(backends.canonical_output(r.output) for r in results)


def _clip(s: str, n: int = 100) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


class BfclStateVerifier:
    """Functional equivalence on live BFCL backends (same final state and same tool output)."""

    name = "bfcl_state"

    def __init__(self, cache_size: int = 256):
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[Any, _Reference] = OrderedDict()
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------- cache

    def _key(self, row: dict[str, Any], prefix: list[ToolCall], expected: Action) -> Any:
        env_key = row.get("id")
        if env_key is None:
            env_key = json.dumps((row.get("metadata") or {}).get("env"), sort_keys=True, default=str)
        return (
            env_key,
            tuple((c.name, c.raw_arguments) for c in prefix),
            tuple((c.name, c.raw_arguments) for c in expected.calls),
        )

    def reference(self, row: dict[str, Any], expected: Action) -> _Reference:
        """The replayed prefix and the expected call(s)' outcome for a row (cached)."""
        prefix = prefix_calls(row)
        key = self._key(row, prefix, expected)
        with self._lock:
            ref = self._cache.get(key)
            if ref is not None:
                self._cache.move_to_end(key)
                return ref
        env_meta = (row.get("metadata") or {}).get("env")
        if not isinstance(env_meta, dict) or "involved_classes" not in env_meta:
            raise ValueError(f"row {row.get('id')!r} has no metadata.env with involved_classes")
        env = backends.replay(env_meta, prefix)
        env.history.clear()
        exp_env = env.copy()
        results = tuple(exp_env.execute_all(expected.calls))
        if any(r.raised for r in results):
            log.debug("row %s: the expected call raised: %s", row.get("id"), results)
        ref = _Reference(env, results, exp_env.class_fingerprints(), _outputs(results), tuple(r.output for r in results))
        with self._lock:
            self._cache[key] = ref
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ref

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -------------------------------------------------------------------------------- verify

    def verify(self, row: dict[str, Any], completion: str) -> Verdict:
        expected = expected_action(row)
        action = parse_completion(completion)
        decided = decide_kind(expected, action)
        if decided is not None:
            return decided
        tools = row_tool_names(row)
        ref = self.reference(row, expected)
        if not tools:
            tools = set(ref.env.method_owner)
        unknown = [c.name for c in action.calls if c.name not in tools]
        if unknown:
            return fail(Category.UNKNOWN_TOOL, f"{_clip(unknown[0], 80)!r} is not among the row's tools")
        if any(c.arguments is None for c in action.calls):
            return fail(Category.BAD_ARGUMENTS_JSON, "arguments do not decode as a JSON object")
        try:
            env = ref.env.copy()
            results = env.execute_all(action.calls)
            fps = env.class_fingerprints()
            outputs = _outputs(results)
        except Exception as e:  # noqa: BLE001 - the executor never raises; this is a last guard
            return fail(Category.EXECUTION_ERROR, f"{type(e).__name__}: {_clip(str(e))}")
        return self._compare(ref, results, fps, outputs)

    @staticmethod
    def _compare(
        ref: _Reference, results: list[backends.ExecResult], fps: dict[str, str], outputs: tuple[str, ...]
    ) -> Verdict:
        exp_raised = any(r.raised for r in ref.results)
        raised = [r for r in results if r.raised]
        if raised and not exp_raised:
            return fail(Category.EXECUTION_ERROR, _clip(raised[0].output))
        if fps != ref.class_fps:
            differ = sorted(k for k in ref.class_fps if fps.get(k) != ref.class_fps[k])
            return fail(Category.STATE_MISMATCH, f"backend state differs in {', '.join(differ)}")
        if len(outputs) != len(ref.outputs):
            return fail(Category.WRONG_CALL_COUNT, f"{len(outputs)} calls where {len(ref.outputs)} expected")
        if sorted(outputs) != sorted(ref.outputs):
            extra = [r.output for r, o in zip(results, outputs) if o not in ref.outputs]
            missing = [r for r, o in zip(ref.raw_outputs, ref.outputs) if o not in outputs]
            got, want = (extra or ["?"])[0], (missing or ["?"])[0]
            return fail(Category.OUTPUT_MISMATCH, f"output {_clip(got)} != expected {_clip(want)}")
        return ok("same state and output")
