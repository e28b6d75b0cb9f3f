"""tool_call_args: the paper's argument-comparison verifier (method reference 5.1)."""

import json
import time

import pytest
from bfcl_rows import expected_args, row_for, tool_call, with_expected

from pivotrl_nemo.config.schema import VerifierConfig
from pivotrl_nemo.verifiers.base import Category
from pivotrl_nemo.verifiers.matching import maximum_matching
from pivotrl_nemo.verifiers.tool_call_args import ToolCallArgsVerifier, word_overlap


def tca(**settings):
    """A ToolCallArgsVerifier built, as the registry builds it, from a VerifierConfig."""
    return ToolCallArgsVerifier(VerifierConfig(name="tool_call_args", **settings))


@pytest.fixture()
def v():
    return tca()


def _call_row(name, arguments, tools=None):
    tools = tools or [name, "ls", "cat"]
    return {
        "id": f"hand/{name}",
        "responses_create_params": {
            "input": [{"role": "user", "content": "do it"}],
            "tools": [
                {"type": "function", "name": t, "description": "", "parameters": {"type": "object"}, "strict": False}
                for t in tools
            ],
            "tool_choice": "auto",
        },
        "expected_action": {"type": "function_call", "name": name, "arguments": json.dumps(arguments)},
    }


def _batch_row(calls):
    row = _call_row(calls[0][0], calls[0][1], tools=sorted({c[0] for c in calls} | {"ls"}))
    row["expected_action"] = {
        "type": "function_call_batch",
        "calls": [{"name": n, "arguments": json.dumps(a)} for n, a in calls],
    }
    return row


# ------------------------------------------------------------------ equivalent but different


def test_reference_and_argument_order_and_syntax_pass(v):
    row = row_for("multi_turn_base_0", "mv")
    assert v.verify(row, tool_call("mv", source="final_report.pdf", destination="temp")).passed
    assert v.verify(row, tool_call("mv", destination="temp", source="final_report.pdf")).passed
    assert v.verify(row, "mv(destination='temp', source='final_report.pdf')").passed
    assert v.verify(row, '[{"name": "mv", "parameters": {"destination": "temp", "source": "final_report.pdf"}}]').passed


def test_reworded_long_string_above_threshold_passes(v):
    row = row_for("multi_turn_base_102", "create_ticket")
    args = expected_args(row)
    reworded = (
        args["description"].replace("User-reported issue where", "Customer says").replace("despite", "even after")
    )
    assert word_overlap(reworded, args["description"]) >= 0.1
    assert v.verify(row, tool_call("create_ticket", title=args["title"], description=reworded)).passed
    # long strings are compared lower-cased
    assert v.verify(
        row, tool_call("create_ticket", title=args["title"], description=args["description"].upper())
    ).passed


def test_overlap_threshold_semantics():
    row = row_for("multi_turn_base_102", "create_ticket")
    args = expected_args(row)
    same = tool_call("create_ticket", **args)
    assert word_overlap(args["description"], args["description"]) == 0.5  # identical scores exactly 0.5
    assert tca(word_overlap_threshold=0.5).verify(row, same).passed
    assert not tca(word_overlap_threshold=0.51).verify(row, same).passed
    unrelated = tool_call("create_ticket", title=args["title"], description="completely different words entirely here")
    verdict = tca(word_overlap_threshold=0.1).verify(row, unrelated)
    assert verdict.category == Category.WRONG_ARGS and "args.description" in verdict.detail
    # threshold 0.0 is not name-only: keys and types still count
    zero = tca(word_overlap_threshold=0.0)
    assert zero.verify(row, unrelated).passed
    assert zero.verify(row, tool_call("create_ticket", title=args["title"])).category == Category.WRONG_ARG_KEYS


def test_float_within_tolerance_passes(v):
    row = row_for("multi_turn_base_56", "pressBrakePedal")
    assert expected_args(row) == {"pedalPosition": 1.0}
    assert v.verify(row, tool_call("pressBrakePedal", pedalPosition=1.0 + 1e-9)).passed
    verdict = v.verify(row, tool_call("pressBrakePedal", pedalPosition=0.9))
    assert verdict.category == Category.WRONG_ARGS and "args.pedalPosition" in verdict.detail
    assert tca(float_tolerance=0.2).verify(row, tool_call("pressBrakePedal", pedalPosition=0.9)).passed


