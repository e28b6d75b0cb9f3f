"""strict: exact canonical-action match; and the verifier registry."""

import json

import pytest
from bfcl_rows import row_for, tool_call, with_expected

from pivotrl_nemo.config.schema import VerifierConfig
from pivotrl_nemo.data.actions import make_call
from pivotrl_nemo.domains.bfcl.verifier import BfclStateVerifier
from pivotrl_nemo.registry import VERIFIERS, RegistryError
from pivotrl_nemo.verifiers.base import Category, VerifierBase
from pivotrl_nemo.verifiers.registry import build_verifier, get_verifier
from pivotrl_nemo.verifiers.strict import StrictVerifier, canonical_call
from pivotrl_nemo.verifiers.tool_call_args import ToolCallArgsVerifier

v = StrictVerifier(VerifierConfig(name="strict"))


def test_argument_order_and_call_syntax_do_not_matter():
    row = row_for("multi_turn_base_0", "mv")
    assert v.verify(row, tool_call("mv", source="final_report.pdf", destination="temp")).passed
    assert v.verify(row, tool_call("mv", destination="temp", source="final_report.pdf")).passed
    assert v.verify(row, "mv(destination='temp', source='final_report.pdf')").passed
    assert v.verify(
        row, '  {"name": "mv", "arguments": {"destination": "temp", "source": "final_report.pdf"}}\n'
    ).passed


def test_functionally_equivalent_but_different_actions_are_not_exact():
    row = row_for("multi_turn_base_56", "fillFuelTank")
    assert v.verify(row, tool_call("fillFuelTank", fuelAmount=40)).passed
    verdict = v.verify(row, tool_call("fillFuelTank", fuelAmount=40.0))  # bfcl_state accepts this one
    assert verdict.reward == 0.0 and verdict.category == Category.NOT_EXACT
    assert (
        v.verify(row_for("multi_turn_base_0", "cd"), tool_call("cd", folder="document/")).category == Category.NOT_EXACT
    )
    row = row_for("multi_turn_base_102", "create_ticket")
    args = json.loads(row["expected_action"]["arguments"])
    args["description"] = args["description"].replace("User-reported", "Customer-reported")
    assert v.verify(row, tool_call("create_ticket", **args)).category == Category.NOT_EXACT


def test_near_misses():
    row = row_for("multi_turn_base_0", "mv")
    assert v.verify(row, tool_call("mv", source="final_report.pdf", destination="tmp")).category == Category.NOT_EXACT
    assert v.verify(row, tool_call("mv", source="final_report.pdf")).category == Category.NOT_EXACT
    assert v.verify(row, tool_call("cp", source="final_report.pdf", destination="temp")).category == Category.NOT_EXACT
    assert v.verify(row, "Moved.").category == Category.CALL_EXPECTED
    assert (
        v.verify(row, '<tool_call>{"name": "mv", "arguments": "{oops"}</tool_call>').category
        == Category.BAD_ARGUMENTS_JSON
    )


def test_messages_match_after_strip_only():
    row = with_expected(row_for("multi_turn_base_0", "mv"), {"type": "message", "content": "Done."}, "msg")
    assert v.verify(row, "  Done.\n").passed
    assert v.verify(row, "done.").category == Category.NOT_EXACT
    assert v.verify(row, tool_call("ls")).category == Category.MESSAGE_EXPECTED


def test_batches_match_as_multisets():
    row = with_expected(
        row_for("multi_turn_base_0", "mkdir"),
        {
            "type": "function_call_batch",
            "calls": [
                {"name": "mkdir", "arguments": '{"dir_name": "temp"}'},
                {"name": "touch", "arguments": '{"file_name": "a.txt"}'},
            ],
        },
        "b",
    )
    mk, tc = tool_call("mkdir", dir_name="temp"), tool_call("touch", file_name="a.txt")
    assert v.verify(row, tc + mk).passed
    assert v.verify(row, mk + tc + tool_call("ls")).category == Category.NOT_EXACT
    assert v.verify(row, mk + mk).category == Category.NOT_EXACT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<tool_call>[[[</tool_call>",
        "z" * 25000,
        '<tool_call>{"name": "mv", "arguments": ' + "[" * 9000 + "]" * 9000 + "}</tool_call>",
    ],
)
def test_unparseable(text):
    verdict = v.verify(row_for("multi_turn_base_0", "mv"), text)
    assert verdict.reward == 0.0 and verdict.category == Category.UNPARSEABLE


@pytest.mark.parametrize(
    "text",
    ["__import__('os').system('x')", "exec(code='import os')", "mv(source=__import__('os').sep, destination='temp')"],
)
def test_hostile_text_scores_zero(text):
    assert v.verify(row_for("multi_turn_base_0", "mv"), text).reward == 0.0


def test_canonical_call():
    assert canonical_call(make_call("f", {"b": 1, "a": [1.5, "x"]})) == 'f({"a":[1.5,"x"],"b":1})'
    assert canonical_call(make_call("f", "not json")) is None


# ------------------------------------------------------------------ registry


def test_registry_maps_names_and_config():
    assert isinstance(build_verifier("bfcl_state", VerifierConfig(name="bfcl_state")), BfclStateVerifier)
    assert isinstance(get_verifier(VerifierConfig(name="strict")), StrictVerifier)
    cfg = VerifierConfig(name="tool_call_args", word_overlap_threshold=0.3, float_tolerance=0.01, parallel_mode="f1")
    tca = get_verifier(cfg)
    assert isinstance(tca, ToolCallArgsVerifier) and tca.cfg is cfg
    assert (tca.word_overlap_threshold, tca.float_tolerance, tca.parallel_mode) == (0.3, 0.01, "f1")
    for name in ("bfcl_state", "tool_call_args", "strict"):  # built uniformly as Cls(cfg)
        built = build_verifier(name, VerifierConfig(name=name))
        assert type(built) is VERIFIERS.get(name) and isinstance(built, VerifierBase)
        assert not hasattr(type(built), "name")  # names live only in registry.VERIFIERS
    with pytest.raises(RegistryError, match="bfcl_state.*tool_call_args.*strict"):
        get_verifier(VerifierConfig(name="llm_judge"))
