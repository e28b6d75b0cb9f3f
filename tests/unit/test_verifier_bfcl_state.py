"""bfcl_state: functional equivalence on live BFCL backends (real rows, real backends)."""

import json
import time

import pytest
from bfcl_rows import expected_args, pivot_rows, row_for, tool_call, trajectory, with_expected

from pivotrl_nemo.config.schema import VerifierConfig
from pivotrl_nemo.data.actions import action_from_expected
from pivotrl_nemo.data.pivot_row import PivotRow
from pivotrl_nemo.domains.bfcl.verifier import BfclStateVerifier
from pivotrl_nemo.verifiers.base import Category


@pytest.fixture()
def v():
    return BfclStateVerifier(VerifierConfig(name="bfcl_state"))


def _reference_completion(row):
    return tool_call(row["expected_action"]["name"], **expected_args(row))


def test_every_reference_step_of_real_trajectories_passes(v):
    rows = [
        r
        for eid in (
            "multi_turn_base_0",
            "multi_turn_base_56",
            "multi_turn_base_102",
            "multi_turn_base_157",
            "multi_turn_base_15",
            "multi_turn_base_170",
        )
        for r in pivot_rows(trajectory(eid))
    ]
    assert len(rows) > 30
    for row in rows:
        verdict = v.verify(row, _reference_completion(row))
        assert verdict.passed and verdict.category == Category.CORRECT, (row["id"], verdict)


def test_prefix_is_the_rows_earlier_calls():
    row = row_for("multi_turn_base_0", "mv")
    assert [c.name for c in PivotRow(row).prefix_calls()] == ["cd", "mkdir"]
    assert PivotRow(row).prefix_calls()[0].arguments == {"folder": "document"}


# ------------------------------------------------------------------ equivalent but different


def test_argument_order_and_python_call_syntax_pass(v):
    row = row_for("multi_turn_base_0", "mv")
    assert v.verify(row, tool_call("mv", destination="temp", source="final_report.pdf")).passed
    assert v.verify(row, "mv(destination='temp', source='final_report.pdf')").passed
    assert v.verify(row, '{"name": "mv", "arguments": {"destination": "temp", "source": "final_report.pdf"}}').passed
    assert v.verify(
        row,
        '<tool_call>{"name": "mv", "arguments": "{\\"source\\": \\"final_report.pdf\\", \\"destination\\": \\"temp\\"}"}</tool_call>',
    ).passed


def test_int_vs_float_where_the_backend_treats_them_the_same(v):
    row = row_for("multi_turn_base_56", "fillFuelTank")
    assert expected_args(row) == {"fuelAmount": 40}
    assert v.verify(row, tool_call("fillFuelTank", fuelAmount=40.0)).passed
    row = row_for("multi_turn_base_102", "place_order")
    assert v.verify(row, tool_call("place_order", order_type="Buy", symbol="TSLA", price=700.0, amount=100.0)).passed


def test_equivalent_path_argument_passes(v):
    row = row_for("multi_turn_base_0", "cd")
    assert expected_args(row) == {"folder": "document"}
    assert v.verify(row, tool_call("cd", folder="document/")).passed


def test_equivalent_list_order_passes(v):
    row = row_for("multi_turn_base_56", "lockDoors")
    doors = list(reversed(expected_args(row)["door"]))
    assert v.verify(row, tool_call("lockDoors", unlock=False, door=doors)).passed


# ------------------------------------------------------------------ near misses


def test_one_wrong_argument_value_fails_on_state(v):
    row = row_for("multi_turn_base_0", "mkdir")
    verdict = v.verify(row, tool_call("mkdir", dir_name="tmp"))
    assert verdict.reward == 0.0 and verdict.category == Category.STATE_MISMATCH
    assert "GorillaFileSystem" in verdict.detail
    verdict = v.verify(row_for("multi_turn_base_0", "cd"), tool_call("cd", folder="archive"))
    assert verdict.category in (Category.STATE_MISMATCH, Category.OUTPUT_MISMATCH) and verdict.reward == 0.0


def test_reworded_long_string_is_a_real_state_difference(v):
    row = row_for("multi_turn_base_102", "create_ticket")
    args = expected_args(row)
    args["description"] = args["description"].replace("User-reported", "Customer-reported")
    verdict = v.verify(row, tool_call("create_ticket", **args))
    assert verdict.category == Category.STATE_MISMATCH and "TicketAPI" in verdict.detail


def test_wrong_tool_with_same_arguments_fails_on_output(v):
    row = row_for("multi_turn_base_0", "sort")
    verdict = v.verify(row, tool_call("cat", file_name="final_report.pdf"))
    assert verdict.reward == 0.0 and verdict.category == Category.OUTPUT_MISMATCH
    assert "file_content" in verdict.detail and "sorted_content" in verdict.detail


def test_missing_key_raises_in_backend_and_is_an_execution_error(v):
    row = row_for("multi_turn_base_0", "mv")
    verdict = v.verify(row, tool_call("mv", source="final_report.pdf"))
    assert verdict.reward == 0.0 and verdict.category == Category.EXECUTION_ERROR
    assert "destination" in verdict.detail


