"""PivotRow: the one typed view over a pivot-row dict, and the one prefix-call parser."""

from __future__ import annotations

import json

import pytest
from bfcl_rows import expected_args, row_for, tool_call

from pivotrl_nemo.config.schema import DataConfig, VerifierConfig
from pivotrl_nemo.data.actions import parse_completion
from pivotrl_nemo.data.extract import message_to_items
from pivotrl_nemo.data.pivot_row import PivotRow, item_calls
from pivotrl_nemo.domains.bfcl.verifier import BfclStateVerifier
from pivotrl_nemo.rollout.chat import render_messages

CFG = DataConfig(max_prompt_tokens=0, max_history_items=0, max_tool_output_chars=0)


def _row(**over):
    row = {
        "id": "hand/1#2",
        "responses_create_params": {
            "input": [
                {"role": "user", "content": "make temp and go there"},
                {"type": "function_call", "call_id": "c0", "name": "mkdir", "arguments": '{"dir_name": "temp"}'},
                {"type": "function_call_output", "call_id": "c0", "output": "None"},
            ],
            "tools": [
                {"type": "function", "name": "mkdir", "description": "", "parameters": {"type": "object"}},
                {"type": "function", "function": {"name": "cd", "description": "", "parameters": {"type": "object"}}},
            ],
            "tool_choice": "auto",
        },
        "expected_action": {"type": "function_call", "name": "cd", "arguments": '{"folder": "temp"}'},
        "metadata": {"trajectory_id": "hand/1", "depth": 2, "env": {"involved_classes": ["GorillaFileSystem"]}},
        "profile": {"k": 2, "rewards": [0, 1], "mean": 0.5, "variance": 0.25},
    }
    row.update(over)
    return row


def _calls(calls):
    return [(c.name, c.arguments) for c in calls]


def test_fields_and_no_copy():
    raw = _row()
    row = PivotRow(raw)
    assert row.raw is raw and row.id == "hand/1#2" and PivotRow.of(row) is row and PivotRow.of(raw).raw is raw
    assert row.trajectory_id == "hand/1" and row.env == {"involved_classes": ["GorillaFileSystem"]}
    assert row.metadata["depth"] == 2 and row.profile["mean"] == 0.5
    assert row.input_items is raw["responses_create_params"]["input"]
    bare = PivotRow({"id": "x"})
    assert (bare.metadata, bare.env, bare.profile, bare.trajectory_id) == ({}, None, None, None)
    with pytest.raises(TypeError):
        PivotRow(["not", "a", "row"])  # type: ignore[arg-type]


def test_tools_in_both_forms():
    row = PivotRow(_row())
    assert len(row.tools) == 2 and row.tool_names == {"mkdir", "cd"}
    assert PivotRow({"id": "x", "responses_create_params": {"input": []}}).tools == []
    odd = _row()
    odd["responses_create_params"]["tools"] = {"name": "mkdir"}
    assert PivotRow(odd).tool_names == set()  # scoring never fails on the tool list's shape
    with pytest.raises(ValueError, match="hand/1#2.*tools must be a list"):
        PivotRow(odd).tools  # noqa: B018 - rendering does
    assert PivotRow({"id": "x"}).tool_names == set()


def test_input_items():
    row = PivotRow(_row(responses_create_params={"input": "just text", "tools": []}))
    assert row.input_items == [{"role": "user", "content": "just text"}]
    assert row.prefix_calls() == []
    with pytest.raises(ValueError, match="'x' has no responses_create_params"):
        PivotRow({"id": "x"}).input_items  # noqa: B018
    with pytest.raises(ValueError, match="input must be a list of objects"):
        PivotRow(_row(responses_create_params={"input": ["text"]})).input_items  # noqa: B018


