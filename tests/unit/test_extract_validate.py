"""Candidate extraction (no target leaks into the prefix), pivot validation, trajectory errors."""

import json

import pytest

from pivotrl_nemo.data.extract import extract_candidates, split_ids
from pivotrl_nemo.data.pivots import validate_file, validate_pivot_row
from pivotrl_nemo.data.row_store import load_pivot_rows
from pivotrl_nemo.data.trajectory import load_trajectories
from pivotrl_nemo.utils.io import DataError, atomic_write_jsonl

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "mv",
            "description": "Move a file.",
            "parameters": {
                "type": "object",
                "properties": {"source": {"type": "string"}, "destination": {"type": "string"}},
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "ls", "description": "List.", "parameters": {"type": "object", "properties": {}}},
    },
]


def _traj(tid="t1"):
    return {
        "id": tid,
        "domain": "generic",
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "You are a file agent."},
            {"role": "user", "content": "Move a.txt to b, then list."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c0",
                        "type": "function",
                        "function": {"name": "mv", "arguments": '{"source": "a.txt", "destination": "b"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c0", "content": "moved"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "b"},
            {"role": "tool", "tool_call_id": "c2", "content": "b"},
            {"role": "assistant", "content": "Done: a.txt is in b."},
        ],
    }


def test_one_candidate_per_assistant_turn_and_no_leak():
    rows = extract_candidates(_traj(), "rl", "tool_call_args")
    assert [r["expected_action"]["type"] for r in rows] == ["function_call", "function_call_batch", "message"]
    for r in rows:
        assert validate_pivot_row(r) == []
        inp = r["responses_create_params"]["input"]
        exp = r["expected_action"]
        # the target never appears at the end of (or anywhere after the last output in) the prefix
        assert inp[-1].get("type") != "function_call"
        if exp["type"] == "function_call":
            assert not any(
                i.get("type") == "function_call" and i["arguments"] == exp["arguments"] and i["name"] == exp["name"]
                for i in inp
            )
        if exp["type"] == "message":
            assert all(i.get("content") != exp["content"] for i in inp)
    # the prefix of turn k is exactly the conversation before turn k
    assert len(rows[0]["responses_create_params"]["input"]) == 2
    assert len(rows[1]["responses_create_params"]["input"]) == 4
    assert rows[1]["metadata"]["turn_index"] == 1 and rows[1]["metadata"]["trajectory_id"] == "t1"
    assert json.loads(rows[0]["expected_action"]["arguments"]) == {"source": "a.txt", "destination": "b"}
    assert rows[0]["responses_create_params"]["tools"][0]["name"] == "mv"


def test_split_by_trajectory_is_disjoint_and_deterministic():
    ids = [f"t{i}" for i in range(100)]
    a = split_ids(ids, {"sft": 0.5, "rl": 0.3, "test": 0.2}, seed=3)
    assert a == split_ids(list(reversed(ids)), {"sft": 0.5, "rl": 0.3, "test": 0.2}, seed=3)
    assert sorted(a) == sorted(ids)
    assert sum(v == "test" for v in a.values()) == 20


def test_validate_reports_file_line_field(tmp_path):
    rows = extract_candidates(_traj(), "rl", "tool_call_args")
    bad1 = json.loads(json.dumps(rows[0]))
    bad1["expected_action"]["name"] = "rm"  # not in tools
    bad2 = json.loads(json.dumps(rows[0]))
    bad2["expected_action"]["arguments"] = "{not json"
    bad3 = json.loads(json.dumps(rows[1]))
    bad3["responses_create_params"]["input"].append(
        {"type": "function_call", "call_id": "x", "name": "ls", "arguments": "{}"}
    )
    p = tmp_path / "pivots.jsonl"
    atomic_write_jsonl(p, [rows[0], bad1, bad2, bad3])
    with open(p, "a") as f:
        f.write("{broken\n")
    rep = validate_file(str(p))
    text = "\n".join(rep.problems)
    assert rep.rows == 5 and rep.invalid == 4
    assert f"{p}:2: expected_action.name: 'rm' is not in responses_create_params.tools" in text
    assert f"{p}:3: expected_action.arguments:" in text
    assert f"{p}:4: responses_create_params.input[4]: prefix ends with a tool call" in text
    assert f"{p}:5: <row>: not valid JSON" in text
    with pytest.raises(DataError, match=r"pivots.jsonl:2: expected_action.name"):
        load_pivot_rows(str(p))
    ok, skipped = load_pivot_rows(str(p), skip_invalid=True)
    assert len(ok) == 1 and skipped == 4


def test_trajectory_errors_name_line_and_field(tmp_path):
    good = _traj("a")
    bad = _traj("b")
    bad["messages"][2]["tool_calls"][0]["function"]["arguments"] = "[1, 2]"
    p = tmp_path / "traj.jsonl"
    atomic_write_jsonl(p, [good, bad])
    with pytest.raises(DataError) as e:
        load_trajectories(str(p))
    assert (
        str(e.value) == f"{p}:2: messages[2].tool_calls[0].function.arguments: must be a JSON object (string-encoded)"
    )
    trajs, rep = load_trajectories(str(p), skip_invalid=True)
    assert [t["id"] for t in trajs] == ["a"] and rep.skipped == 1


def test_duplicate_ids_are_rejected(tmp_path):
    p = tmp_path / "traj.jsonl"
    atomic_write_jsonl(p, [_traj("a"), _traj("a")])
    with pytest.raises(DataError, match=r"traj.jsonl:2: id: duplicate trajectory id \(first at line 1\)"):
        load_trajectories(str(p))
    rows = extract_candidates(_traj(), "rl", "tool_call_args")
    q = tmp_path / "pivots.jsonl"
    atomic_write_jsonl(q, [rows[0], rows[1], rows[0]])
    with pytest.raises(DataError, match=r"pivots.jsonl:3: id: duplicate of the row at line 1"):
        load_pivot_rows(str(q))


def test_profile_fields_must_be_numbers():
    row = extract_candidates(_traj(), "rl", "tool_call_args")[0]
    row["profile"] = {"k": 2, "rewards": [1, 0], "mean": "half", "variance": None}
    fields = [f for f, _ in validate_pivot_row(row)]
    assert "profile.mean" in fields and "profile.variance" in fields
