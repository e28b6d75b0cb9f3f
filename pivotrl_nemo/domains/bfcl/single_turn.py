"""BFCL v4 single-turn (AST) items: pivot rows with every acceptable argument, and BFCL's own judge.

The eight single-turn categories that BFCL scores with its AST checker hold one user turn, a list
of function docs and, in ``possible_answer/``, the acceptable calls: per call
``{func_name: {param: [acceptable values...]}}``, where ``""`` in a list means the parameter may be
omitted. A value for a ``dict`` parameter (or each element of a list-of-``dict`` parameter) is itself
written in that form, one level deep: ``{key: [acceptable values...]}``.

``item_row`` turns an item into a pivot row (``docs/contracts.md``) whose ``expected_action`` holds a
canonical call (per parameter the first acceptable value that is not ``""``) and, in
``acceptable_arguments``, the possible-answer dict as is. ``ast_judge`` runs BFCL's
``ast_checker`` in-process on already decoded calls; nothing is ever evaluated. ``load_items``
skips items whose canonical call BFCL's checker itself rejects (and says how many).
"""

from __future__ import annotations

import copy
import json
import types
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pivotrl_nemo.domains.bfcl import backends
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)

SINGLE_TURN_CATEGORIES: tuple[str, ...] = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)

DOMAIN = "bfcl_single"

JUDGE_MODEL_NAME = "pivotrl_nemo_agreement_judge"
"""The ``model_name`` passed to BFCL's checker. It is registered in the (stand-in) model config with
``underscore_to_dot=False``, so dotted function names (``math.factorial``) are compared as written."""

JUDGE_ERRORS: Counter[str] = Counter()
"""Exceptions raised inside BFCL's checker, by type name (expected to stay empty)."""


@dataclass(frozen=True)
class SingleTurnItem:
    """One BFCL single-turn entry with its possible answer.

    ``messages`` are the turn's ``{role, content}`` messages, ``functions`` the raw BFCL function
    docs (BFCL's parameter types: ``dict``, ``float``, ``tuple``, ``any``, ...) and ``ground_truth``
    the list of acceptable calls, one ``{func_name: {param: [values...]}}`` per expected call.
    """

    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]]


# ---------------------------------------------------------------------------------- loading


def load_items(categories: Sequence[str] = SINGLE_TURN_CATEGORIES) -> list[SingleTurnItem]:
    """The items of ``categories`` (file order) that have a possible answer BFCL accepts.

    Skipped (counted and logged): items without a possible answer, items that are not single-turn,
    and items whose canonical call (``canonical_calls``) BFCL's own checker judges invalid.
    """
    items, _ = load_items_with_skips(categories)
    return items


