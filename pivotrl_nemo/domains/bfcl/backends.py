"""BFCL v4 multi-turn backends: tool schemas, fresh instances, a safe executor and state fingerprints.

The backends are BFCL's in-memory Python classes (``GorillaFileSystem``, ``TwitterAPI``, ...).
BFCL's own executor runs call strings through Python's eval; this module never does. A call is a parsed
``ToolCall`` (``data.actions``); its method is looked up only among the names the class's
function doc lists, called with the decoded keyword arguments, and every exception becomes an
error string. A few arguments that would make a backend run unboundedly (``power`` on huge
integers, ``logarithm``/``square_root`` with a huge precision) are refused before the call.

State comparison follows BFCL's own ``__eq__`` convention (public attributes) plus the file
system's current directory, rendered canonically (sorted keys, ``5 == 5.0``, sets sorted, file
system nodes as plain trees, timestamps dropped) and hashed.
"""

from __future__ import annotations

import copy
import decimal
import hashlib
import importlib
import importlib.resources
import inspect
import json
import math
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pivotrl_nemo.data.actions import ToolCall, make_call
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)

_MODEL_CONFIG = "bfcl_eval.constants.model_config"

# The eight multi-turn backend classes and their doc files (as in BFCL's
# ``constants.executable_backend_config``; the memory and web-search classes need extra
# dependencies and are not multi-turn backends).
_BACKEND_PREFIX = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
CLASS_MODULES: dict[str, str] = {
    "GorillaFileSystem": f"{_BACKEND_PREFIX}.gorilla_file_system",
    "MathAPI": f"{_BACKEND_PREFIX}.math_api",
    "MessageAPI": f"{_BACKEND_PREFIX}.message_api",
    "TwitterAPI": f"{_BACKEND_PREFIX}.posting_api",
    "TicketAPI": f"{_BACKEND_PREFIX}.ticket_api",
    "TradingBot": f"{_BACKEND_PREFIX}.trading_bot",
    "TravelAPI": f"{_BACKEND_PREFIX}.travel_booking",
    "VehicleControlAPI": f"{_BACKEND_PREFIX}.vehicle_control",
}
CLASS_DOC_FILES: dict[str, str] = {
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}
STATELESS_CLASSES = frozenset({"MathAPI"})

# Private attributes that are part of the observable state (BFCL's __eq__ skips every
# ``_``-prefixed attribute, but the current directory decides what later calls do).
_STATEFUL_PRIVATE = frozenset({"_current_dir"})
# Attributes of nested objects that are not state (timestamps set from the wall clock).
_VOLATILE_ATTRS = frozenset({"_last_modified"})

_MAX_INT_BITS = 64  # larger integers are refused (no legitimate BFCL argument comes close)
_MAX_PRECISION = 1000  # logarithm / square_root precision cap
_MAX_CANON_DEPTH = 64
_MAX_ARG_DEPTH = 32  # BFCL arguments nest at most 3 levels


def install_model_config_standin() -> None:
    """Register a stand-in for ``bfcl_eval.constants.model_config`` (it imports vendor SDKs)."""
    if _MODEL_CONFIG in sys.modules:
        return
    mod = types.ModuleType(_MODEL_CONFIG)
    mod.__doc__ = "pivotrl_nemo stand-in: BFCL's model registry is not needed for execution."
    mod.MODEL_CONFIG_MAPPING = {}  # type: ignore[attr-defined]
    sys.modules[_MODEL_CONFIG] = mod


install_model_config_standin()


# ---------------------------------------------------------------------------------- data files


def data_dir() -> Path:
    """The ``bfcl_eval/data`` directory of the installed ``bfcl-eval`` package."""
    root = importlib.resources.files("bfcl_eval") / "data"
    path = Path(str(root))
    if not path.is_dir():
        raise FileNotFoundError(f"bfcl_eval data directory not found at {path}; install bfcl-eval")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------- schemas

_TYPE_MAP = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "number": "number",
    "integer": "integer",
    "int": "integer",
    "string": "string",
    "str": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "null": "null",
}