def test_excluded_or_unknown_tool_fails(v):
    row = row_for("multi_turn_base_0", "mv")  # this entry excludes cp from its tools
    assert (
        v.verify(row, tool_call("cp", source="final_report.pdf", destination="temp")).category == Category.UNKNOWN_TOOL
    )
    assert v.verify(row, tool_call("_load_scenario", scenario={})).category == Category.UNKNOWN_TOOL


def test_message_where_a_call_was_expected_and_bad_json(v):
    row = row_for("multi_turn_base_0", "mv")
    assert v.verify(row, "I moved the file for you.").category == Category.CALL_EXPECTED
    verdict = v.verify(row, '<tool_call>{"name": "mv", "arguments": "{source: oops"}</tool_call>')
    assert verdict.category == Category.BAD_ARGUMENTS_JSON and verdict.reward == 0.0


def test_expected_message(v):
    row = with_expected(row_for("multi_turn_base_0", "mv"), {"type": "message", "content": "Done."}, "msg")
    assert v.verify(row, "Anything at all.").passed
    assert v.verify(row, tool_call("ls")).category == Category.MESSAGE_EXPECTED


# ------------------------------------------------------------------ batches


def _batch_row():
    row = row_for("multi_turn_base_0", "mkdir")  # after cd(document)
    batch = {
        "type": "function_call_batch",
        "calls": [
            {"name": "mkdir", "arguments": json.dumps({"dir_name": "temp"})},
            {"name": "touch", "arguments": json.dumps({"file_name": "notes.txt"})},
        ],
    }
    return with_expected(row, batch, "batch")


def test_batch_in_any_order_passes_and_extra_or_missing_call_fails(v):
    row = _batch_row()
    mk, tc = tool_call("mkdir", dir_name="temp"), tool_call("touch", file_name="notes.txt")
    assert v.verify(row, mk + tc).passed
    assert v.verify(row, tc + "\n" + mk).passed
    verdict = v.verify(row, mk + tc + tool_call("ls"))  # read-only surplus call
    assert verdict.category == Category.WRONG_CALL_COUNT and verdict.reward == 0.0
    assert v.verify(row, mk).category == Category.STATE_MISMATCH
    assert v.verify(row, mk + tool_call("touch", file_name="other.txt")).category == Category.STATE_MISMATCH


# ------------------------------------------------------------------ hostile and unparseable


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "<tool_call>not json</tool_call>",
        "<tool_call>" + "[" * 5000 + "]" * 5000 + "</tool_call>",
        '<tool_call>{"name": "mv", "arguments": ' + "[" * 9000 + "]" * 9000 + "}</tool_call>",
        "x" * 30000,
    ],
)
def test_unparseable_scores_zero(v, text):
    verdict = v.verify(row_for("multi_turn_base_0", "mv"), text)
    assert verdict.reward == 0.0 and verdict.category == Category.UNPARSEABLE


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "os.system(command='touch /tmp/pwned')",
        "mv(source=__import__('os').getcwd(), destination='temp')",
        "mv(source='a' * 10**9, destination='temp')",
        "[mv(source='final_report.pdf', destination='temp'), exec(code='1')]",
        '<tool_call>{"name": "__class__", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "mv", "arguments": {"source": '
        + "[" * 400
        + "]" * 400
        + ', "destination": "temp"}}</tool_call>',
        '<tool_call>{"name": "mv", "arguments": {"source": "final_report.pdf", "destination": "temp", "self": 1}}</tool_call>',
    ],
)
def test_hostile_text_scores_zero_without_raising(v, text):
    t0 = time.perf_counter()
    verdict = v.verify(row_for("multi_turn_base_0", "mv"), text)
    assert verdict.reward == 0.0, verdict
    assert time.perf_counter() - t0 < 2.0


def test_hostile_math_arguments_are_refused_quickly(v):
    traj = trajectory("multi_turn_base_15")
    assert "MathAPI" in traj["metadata"]["env"]["involved_classes"]
    row = pivot_rows(traj)[0]
    t0 = time.perf_counter()
    verdict = v.verify(row, tool_call("power", base=10, exponent=10**12))
    assert verdict.reward == 0.0 and verdict.category == Category.EXECUTION_ERROR and "refused" in verdict.detail
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------ cache


def test_k_samples_cost_one_replay_and_cache_is_bounded():
    v = BfclStateVerifier(VerifierConfig(name="bfcl_state"), cache_size=2)
    rows = pivot_rows(trajectory("multi_turn_base_0"))
    for row in rows[:3]:
        for _ in range(4):
            assert v.verify(row, _reference_completion(row)).passed
    assert len(v._cache) == 2
    ref = v.reference(rows[2], action_from_expected(rows[2]["expected_action"]))
    fp = ref.env.fingerprint()
    v.verify(rows[2], tool_call("mkdir", dir_name="zzz"))  # a state-changing candidate
    assert ref.env.fingerprint() == fp  # the cached prefix is never mutated


def test_verify_time_per_call_is_small():
    v = BfclStateVerifier(VerifierConfig(name="bfcl_state"))
    rows = pivot_rows(trajectory("multi_turn_base_0"))
    t0 = time.perf_counter()
    n = 0
    for row in rows:
        for _ in range(8):
            v.verify(row, _reference_completion(row))
            n += 1
    assert (time.perf_counter() - t0) / n < 0.02