def load_items_with_skips(
    categories: Sequence[str] = SINGLE_TURN_CATEGORIES,
) -> tuple[list[SingleTurnItem], dict[str, list[str]]]:
    """``load_items`` plus the skipped item ids by reason (``no_answer``, ``not_single_turn``,
    ``canonical_invalid:<error_type>``)."""
    unknown = [c for c in categories if c not in SINGLE_TURN_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown BFCL single-turn categories {unknown}; choices: {list(SINGLE_TURN_CATEGORIES)}")
    root = backends.data_dir()
    items: list[SingleTurnItem] = []
    skipped: dict[str, list[str]] = {}
    for category in categories:
        entries = backends.read_jsonl(root / f"BFCL_v4_{category}.json")
        answers = {
            a["id"]: a["ground_truth"]
            for a in backends.read_jsonl(root / "possible_answer" / f"BFCL_v4_{category}.json")
        }
        for entry in entries:
            reason = None
            if entry["id"] not in answers:
                reason = "no_answer"
            elif len(entry["question"]) != 1:
                reason = "not_single_turn"
            else:
                item = SingleTurnItem(
                    id=entry["id"],
                    category=category,
                    messages=[{"role": m["role"], "content": m["content"]} for m in entry["question"][0]],
                    functions=entry["function"],
                    ground_truth=answers[entry["id"]],
                )
                valid, error = ast_judge(item, canonical_calls(item))
                if valid:
                    items.append(item)
                    continue
                reason = f"canonical_invalid:{error}"
            skipped.setdefault(reason, []).append(entry["id"])
    if skipped:
        log.warning(
            "BFCL single-turn: skipped %d items (%s)",
            sum(len(v) for v in skipped.values()),
            ", ".join(f"{r}: {len(ids)} e.g. {ids[0]}" for r, ids in sorted(skipped.items())),
        )
    log.info("BFCL single-turn: %d items from %d categories", len(items), len(categories))
    return items, skipped


# ---------------------------------------------------------------------------------- canonical calls


def _first_value(values: list[Any]) -> tuple[bool, Any]:
    """(True, first acceptable value that is not ``""``), or (False, None) when there is none."""
    for v in values:
        if not (isinstance(v, str) and v == ""):
            return True, v
    return False, None


def _is_answer_dict(value: Any) -> bool:
    """A ``{key: [acceptable values...]}`` dict (BFCL's form for a ``dict`` parameter's value)."""
    return isinstance(value, dict) and all(isinstance(v, list) for v in value.values())


def _canonical_answer_dict(answer: dict[str, list[Any]]) -> dict[str, Any]:
    out = {}
    for key, values in answer.items():
        present, value = _first_value(values)
        if present:
            out[key] = copy.deepcopy(value)
    return out


def _param_type(doc: dict[str, Any] | None, param: str) -> tuple[str | None, str | None]:
    """(BFCL type of ``param``, BFCL type of its items) from the function doc, None when unknown."""
    if doc is None:
        return None, None
    spec = doc.get("parameters", {}).get("properties", {}).get(param, {})
    items = spec.get("items") if isinstance(spec.get("items"), dict) else {}
    return spec.get("type"), items.get("type")


def canonical_value(value: Any, bfcl_type: str | None, item_type: str | None) -> Any:
    """The literal a model would write for one acceptable value of a parameter of ``bfcl_type``.

    A ``dict`` parameter's acceptable value is an answer dict (``{key: [values...]}``): its canonical
    form takes each key's first non-``""`` value (keys with only ``""`` left out). So does each
    element of a list-of-``dict`` parameter's value. Everything else is a literal, copied.
    """
    if bfcl_type == "dict" and _is_answer_dict(value):
        return _canonical_answer_dict(value)
    if bfcl_type in ("array", "tuple") and item_type == "dict" and isinstance(value, list):
        if all(_is_answer_dict(v) for v in value):
            return [_canonical_answer_dict(v) for v in value]
    return copy.deepcopy(value)


def canonical_arguments(answer: dict[str, list[Any]], doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call's canonical arguments: per parameter the first acceptable value that is not ``""``
    (even when ``""`` is listed first), in canonical form; parameters with only ``""`` are omitted."""
    out = {}
    for param, values in answer.items():
        present, value = _first_value(values)
        if present:
            out[param] = canonical_value(value, *_param_type(doc, param))
    return out


MAX_EXPANSIONS = 64
"""Most literal alternatives one ``dict`` (or list-of-``dict``) acceptable value expands to."""


def _expand_answer_dict(answer: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every literal dict a ``{key: [values...]}`` answer accepts (``""``: key left out), capped."""
    out: list[dict[str, Any]] = [{}]
    for key, values in answer.items():
        nxt = []
        for partial in out:
            for v in values:
                nxt.append(dict(partial) if isinstance(v, str) and v == "" else {**partial, key: copy.deepcopy(v)})
        out = nxt[:MAX_EXPANSIONS]
    return out


def acceptable_values(values: list[Any], bfcl_type: str | None, item_type: str | None) -> list[Any]:
    """A parameter's possible answers as literal values (docs/contracts.md ``acceptable_arguments``):
    ``dict`` answers (``{key: [values...]}``) and lists of them are expanded into the literal values
    they accept, at most ``MAX_EXPANSIONS`` per answer; ``""`` (omission allowed) and literals stay."""
    out: list[Any] = []
    for v in values:
        if bfcl_type == "dict" and _is_answer_dict(v):
            out += _expand_answer_dict(v)
        elif (
            bfcl_type in ("array", "tuple")
            and item_type == "dict"
            and isinstance(v, list)
            and all(map(_is_answer_dict, v))
        ):
            combos: list[list[Any]] = [[]]
            for element in v:
                combos = [c + [d] for c in combos for d in _expand_answer_dict(element)][:MAX_EXPANSIONS]
            out += combos
        else:
            out.append(copy.deepcopy(v))
    return out


def _doc(item: SingleTurnItem, name: str) -> dict[str, Any] | None:
    return next((d for d in item.functions if d.get("name") == name), None)


def canonical_calls(item: SingleTurnItem) -> list[tuple[str, dict[str, Any]]]:
    """The item's expected calls, as ``(name, arguments)``, with canonical arguments."""
    calls = []
    for call in item.ground_truth:
        ((name, answer),) = call.items()
        calls.append((name, canonical_arguments(answer, _doc(item, name))))
    return calls


# ---------------------------------------------------------------------------------- pivot rows


def tool_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc as a Responses-format tool (JSON-schema parameters)."""
    params = backends.convert_schema(doc.get("parameters", {"type": "dict", "properties": {}}))
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    return {"type": "function", "name": doc["name"], "description": doc.get("description", ""), "parameters": params}


def item_row(item: SingleTurnItem) -> dict[str, Any]:
    """The item as a pivot row; ``expected_action`` carries ``acceptable_arguments`` per call."""
    calls = []
    for call, (name, args) in zip(item.ground_truth, canonical_calls(item)):
        ((_, answer),) = call.items()
        doc = _doc(item, name)
        acceptable = {param: acceptable_values(values, *_param_type(doc, param)) for param, values in answer.items()}
        calls.append(
            {"name": name, "arguments": json.dumps(args, ensure_ascii=False), "acceptable_arguments": acceptable}
        )
    if len(calls) == 1:
        expected: dict[str, Any] = {"type": "function_call", **calls[0]}
    else:
        expected = {"type": "function_call_batch", "calls": calls}
    row_id = f"{DOMAIN}/{item.id}"
    return {
        "id": row_id,
        "responses_create_params": {
            "input": [{"role": m["role"], "content": m["content"]} for m in item.messages],
            "tools": [tool_schema(d) for d in item.functions],
            "tool_choice": "auto",
        },
        "expected_action": expected,
        "metadata": {"trajectory_id": row_id, "turn_index": 0, "domain": DOMAIN, "category": item.category},
    }


# ---------------------------------------------------------------------------------- BFCL's judge


@cache
def _checker() -> Any:
    """BFCL's ``ast_checker`` module, with ``JUDGE_MODEL_NAME`` registered (``underscore_to_dot=False``)."""
    backends.install_model_config_standin()  # before bfcl_eval's model config (vendor SDKs) is imported
    from bfcl_eval.eval_checker.ast_eval import ast_checker as module

    mapping = module.MODEL_CONFIG_MAPPING  # the dict convert_func_name reads
    mapping.setdefault(JUDGE_MODEL_NAME.replace("_", "/"), types.SimpleNamespace(underscore_to_dot=False))
    return module


def ast_judge(item: SingleTurnItem, calls: Sequence[tuple[str, Any]]) -> tuple[bool, str]:
    """BFCL's AST verdict on decoded ``calls`` (``(name, arguments)``): ``(valid, error_type)``.

    ``error_type`` is BFCL's (``""`` when valid). Arguments that are not a dict fail as BFCL's format
    check does (``ast_decoder:decoder_wrong_output_format``). An exception inside the checker gives
    ``(False, "judge_error:<type>")`` and is counted in ``JUDGE_ERRORS``.
    """
    if any(not isinstance(name, str) or not isinstance(args, dict) for name, args in calls):
        return False, "ast_decoder:decoder_wrong_output_format"
    module = _checker()
    from bfcl_eval.constants.enums import Language

    model_output = [{name: args} for name, args in calls]
    try:
        result = module.ast_checker(
            func_description=item.functions,
            model_output=model_output,
            possible_answer=item.ground_truth,
            language=Language.PYTHON,
            test_category=item.category,
            model_name=JUDGE_MODEL_NAME,
        )
    except Exception as e:  # BFCL's checker on adversarial input: a verdict, never a crash
        JUDGE_ERRORS[type(e).__name__] += 1
        log.warning("BFCL ast_checker raised %s on %s: %s", type(e).__name__, item.id, e)
        return False, f"judge_error:{type(e).__name__}"
    valid = bool(result.get("valid"))
    return valid, "" if valid else str(result.get("error_type", "unknown"))