# ------------------------------------------------------------------ near misses


def test_one_wrong_value_names_the_path(v):
    verdict = v.verify(row_for("multi_turn_base_0", "mkdir"), tool_call("mkdir", dir_name="tmp"))
    assert verdict.reward == 0.0 and verdict.category == Category.WRONG_ARGS
    assert verdict.detail.startswith("mkdir: args.dir_name")
    row = _call_row("zip", {"files": ["a.txt", "b.txt", "c.txt"], "opts": {"level": 3}})
    verdict = v.verify(row, tool_call("zip", files=["a.txt", "b.txt", "x.txt"], opts={"level": 3}))
    assert verdict.category == Category.WRONG_ARGS and "args.files[2]" in verdict.detail
    verdict = v.verify(row, tool_call("zip", files=["a.txt", "b.txt", "c.txt"], opts={"level": 4}))
    assert "args.opts.level" in verdict.detail
    verdict = v.verify(row, tool_call("zip", files=["a.txt", "b.txt"], opts={"level": 3}))
    assert verdict.category == Category.WRONG_ARGS and "args.files" in verdict.detail


def test_short_strings_are_exact(v):
    verdict = v.verify(row_for("multi_turn_base_0", "mkdir"), tool_call("mkdir", dir_name="Temp"))
    assert verdict.category == Category.WRONG_ARGS


def test_wrong_tool_with_same_arguments(v):
    verdict = v.verify(row_for("multi_turn_base_0", "sort"), tool_call("cat", file_name="final_report.pdf"))
    assert verdict.reward == 0.0 and verdict.category == Category.WRONG_TOOL


def test_int_vs_float_and_bool_vs_int_are_type_errors(v):
    row = row_for("multi_turn_base_56", "fillFuelTank")
    verdict = v.verify(row, tool_call("fillFuelTank", fuelAmount=40.0))
    assert verdict.category == Category.WRONG_ARG_TYPE and "args.fuelAmount: float where int expected" in verdict.detail
    row = row_for("multi_turn_base_56", "lockDoors")
    doors = expected_args(row)["door"]
    verdict = v.verify(row, tool_call("lockDoors", unlock=0, door=doors))
    assert verdict.category == Category.WRONG_ARG_TYPE and "args.unlock" in verdict.detail
    verdict = v.verify(row, tool_call("lockDoors", unlock=False, door=list(reversed(doors))))  # order matters here
    assert verdict.category == Category.WRONG_ARGS and "args.door[0]" in verdict.detail


def test_missing_or_extra_key(v):
    row = row_for("multi_turn_base_0", "mv")
    verdict = v.verify(row, tool_call("mv", source="final_report.pdf"))
    assert verdict.category == Category.WRONG_ARG_KEYS and "destination" in verdict.detail
    verdict = v.verify(row, tool_call("mv", source="final_report.pdf", destination="temp", force=True))
    assert verdict.category == Category.WRONG_ARG_KEYS and "force" in verdict.detail


def test_message_call_decision_unknown_tool_and_bad_json(v):
    row = row_for("multi_turn_base_0", "mv")
    assert v.verify(row, "Sure, moving it now.").category == Category.CALL_EXPECTED
    assert (
        v.verify(row, tool_call("cp", source="final_report.pdf", destination="temp")).category == Category.UNKNOWN_TOOL
    )
    verdict = v.verify(row, '<tool_call>{"name": "mv", "arguments": "source=final_report.pdf"}</tool_call>')
    assert verdict.category == Category.BAD_ARGUMENTS_JSON
    msg_row = with_expected(row, {"type": "message", "content": "Which folder?"}, "msg")
    assert v.verify(msg_row, "Something else entirely.").passed  # content not compared (paper)
    assert v.verify(msg_row, tool_call("ls")).category == Category.MESSAGE_EXPECTED


# ------------------------------------------------------------------ parallel calls