def convert_schema(node: Any) -> Any:
    """BFCL parameter schema -> JSON schema (``dict``->``object``, ``float``->``number``, ...).

    Only schema positions are rewritten: ``type`` of a schema node, then ``properties`` values,
    ``items`` and ``additionalProperties`` recursively. Property names and defaults are kept.
    A type JSON schema does not know (``any``) is dropped, which leaves the value unconstrained.
    """
    if isinstance(node, list):
        return [convert_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            if isinstance(value, list):
                mapped = [_TYPE_MAP[v] for v in value if v in _TYPE_MAP]
                if mapped:
                    out["type"] = mapped
            elif value in _TYPE_MAP:
                out["type"] = _TYPE_MAP[value]
            # anything else ("any", unknown names): no type constraint
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: convert_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, (dict, list)):
            out[key] = convert_schema(value)
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            out[key] = [convert_schema(v) for v in value]
        else:
            out[key] = copy.deepcopy(value)
    return out


@cache
def _raw_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    if class_name not in CLASS_DOC_FILES:
        raise ValueError(f"unsupported BFCL backend class {class_name!r}; known: {sorted(CLASS_DOC_FILES)}")
    return tuple(read_jsonl(data_dir() / "multi_turn_func_doc" / CLASS_DOC_FILES[class_name]))


@cache
def class_method_names(class_name: str) -> frozenset[str]:
    """The method names the class's function doc lists (the only names the executor calls)."""
    return frozenset(d["name"] for d in _raw_docs(class_name))


