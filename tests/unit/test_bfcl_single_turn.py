"""BFCL single-turn items, BFCL's AST judge in-process, and the agreement benchmark's candidates."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from bfcl_rows import pivot_rows, trajectory
from by_path import load_module

from pivotrl_nemo.data.actions import action_from_expected, parse_completion
from pivotrl_nemo.domains.bfcl import single_turn as st

REPO = Path(__file__).resolve().parents[2]
CANDIDATES_PATH = REPO / "bench" / "agreement_candidates.py"


ac = load_module("bench/agreement_candidates.py", "agreement_candidates")


@cache
def _items() -> tuple[st.SingleTurnItem, ...]:
    return tuple(st.load_items())


@cache
def _by_id() -> dict[str, st.SingleTurnItem]:
    return {i.id: i for i in _items()}


@cache
def _pool() -> tuple[str, ...]:
    return tuple(s for i in _items() for s in ac.row_strings(st.item_row(i)))


def _sample_items(step: int = 6) -> list[st.SingleTurnItem]:
    return list(_items()[::step])


@cache
def _multi_turn_rows() -> tuple[dict[str, Any], ...]:
    return tuple(r for i in (0, 3, 7) for r in pivot_rows(trajectory(f"multi_turn_base_{i}")))


def _calls_json(calls: Any) -> str:
    """Type- and order-strict rendering of ``[(name, args), ...]`` (``5 != 5.0``, key order kept)."""
    return json.dumps([[n, a] for n, a in calls], ensure_ascii=False)


# ---------------------------------------------------------------------------------- items and rows


def test_load_items_counts_and_skips():
    items, skipped = st.load_items_with_skips()
    assert len(items) > 1000
    counts = Counter(i.category for i in items)
    assert set(counts) == set(st.SINGLE_TURN_CATEGORIES)
    assert counts["simple_python"] == 400 and counts["live_multiple"] > 1000
    assert len({i.id for i in items}) == len(items)
    assert all(len(i.messages) >= 1 and i.messages[-1]["role"] == "user" for i in items)
    # Only items no answer can pass (BFCL data errors) are skipped: a handful.
    assert sum(len(v) for v in skipped.values()) <= 10
    assert all(r.startswith("canonical_invalid:") for r in skipped)
    assert "live_simple_112-68-0" in {i for ids in skipped.values() for i in ids}  # required params with []


def test_item_row_shape_of_a_simple_item():
    item = _by_id()["simple_python_0"]
    row = st.item_row(item)
    assert row["id"] == "bfcl_single/simple_python_0"
    params = row["responses_create_params"]
    assert params["input"] == [{"role": "user", "content": item.messages[0]["content"]}]
    assert params["tool_choice"] == "auto"
    (tool,) = params["tools"]
    assert tool["type"] == "function" and tool["name"] == "calculate_triangle_area"
    assert tool["parameters"]["type"] == "object"
    assert tool["parameters"]["properties"]["base"]["type"] == "integer"
    assert tool["parameters"]["required"] == ["base", "height"]
    expected = row["expected_action"]
    assert expected["type"] == "function_call" and expected["name"] == "calculate_triangle_area"
    assert json.loads(expected["arguments"]) == {"base": 10, "height": 5, "unit": "units"}
    assert expected["acceptable_arguments"] == item.ground_truth[0]["calculate_triangle_area"]
    assert expected["acceptable_arguments"] == {"base": [10], "height": [5], "unit": ["units", ""]}
    assert row["metadata"] == {
        "trajectory_id": "bfcl_single/simple_python_0",
        "turn_index": 0,
        "domain": "bfcl_single",
        "category": "simple_python",
    }


def test_item_row_batches_and_canonical_choices():
    row = st.item_row(_by_id()["parallel_0"])
    expected = row["expected_action"]
    assert expected["type"] == "function_call_batch" and len(expected["calls"]) >= 2
    assert all(set(c) == {"name", "arguments", "acceptable_arguments"} for c in expected["calls"])
    # "" listed first: still the first non-empty value; only "": omitted.
    assert st.canonical_arguments({"a": ["", 25.0], "b": [""], "c": [None, ""]}) == {"a": 25.0, "c": None}
    # dict parameters: BFCL's {key: [values]} form, one level deep.
    doc = {"parameters": {"properties": {"d": {"type": "dict"}, "l": {"type": "array", "items": {"type": "dict"}}}}}
    answer = {"d": [{"x": [1, 2], "y": [""]}], "l": [[{"p": ["q"]}]]}
    assert st.canonical_arguments(answer, doc) == {"d": {"x": 1}, "l": [{"p": "q"}]}


def test_canonical_call_of_every_item_is_valid():
    for item in _items():
        calls = [(c.name, c.arguments) for c in action_from_expected(st.item_row(item)["expected_action"]).calls]
        assert st.ast_judge(item, calls) == (True, ""), item.id
    assert not st.JUDGE_ERRORS


def test_ast_judge_follows_bfcl():
    item = _by_id()["simple_python_0"]
    ok = {"base": 10, "height": 5, "unit": "units"}
    assert st.ast_judge(item, [("calculate_triangle_area", ok)]) == (True, "")
    assert st.ast_judge(item, [("calculate_triangle_area", {**ok, "unit": "UNITS"})])[0]  # strings standardised
    assert st.ast_judge(item, [("calculate_triangle_area", {"base": 10, "height": 5})])[0]  # "" allows omission
    assert st.ast_judge(item, [("calculate_area", ok)]) == (False, "simple_function_checker:wrong_func_name")
    assert st.ast_judge(item, [("calculate_triangle_area", {**ok, "base": 11})]) == (False, "value_error:others")
    assert st.ast_judge(item, [("calculate_triangle_area", {**ok, "base": 10.0})]) == (False, "type_error:simple")
    assert st.ast_judge(item, [("calculate_triangle_area", {**ok, "base": "10"})]) == (False, "type_error:simple")
    assert not st.ast_judge(item, [("calculate_triangle_area", ok)] * 2)[0]
    assert st.ast_judge(item, [("calculate_triangle_area", None)]) == (False, "ast_decoder:decoder_wrong_output_format")
    # float parameter: an int is converted (BFCL's Python rule).
    deriv = _by_id()["simple_python_14"]
    assert st.ast_judge(deriv, [("calculate_derivative", {"function": "3x**2 + 2x - 1", "x_value": 0})])[0]
    # dotted names are compared as written (underscore_to_dot=False for the judge's model name).
    fact = _by_id()["simple_python_1"]
    assert st.ast_judge(fact, [("math.factorial", {"number": 5})]) == (True, "")
    assert not st.ast_judge(fact, [("math_factorial", {"number": 5})])[0]
    assert not st.JUDGE_ERRORS


# ---------------------------------------------------------------------------------- candidates


def test_candidates_are_deterministic():
    pool = _pool()
    rows = [st.item_row(i) for i in _sample_items(20)] + list(_multi_turn_rows())
    first = [ac.candidates(r, random.Random(0), other_strings=pool) for r in rows]
    again = [ac.candidates(r, random.Random(0), other_strings=pool) for r in rows]
    assert first == again
    other_seed = [ac.candidates(r, random.Random(1), other_strings=pool) for r in rows]
    assert first != other_seed
    # A kind's candidate does not depend on which other kinds are asked for.
    for item_id in ("simple_python_0", "parallel_multiple_0"):
        row = st.item_row(_by_id()[item_id])
        full = ac.candidates(row, random.Random(3), other_strings=pool)
        assert len(full) > 10
        for c in full:
            assert ac.candidates(row, random.Random(3), kinds=[c.kind], other_strings=pool) == [c]


def _digest(n_rows: int) -> str:
    pool = _pool()
    h = hashlib.sha256()
    for item in _items()[:n_rows]:
        for c in ac.candidates(st.item_row(item), random.Random(0), other_strings=pool):
            h.update(f"{c.kind}\0{c.completion}\0".encode())
    return h.hexdigest()


def test_candidates_do_not_depend_on_hash_seed():
    code = (
        "import importlib.util, sys; sys.path.insert(0, 'tests/unit');"
        "import test_bfcl_single_turn as t; print(t._digest(150))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        for seed in ("1", "2")
    }
    assert digests == {_digest(150)}


def _assert_parses_to_calls(candidate: Any) -> None:
    action = parse_completion(candidate.completion)
    parsed = [(c.name, c.arguments) for c in action.calls]
    if candidate.kind == "huge_argument" and len(candidate.completion) > 20_000:
        assert action.kind == "unparseable" and "longer than 20000" in action.error
        return
    assert action.is_call, (candidate.kind, candidate.completion[:200])
    if candidate.kind == "python_syntax" and _calls_json(parsed) != _calls_json(candidate.calls):
        # Known parser behaviour: ``math.factorial(...)`` parses to ``factorial`` (the attribute only).
        assert [a for _, a in parsed] == [a for _, a in candidate.calls]
        assert all(
            p == n or (("." in n) and p == n.rsplit(".", 1)[1]) for (p, _), (n, _) in zip(parsed, candidate.calls)
        )
        return
    assert _calls_json(parsed) == _calls_json(candidate.calls), candidate.kind


def test_candidates_parse_back_and_exact_is_present():
    pool = _pool()
    kinds: Counter[str] = Counter()
    rows = [(i, st.item_row(i)) for i in _sample_items()] + [(None, r) for r in _multi_turn_rows()]
    for item, row in rows:
        cands = ac.candidates(row, random.Random(0), other_strings=pool)
        assert cands[0].kind == "exact"
        assert len({c.kind for c in cands}) == len(cands)
        exact_calls = [(c.name, c.arguments) for c in action_from_expected(row["expected_action"]).calls]
        assert _calls_json(cands[0].calls) == _calls_json(exact_calls)
        for c in cands:
            kinds[c.kind] += 1
            assert c.kind in ac.ALL_KINDS
            if c.kind not in ("exact", "python_syntax", "reorder_args"):
                assert _calls_json(c.calls) != _calls_json(exact_calls), c.kind
            _assert_parses_to_calls(c)
        if item is not None:
            assert st.ast_judge(item, cands[0].calls) == (True, "")
    assert set(kinds) == set(ac.ALL_KINDS)  # every kind applies somewhere
    assert not st.JUDGE_ERRORS


def test_candidates_on_chat_form_tools_and_groups():
    row = _multi_turn_rows()[3]
    chat = json.loads(json.dumps(row))
    chat["responses_create_params"]["tools"] = [
        {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
        for t in row["responses_create_params"]["tools"]
    ]
    assert ac.candidates(row, random.Random(5)) == ac.candidates(chat, random.Random(5))
    groups = ac.KIND_GROUPS
    assert set(groups) == {"equivalent_looking", "near_miss"}
    assert sorted(groups["equivalent_looking"] + groups["near_miss"]) == sorted(ac.ALL_KINDS)
    with pytest.raises(ValueError):
        ac.candidates(row, random.Random(0), kinds=["no_such_kind"])
    with pytest.raises(ValueError):
        ac.candidates({**row, "expected_action": {"type": "message", "content": "hi"}}, random.Random(0))


def test_some_candidate_labels_follow_bfcl():
    """Spot checks of what BFCL's judge says about a few edits (labels come from the judge)."""
    item = _by_id()["simple_python_0"]
    by_kind = {c.kind: c for c in ac.candidates(st.item_row(item), random.Random(0), other_strings=_pool())}
    for kind in ("exact", "reorder_args", "python_syntax", "string_case"):
        assert st.ast_judge(item, by_kind[kind].calls)[0], kind
    for kind in ("wrong_function", "drop_required", "extra_arg", "float_for_int", "duplicate_call", "deep_nesting"):
        assert not st.ast_judge(item, by_kind[kind].calls)[0], kind
    assert not st.JUDGE_ERRORS


def test_dict_answers_expand_to_literal_acceptable_values():
    # BFCL's {key: [values]} answers become the literal dicts they accept ("": key left out).
    assert st.acceptable_values([{"x": [1, 2], "y": ["", "z"]}], "dict", None) == [
        {"x": 1},
        {"x": 1, "y": "z"},
        {"x": 2},
        {"x": 2, "y": "z"},
    ]
    assert st.acceptable_values([[{"p": ["q", "r"]}], ""], "array", "dict") == [[{"p": "q"}], [{"p": "r"}], ""]
    assert st.acceptable_values(["a", 1, ""], "string", None) == ["a", 1, ""]
    big = {f"k{i}": [0, 1] for i in range(10)}  # 1024 combinations, capped
    assert len(st.acceptable_values([big], "dict", None)) == st.MAX_EXPANSIONS
