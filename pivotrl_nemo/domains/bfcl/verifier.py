"""``bfcl_state``: execution-based functional verifier for BFCL multi-turn pivot rows.

The prefix's earlier calls (``PivotRow.prefix_calls``: the ``function_call`` items of
``responses_create_params.input`` and chat-style assistant ``tool_calls``, read by the same
parser as the prompt renderer's) are replayed on fresh backends built from ``metadata.env``; the
expected call(s) run on one copy and the candidate call(s) on another. The candidate passes iff
the backend states (canonical fingerprints, see ``backends``) are equal and the tool outputs are
equal (JSON outputs compared canonically; a batch's outputs as a multiset). Argument order,
JSON vs Python call syntax, ``5`` vs ``5.0`` where the backend stores and returns the same value,
and any other call with the same effect and the same observation all pass; a wrong target fails.

Before executing anything (after the shared steps of ``verifiers.base.VerifierBase``), every
predicted call must name a tool the row lists, or, when the row lists none, a method of the
env's backend classes (else ``unknown_tool``), and every call's arguments must decode as a JSON
object (else ``bad_arguments_json``).

The replayed prefix and the expected side's result are cached per row (bounded LRU), so the K
samples of a row cost one replay plus one deep copy and the candidate's calls each.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pivotrl_nemo.config.schema import VerifierConfig
from pivotrl_nemo.data.actions import Action, ToolCall
from pivotrl_nemo.data.pivot_row import PivotRow, RowLike
from pivotrl_nemo.domains.bfcl import backends
from pivotrl_nemo.utils.logging import get_logger
from pivotrl_nemo.verifiers.base import Category, Verdict, VerifierBase, clip, fail, ok, unknown_tool_verdict

log = get_logger(__name__)


@dataclass(frozen=True)
class _Reference:
    env: backends.BfclEnv  # the replayed prefix; never mutated (copied for each candidate)
    results: tuple[backends.ExecResult, ...]
    class_fps: dict[str, str]
    outputs: tuple[str, ...]  # canonical, in call order
    raw_outputs: tuple[str, ...]


def _outputs(results: list[backends.ExecResult] | tuple[backends.ExecResult, ...]) -> tuple[str, ...]:
    return tuple(backends.canonical_output(r.output) for r in results)


def _clip(s: str, n: int = 100) -> str:
    return clip(s, n)


class BfclStateVerifier(VerifierBase):
    """Functional equivalence on live BFCL backends (same final state and same tool output).

    ``BfclStateVerifier(cfg)``; ``cache_size`` (keyword only) bounds the per-row reference cache."""

    def __init__(self, cfg: VerifierConfig | None = None, *, cache_size: int = 256) -> None:
        super().__init__(cfg)
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[Any, _Reference] = OrderedDict()
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------- cache

    def _key(self, row: PivotRow, prefix: list[ToolCall], expected: Action) -> Any:
        env_key = row.id
        if env_key is None:
            env_key = json.dumps(row.env, sort_keys=True, default=str)
        return (
            env_key,
            tuple((c.name, c.raw_arguments) for c in prefix),
            tuple((c.name, c.raw_arguments) for c in expected.calls),
        )

    def reference(self, row: RowLike, expected: Action) -> _Reference:
        """The replayed prefix and the expected call(s)' outcome for a row (cached)."""
        row = PivotRow.of(row)
        prefix = row.prefix_calls()
        key = self._key(row, prefix, expected)
        with self._lock:
            ref = self._cache.get(key)
            if ref is not None:
                self._cache.move_to_end(key)
                return ref
        env_meta = row.env
        if not isinstance(env_meta, dict) or "involved_classes" not in env_meta:
            raise ValueError(f"row {row.id!r} has no metadata.env with involved_classes")
        env = backends.replay(env_meta, prefix)
        env.history.clear()
        exp_env = env.copy()
        results = tuple(exp_env.execute_all(expected.calls))
        if any(r.raised for r in results):
            log.debug("row %s: the expected call raised: %s", row.id, results)
        ref = _Reference(
            env, results, exp_env.class_fingerprints(), _outputs(results), tuple(r.output for r in results)
        )
        with self._lock:
            self._cache[key] = ref
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ref

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -------------------------------------------------------------------------------- verify

    def unknown_tool(self, row: PivotRow, expected: Action, action: Action) -> Verdict | None:
        """Every call against the row's tools, or the env's methods when the row lists none."""
        ref = self.reference(row, expected)  # first, as always: a row without an env is an error
        tools = row.tool_names or set(ref.env.method_owner)
        return unknown_tool_verdict(action.calls, tools)

    def compare_calls(self, row: PivotRow, expected: Action, action: Action) -> Verdict:
        if any(c.arguments is None for c in action.calls):
            return fail(Category.BAD_ARGUMENTS_JSON, "arguments do not decode as a JSON object")
        ref = self.reference(row, expected)
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