def test_expected_action_and_malformed_rows():
    row = PivotRow(_row())
    assert row.expected.kind == "function_call" and _calls(row.expected.calls) == [("cd", {"folder": "temp"})]
    assert row.expected_type == "function_call"
    one_batch = PivotRow(
        _row(expected_action={"type": "function_call_batch", "calls": [{"name": "ls", "arguments": "{}"}]})
    )
    assert one_batch.expected.kind == "function_call" and one_batch.expected_type == "function_call_batch"
    for bad in ({"type": "function_call", "arguments": "{}"}, None, "mkdir"):
        with pytest.raises(ValueError, match="'hand/1#2' has a malformed expected_action"):
            PivotRow(_row(expected_action=bad)).expected  # noqa: B018
    raw = _row()
    del raw["expected_action"]
    with pytest.raises(ValueError, match="'hand/1#2' has a malformed expected_action"):
        PivotRow(raw).expected  # noqa: B018
    with pytest.raises(ValueError, match="malformed expected_action"):
        PivotRow(raw).expected_type  # noqa: B018


def test_prefix_calls_responses_and_chat_forms():
    assert _calls(PivotRow(_row()).prefix_calls()) == [("mkdir", {"dir_name": "temp"})]
    chat_item = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "cd", "arguments": '{"folder": "temp"}'}},
            {"id": "b", "type": "function", "function": {"name": "ls", "arguments": {"a": True}}},
        ],
    }
    assert _calls(item_calls(chat_item)) == [("cd", {"folder": "temp"}), ("ls", {"a": True})]
    assert item_calls({"role": "user", "content": "hi", "tool_calls": chat_item["tool_calls"]}) == []
    assert item_calls({"role": "assistant", "content": "hi"}) == [] and item_calls("text") == []
    raw = _row()
    raw["responses_create_params"]["input"] += [chat_item, "not an item", {"type": "reasoning", "summary": []}]
    assert [c.name for c in PivotRow(raw).prefix_calls()] == ["mkdir", "cd", "ls"]


def _as_chat_style(row: dict) -> dict:
    """The same row with each run of function_call items as one chat-style assistant message."""
    out, items = json.loads(json.dumps(row)), []
    for item in row["responses_create_params"]["input"]:
        if item.get("type") == "function_call":
            tc = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            if items and items[-1].get("tool_calls"):
                items[-1]["tool_calls"].append(tc)
            else:
                items.append({"role": "assistant", "content": None, "tool_calls": [tc]})
        else:
            items.append(dict(item))
    out["responses_create_params"]["input"] = items
    out["id"] = row["id"] + "/chat"
    return out


def _rendered_calls(row) -> list:
    msgs = render_messages(row, CFG)
    return [c for m in msgs if m["role"] == "assistant" for c in parse_completion(m["content"]).calls]


def test_chat_style_row_renders_as_its_responses_form():
    text_then_calls = {
        "role": "assistant",
        "content": "On it.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "cd", "arguments": '{"folder": "temp"}'}}],
    }
    chat = _row()
    chat["responses_create_params"]["input"].append(text_then_calls)
    responses = _row()
    responses["responses_create_params"]["input"] += message_to_items(text_then_calls)
    assert render_messages(chat, CFG) == render_messages(responses, CFG)
    assert render_messages(chat, CFG)[-1] == {
        "role": "assistant",
        "content": "On it.\n" + tool_call("cd", folder="temp"),
    }


@pytest.mark.parametrize("eid,name", [("multi_turn_base_0", "mv"), ("multi_turn_base_56", "fillFuelTank")])
def test_renderer_and_bfcl_verifier_see_the_same_prefix_calls(eid, name):
    row = row_for(eid, name)
    chat = _as_chat_style(row)
    prefix = _calls(PivotRow(row).prefix_calls())
    assert prefix and _calls(PivotRow(chat).prefix_calls()) == prefix
    assert _calls(_rendered_calls(row)) == prefix == _calls(_rendered_calls(chat))
    assert render_messages(chat, CFG) == render_messages(row, CFG)
    v = BfclStateVerifier(VerifierConfig(name="bfcl_state"))
    expected = PivotRow(row).expected
    assert v.reference(chat, expected).env.fingerprint() == v.reference(row, expected).env.fingerprint()
    good = tool_call(name, **expected_args(row))
    assert v.verify(chat, good) == v.verify(row, good) and v.verify(chat, good).passed