def test_batch_binary_strict(v):
    row = _batch_row([("mkdir", {"dir_name": "temp"}), ("touch", {"file_name": "notes.txt"})])
    mk, tc = tool_call("mkdir", dir_name="temp"), tool_call("touch", file_name="notes.txt")
    assert v.verify(row, mk + tc).passed and v.verify(row, tc + mk).passed
    verdict = v.verify(row, mk + tc + tool_call("ls"))
    assert verdict.reward == 0.0 and verdict.category == Category.WRONG_CALL_COUNT
    assert v.verify(row, mk).category == Category.WRONG_CALL_COUNT
    verdict = v.verify(row, mk + tool_call("touch", file_name="other.txt"))
    assert verdict.reward == 0.0 and verdict.category == Category.WRONG_ARGS and "args.file_name" in verdict.detail
    # a single expected call does not admit a surplus call either
    single = row_for("multi_turn_base_0", "mkdir")
    assert v.verify(single, mk + tool_call("ls")).category == Category.WRONG_CALL_COUNT


def test_batch_f1():
    v = tca(parallel_mode="f1")
    row = _batch_row([("mkdir", {"dir_name": "temp"}), ("touch", {"file_name": "notes.txt"})])
    mk, tc = tool_call("mkdir", dir_name="temp"), tool_call("touch", file_name="notes.txt")
    assert v.verify(row, tc + mk).reward == 1.0
    verdict = v.verify(row, mk + tc + tool_call("ls"))
    assert verdict.reward == pytest.approx(0.8) and verdict.category == Category.WRONG_CALL_COUNT
    verdict = v.verify(row, mk + tool_call("touch", file_name="x.txt"))
    assert verdict.reward == pytest.approx(0.5) and verdict.category == Category.WRONG_ARGS
    assert v.verify(row, tool_call("ls") + tool_call("cat", file_name="a")).reward == 0.0


def test_maximum_matching_needs_augmenting_paths():
    assert len(maximum_matching([[0, 1], [0]])) == 2
    assert len(maximum_matching([[0], [0], [0]])) == 1
    assert len(maximum_matching([[0, 1], [1, 2], [0, 1]])) == 3  # needs a two-step augmenting path
    assert maximum_matching([[1, 0], [0], [2, 1]]) == {0: 1, 1: 0, 2: 2}
    # through the verifier: p0 fits both expected strings, p1 only the first one
    row = _batch_row([("note", {"text": "alpha beta gamma"}), ("note", {"text": "alpha beta delta"})])
    v = tca(word_overlap_threshold=0.4)
    assert v.verify(
        row, tool_call("note", text="alpha beta gamma delta") + tool_call("note", text="alpha beta gamma")
    ).passed


def test_bad_parallel_mode():
    with pytest.raises(ValueError, match="binary_strict"):
        tca(parallel_mode="fractional")


# ------------------------------------------------------------------ hostile and unparseable


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "mv", "arguments": ' + "[" * 9000 + "]" * 9000 + "}</tool_call>",
        "y" * 25000,
    ],
)
def test_unparseable(v, text):
    verdict = v.verify(row_for("multi_turn_base_0", "mv"), text)
    assert verdict.reward == 0.0 and verdict.category == Category.UNPARSEABLE


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "os.system(command='rm -rf /')",
        "mv(source=open('/etc/passwd').read(), destination='temp')",
        '<tool_call>{"name": "mv", "arguments": {"source": '
        + "[" * 3000
        + "]" * 3000
        + ', "destination": "temp"}}</tool_call>',
        "mv(source=" + "[" * 3000 + "]" * 3000 + ", destination='temp')",
        "mv(source={1, 2}, destination='temp')",
    ],
)
def test_hostile_text_scores_zero_without_raising(v, text):
    t0 = time.perf_counter()
    assert v.verify(row_for("multi_turn_base_0", "mv"), text).reward == 0.0
    assert time.perf_counter() - t0 < 1.0


def test_deeply_nested_expected_shape_is_bounded(v):
    deep = json.loads("[" * 200 + "]" * 200)
    row = _call_row("put", {"value": deep})
    verdict = v.verify(row, tool_call("put", value=deep))
    assert verdict.reward == 0.0 and verdict.category == Category.WRONG_ARGS and "deeper" in verdict.detail