def tool_schemas(involved_classes: Sequence[str], exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
    """OpenAI chat-format tool list for the classes, in doc order, without ``exclude`` names."""
    excluded = set(exclude)
    tools = []
    for cls in involved_classes:
        for doc in _raw_docs(cls):
            if doc["name"] in excluded:
                continue
            params = convert_schema(doc.get("parameters", {"type": "dict", "properties": {}}))
            params.setdefault("type", "object")
            params.setdefault("properties", {})
            tools.append(
                {
                    "type": "function",
                    "function": {"name": doc["name"], "description": doc.get("description", ""), "parameters": params},
                }
            )
    return tools


# ---------------------------------------------------------------------------------- environment


@cache
def backend_class(class_name: str) -> type:
    if class_name not in CLASS_MODULES:
        raise ValueError(f"unsupported BFCL backend class {class_name!r}; known: {sorted(CLASS_MODULES)}")
    return getattr(importlib.import_module(CLASS_MODULES[class_name]), class_name)


@cache
def parameter_names(class_name: str, method: str) -> tuple[str, ...]:
    """Positional parameter names of a doc-listed method (to name BFCL's positional arguments)."""
    if method not in class_method_names(class_name):
        raise ValueError(f"{method!r} is not a tool of {class_name}")
    fn = inspect.getattr_static(backend_class(class_name), method)
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop self
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@dataclass(frozen=True)
class ExecResult:
    """One executed call: the rendered output and whether the call raised (or was refused)."""

    output: str
    raised: bool = False


@dataclass
class BfclEnv:
    """Live backend instances of one episode plus the method -> class routing table."""

    instances: dict[str, Any]
    method_owner: dict[str, str]
    long_context: bool = False
    history: list[ExecResult] = field(default_factory=list)

    def copy(self) -> BfclEnv:
        """An independent deep copy (one ``deepcopy`` keeps the file tree's parent links intact)."""
        instances = copy.deepcopy(self.instances)
        return BfclEnv(instances, dict(self.method_owner), self.long_context, list(self.history))

    def execute(self, call: ToolCall) -> ExecResult:
        """Run one parsed call. Never raises; failures come back as ``raised=True`` strings."""
        result = _execute(self, call)
        self.history.append(result)
        return result

    def execute_all(self, calls: Iterable[ToolCall]) -> list[ExecResult]:
        return [self.execute(c) for c in calls]

    def snapshot(self) -> dict[str, Any]:
        return state_snapshot(self.instances)

    def fingerprint(self) -> str:
        return state_fingerprint(self.instances)

    def class_fingerprints(self, *, public_only: bool = False) -> dict[str, str]:
        return class_fingerprints(self.instances, public_only=public_only)


def make_env(env_meta: dict[str, Any]) -> BfclEnv:
    """Fresh backends for ``{"initial_config", "involved_classes"[, "long_context"]}``."""
    initial_config = env_meta.get("initial_config") or {}
    long_context = bool(env_meta.get("long_context", False))
    instances: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name in env_meta["involved_classes"]:
        inst = backend_class(name)()
        if name not in STATELESS_CLASSES:
            inst._load_scenario(copy.deepcopy(initial_config.get(name, {})), long_context=long_context)
        instances[name] = inst
        for method in class_method_names(name):
            owner[method] = name  # a later class wins on a clash, as in BFCL's own mapping
    return BfclEnv(instances, owner, long_context)


def replay(env_meta: dict[str, Any], calls: Iterable[ToolCall | dict[str, Any]]) -> BfclEnv:
    """Fresh backends with ``calls`` executed in order (ToolCalls or ``{name, arguments}`` dicts)."""
    env = make_env(env_meta)
    for c in calls:
        env.execute(c if isinstance(c, ToolCall) else make_call(c["name"], c.get("arguments", "{}")))
    return env


def render_output(result: Any) -> str:
    """A backend return value as the tool message text, exactly as BFCL's executor renders it.

    Strings as they are, dicts as JSON (``str`` when a value is not JSON, e.g. ``Decimal``),
    anything else (the one list-returning tool, ``list_all_airports``) with ``str``.
    """
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


def _argument_problem(value: Any, depth: int = 0) -> str | None:
    """Why an argument value must not reach a backend (unbounded nesting or integers), or None."""
    if depth > _MAX_ARG_DEPTH:
        return f"arguments nested deeper than {_MAX_ARG_DEPTH}"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (
            f"integer argument too large (more than {_MAX_INT_BITS} bits)"
            if value.bit_length() > _MAX_INT_BITS
            else None
        )
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for child in children:
        problem = _argument_problem(child, depth + 1)
        if problem is not None:
            return problem
    return None


def _refusal(method: str, args: dict[str, Any]) -> str | None:
    """Why a call must not run (unbounded time or memory), or None."""
    problem = _argument_problem(args)
    if problem is not None:
        return problem
    precision = args.get("precision")
    if method in ("logarithm", "square_root") and isinstance(precision, (int, float)):
        if not math.isfinite(precision) or abs(precision) > _MAX_PRECISION:
            return f"precision above {_MAX_PRECISION}"
    if method == "power":
        base, exp = args.get("base"), args.get("exponent")
        if isinstance(base, int) and isinstance(exp, int) and not isinstance(exp, bool):
            if abs(exp) > 4096 and abs(base) > 1:
                return "integer power too large"
    return None


def _execute(env: BfclEnv, call: ToolCall) -> ExecResult:
    name = call.name
    owner = env.method_owner.get(name) if isinstance(name, str) else None
    if owner is None:
        return ExecResult(f"Error during execution: unknown function {str(name)[:80]!r}", True)
    if call.arguments is None:
        return ExecResult(f"Error during execution: arguments of {name} are not a JSON object", True)
    if not all(isinstance(k, str) and k.isidentifier() for k in call.arguments):
        return ExecResult(f"Error during execution: invalid argument names for {name}", True)
    try:
        args = copy.deepcopy(call.arguments)
    except (RecursionError, MemoryError):
        return ExecResult("Error during execution: arguments too deeply nested", True)
    reason = _refusal(name, args)
    if reason is not None:
        return ExecResult(f"Error during execution: refused: {reason}", True)
    method = getattr(env.instances[owner], name, None)  # name is one the class's doc lists
    if not inspect.ismethod(method):
        return ExecResult(f"Error during execution: {name} is not callable", True)
    mp_dps = _mpmath_dps()
    try:
        with decimal.localcontext():
            result = method(**args)
        return ExecResult(render_output(result), False)
    except Exception as e:  # noqa: BLE001 - any backend failure is an observation, not a crash
        return ExecResult(f"Error during execution: {str(e)[:500]}", True)
    finally:
        _restore_mpmath_dps(mp_dps)


def _mpmath_dps() -> int | None:
    mp = sys.modules.get("mpmath")
    return mp.mp.dps if mp is not None else None


def _restore_mpmath_dps(dps: int | None) -> None:
    # MathAPI.logarithm sets mpmath's global precision; keep it from leaking between calls.
    mp = sys.modules.get("mpmath")
    if mp is not None and dps is not None and mp.mp.dps != dps:
        mp.mp.dps = dps


# ---------------------------------------------------------------------------------- state


def _dir_path(directory: Any) -> str:
    parts = []
    node, guard = directory, 0
    while node is not None and guard < 1000:
        parts.append(str(getattr(node, "name", "?")))
        node = getattr(node, "parent", None)
        guard += 1
    return "/".join(reversed(parts))


def _num(value: float) -> Any:
    if math.isfinite(value) and value == int(value) and abs(value) < 2**63:
        return int(value)  # 5.0 and 5 are the same state (BFCL compares with ==)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def canonical(value: Any, depth: int = 0, _seen: frozenset[int] = frozenset()) -> Any:
    """A JSON-safe, deterministic rendering of backend state (see module doc)."""
    if depth > _MAX_CANON_DEPTH:
        return "<too deep>"
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, decimal.Decimal):
        return _num(float(value))
    if isinstance(value, dict):
        # non-string keys are tagged with their type; json.dumps(sort_keys=True) orders them
        return {
            (k if isinstance(k, str) else f"<{type(k).__name__}>{k}"): canonical(v, depth + 1, _seen)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [canonical(v, depth + 1, _seen) for v in value]
    if isinstance(value, (set, frozenset)):
        members = [canonical(v, depth + 1, _seen) for v in value]
        return {"<set>": sorted(members, key=lambda m: json.dumps(m, sort_keys=True))}
    if hasattr(value, "isoformat") and callable(value.isoformat):  # datetime / date / time
        return {"<time>": value.isoformat()}
    if id(value) in _seen:
        return "<cycle>"
    seen = _seen | {id(value)}
    cls = type(value).__name__
    if cls == "Directory" and hasattr(value, "contents"):
        return {"<dir>": value.name, "contents": canonical(value.contents, depth + 1, seen)}
    if cls == "File" and hasattr(value, "content"):
        return {"<file>": value.name, "content": value.content}
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        public = {k: v for k, v in attrs.items() if not k.startswith("_") and k not in _VOLATILE_ATTRS}
        return {"<obj>": cls, "attrs": canonical(public, depth + 1, seen)}
    return {"<repr>": cls, "value": str(value)[:200]}


def _instance_state(inst: Any, public_only: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key, value in vars(inst).items():
        if key.startswith("_") and (public_only or key not in _STATEFUL_PRIVATE):
            continue
        if key == "_current_dir":
            state[key] = _dir_path(value)
        else:
            state[key] = canonical(value)
    return state


def state_snapshot(instances: dict[str, Any]) -> dict[str, Any]:
    """Canonical state of each instance: public attributes plus the current directory path."""
    return {name: _instance_state(inst) for name, inst in sorted(instances.items())}


def state_fingerprint(instances: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``state_snapshot`` (equal iff the states are equal)."""
    blob = json.dumps(state_snapshot(instances), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def class_fingerprints(instances: dict[str, Any], *, public_only: bool = False) -> dict[str, str]:
    """Per-class SHA-256 of the canonical state (to name which backend differs).

    ``public_only`` drops the file system's current directory too, which leaves exactly the
    attributes BFCL's own multi-turn ``state_checker`` compares (every non-``_`` attribute).
    """
    out = {}
    for name, inst in sorted(instances.items()):
        blob = json.dumps(_instance_state(inst, public_only), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        out[name] = hashlib.sha256(blob.encode("utf-8")).hexdigest()
    return out


def canonical_output(output: str) -> str:
    """Tool output for comparison: JSON outputs re-rendered canonically (so ``5`` equals ``5.0``)."""
    stripped = output.strip()
    if stripped[:1] in ("{", "["):
        try:
            decoded = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            return output
        try:
            return json.dumps(canonical(decoded), sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            return output
    return output
