"""tool_call_schema: every rule on an equivalent-but-different call and on a near miss; acceptable
sets (both argument verifiers); hacking resistance; selection by config."""

import json
import time

import pytest

from pivotrl_nemo.config import load_config
from pivotrl_nemo.config.schema import SchemaVerifierConfig, VerifierConfig
from pivotrl_nemo.data.pivots import validate_pivot_row
from pivotrl_nemo.registry import DOMAINS
from pivotrl_nemo.verifiers.base import Category
from pivotrl_nemo.verifiers.registry import get_verifier
from pivotrl_nemo.verifiers.strings import recognise, text_similarity
from pivotrl_nemo.verifiers.tool_call_args import ToolCallArgsVerifier
from pivotrl_nemo.verifiers.tool_call_schema import ToolCallSchemaVerifier

PROPS = {
    "amount": {"type": "number"},
    "count": {"type": "integer"},
    "express": {"type": "boolean", "default": False},
    "unit": {"type": "string", "enum": ["in", "cm"], "default": "cm"},
    "when": {"type": "string"},
    "day": {"type": "string", "format": "date"},
    "email": {"type": "string"},
    "order_id": {"type": "string"},
    "city": {"type": "string"},
    "note": {"type": "string"},
    "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "stops": {"type": "array", "items": {"type": "string"}},
    "address": {
        "type": "object",
        "properties": {"street": {"type": "string"}, "zip": {"type": "string"}, "floor": {"type": "integer"}},
        "required": ["street"],
    },
    "priority": {"type": "integer", "default": 1},
}
TOOLS = [
    {
        "type": "function",
        "name": "ship",
        "description": "",
        "parameters": {"type": "object", "properties": PROPS, "required": ["amount"]},
    },
    {
        "type": "function",
        "name": "track",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    },
]


def schema_v(**rules):
    """The verifier as the registry builds it, from a VerifierConfig."""
    return get_verifier(VerifierConfig(name="tool_call_schema", schema=SchemaVerifierConfig(**rules)))


def row(args, name="ship", tools=TOOLS, acceptable=None):
    exp = {"type": "function_call", "name": name, "arguments": json.dumps(args)}
    if acceptable is not None:
        exp["acceptable_arguments"] = acceptable
    return {
        "id": "hand/schema",
        "responses_create_params": {
            "input": [{"role": "user", "content": "go"}],
            "tools": tools,
            "tool_choice": "auto",
        },
        "expected_action": exp,
        "metadata": {"trajectory_id": "hand/schema"},
    }


def call(name="ship", **args):
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def verdict(expected, predicted, v=None, name="ship", **kw):
    return (v or schema_v()).verify(row(expected, name=name, **kw), call(name, **predicted))


@pytest.mark.parametrize(
    "expected,equivalent,near_miss,rule,settings",
    [
        ({"amount": 200.0}, {"amount": 200}, {"amount": 201}, "number", {}),
        (
            {"amount": 2.5, "count": 3},
            {"amount": 2.5000000000000004, "count": 3},
            {"amount": 2.5, "count": 3.0},
            "integer",
            {},
        ),
        ({"amount": 1, "express": True}, {"express": True, "amount": 1}, {"amount": 1, "express": 1}, "boolean", {}),
        ({"amount": 1, "unit": "in"}, {"amount": 1.0, "unit": "in"}, {"amount": 1, "unit": "In"}, "enum", {}),
        (
            {"amount": 1, "when": "2023-09-12 08:00:00"},
            {"amount": 1, "when": "2023-09-12T08:00"},
            {"amount": 1, "when": "2023-09-12 09:00:00"},
            "datetime",
            {"recognise_datetimes": True},
        ),
        (
            {"amount": 1, "when": "2023-09-12 08:00:00"},
            {"amount": 1, "when": " 2023-09-12T08:00:00Z "},
            {"amount": 1, "when": "2023-09-13 08:00:00"},
            "datetime",
            {"string_normalisation": "trim", "recognise_datetimes": True},
        ),
        (
            {"amount": 1, "day": "2024-03-01"},
            {"amount": 1, "day": "2024-03-01"},
            {"amount": 1, "day": "2024-03-02"},
            "date",
            {"recognise_datetimes": True},
        ),
        (
            {"amount": 1, "when": "14:30"},
            {"amount": 1, "when": "14:30:00"},
            {"amount": 1, "when": "15:30"},
            "time",
            {"recognise_datetimes": True},
        ),
        (
            {"amount": 1, "email": "ann@corp.com"},
            {"amount": 1, "email": " ann@corp.com"},
            {"amount": 1, "email": "Ann@corp.com"},
            "email",
            {"string_normalisation": "trim"},
        ),
        (
            {"amount": 1, "order_id": "ORD-1234"},
            {"amount": 1, "order_id": "ORD-1234 "},
            {"amount": 1, "order_id": "ord-1234"},
            "identifier",
            {"string_normalisation": "case_space_punct"},
        ),
        (
            {"amount": 1, "city": "New York, NY"},
            {"amount": 1, "city": "new york ny"},
            {"amount": 1, "city": "New York, NJ"},
            "short_text",
            {"string_normalisation": "case_space_punct"},
        ),
        (
            {"amount": 1, "city": "Gluten Free"},
            {"amount": 1, "city": "gluten-free"},
            {"amount": 1, "city": "Dairy Free"},
            "short_text",
            {"string_normalisation": "case_space_punct"},
        ),
        (
            {"amount": 1, "city": "123 Elm Street"},
            {"amount": 1, "city": "123 elm street"},
            {"amount": 1, "city": "644 Spruce Street"},
            "short_text",
            {"string_normalisation": "case_space_punct"},
        ),
        (
            {"amount": 1, "note": "Please leave the parcel with the neighbour at number 12."},
            {"amount": 1, "note": "please leave the parcel with the neighbour at number 12"},
            {"amount": 1, "note": "Please leave the parcel with the neighbour at number 14."},
            "free_text",
            {"string_normalisation": "case_space_punct"},
        ),
        (
            {"amount": 1, "tags": ["a", "b"]},
            {"amount": 1, "tags": ["b", "a"]},
            {"amount": 1, "tags": ["a", "a"]},
            "set",
            {},
        ),
        (
            {"amount": 1, "stops": ["a", "b"]},
            {"amount": 1, "stops": ["A", "b"]},
            {"amount": 1, "stops": ["b", "a"]},
            "ordered_list",
            {"string_normalisation": "case_space_punct"},
        ),
        (
            {"amount": 1, "address": {"street": "Elm Street", "zip": "10001"}},
            {"amount": 1, "address": {"zip": "10001", "street": "elm street"}},
            {"amount": 1, "address": {"street": "Elm Street", "zip": "10002"}},
            "identifier",
            {"string_normalisation": "case_space_punct"},
        ),
        ({"amount": 1, "express": False}, {"amount": 1}, {"amount": 1, "express": True}, "optional_omitted", {}),
        ({"amount": 1}, {"amount": 1, "priority": 1}, {"amount": 1, "priority": 2}, "optional_added", {}),
    ],
)
def test_each_rule_passes_an_equivalent_call_and_fails_a_near_miss(expected, equivalent, near_miss, rule, settings):
    v = schema_v(**settings)
    good = verdict(expected, equivalent, v)
    assert good.passed, good
    assert rule in good.detail  # the detail names the rules that decided
    bad = verdict(expected, near_miss, v)
    assert not bad.passed and bad.category in (Category.WRONG_ARGS, Category.WRONG_ARG_TYPE, Category.WRONG_ARG_KEYS), (
        bad
    )


def test_required_and_undeclared_arguments():
    assert verdict({"amount": 1}, {}).category == Category.WRONG_ARG_KEYS  # required, omitted
    assert verdict({"amount": 1}, {"amount": 1, "verbose": True}).category == Category.WRONG_ARG_KEYS
    assert verdict({"amount": 1}, {"amount": 1, "verbose": True}, schema_v(undeclared_prediction="ignore")).passed
    # an executor-injected argument the schema does not declare is not compared
    injected = verdict({"amount": 1, "session_token": "abc"}, {"amount": 1})
    assert injected.passed and "undeclared_ignored" in injected.detail


def test_nested_undeclared_keys_are_compared_and_large_numbers_are_not_rounded():
    exp = {"amount": 1, "address": {"street": "Elm", "note": "ring twice"}}  # 'note' undeclared, nested
    assert verdict(exp, {"amount": 1, "address": {"street": "Elm", "note": "ring twice"}}).passed
    assert not verdict(exp, {"amount": 1, "address": {"street": "Elm", "note": "ring once"}}).passed
    assert not verdict(exp, {"amount": 1, "address": {"street": "Elm"}}).passed
    assert not verdict({"amount": 8990000000.0}, {"amount": 8990000000.5}).passed
    assert verdict({"amount": 0.3}, {"amount": 0.1 + 0.2}).passed


def test_acceptable_lists_are_exhaustive():
    r = row({"amount": 2.0}, acceptable={"amount": [2.0]})
    assert schema_v().verify(r, call(amount=2)).passed
    extra = schema_v().verify(r, call(amount=2, priority=1))  # the schema default, but not listed
    assert extra.category == Category.WRONG_ARG_KEYS and "acceptable" in extra.detail


def test_optional_rules_are_config_knobs():
    exp = {"amount": 1, "express": True}  # not the default
    assert not verdict(exp, {"amount": 1}).passed
    assert verdict(exp, {"amount": 1}, schema_v(optional_omitted="always")).passed
    assert verdict(exp, {"amount": 1}, schema_v(omittable_arguments=["ship.express"])).passed
    assert verdict(exp, {"amount": 1}, schema_v(omittable_arguments=["express"])).passed
    assert not verdict({"amount": 1, "express": False}, {"amount": 1}, schema_v(optional_omitted="never")).passed
    assert verdict({"amount": 1}, {"amount": 1, "priority": 7}, schema_v(optional_added="always")).passed
    assert not verdict({"amount": 1}, {"amount": 1, "priority": 1}, schema_v(optional_added="never")).passed


def test_default_strings_are_exact_as_execution_sees_them():
    assert not verdict({"amount": 1, "city": "Boston"}, {"amount": 1, "city": "boston"}).passed
    assert not verdict({"amount": 1, "city": "Boston"}, {"amount": 1, "city": "Boston "}).passed
    assert not verdict({"amount": 1, "when": "2023-09-12 08:00:00"}, {"amount": 1, "when": "2023-09-12T08:00"}).passed


def test_set_arguments_and_string_knobs():
    assert verdict(
        {"amount": 1, "stops": ["a", "b"]}, {"amount": 1, "stops": ["b", "a"]}, schema_v(set_arguments=["stops"])
    ).passed
    strict = schema_v(string_normalisation="trim")
    assert not verdict({"amount": 1, "city": "Boston"}, {"amount": 1, "city": "boston"}, strict).passed
    assert verdict({"amount": 1, "city": "Boston"}, {"amount": 1, "city": " Boston"}, strict).passed
    loose = schema_v(exact_identifiers=False, string_normalisation="case_space_punct")
    assert verdict({"amount": 1, "order_id": "ORD-1234"}, {"amount": 1, "order_id": "ord 1234"}, loose).passed
    dates = schema_v(recognise_datetimes=True)
    assert verdict({"amount": 1, "when": "2023-09-12 08:00"}, {"amount": 1, "when": "2023-09-12T08:00"}, dates).passed


def test_free_text_similarity_threshold_and_numbers():
    text = "please book a table for four people at the italian place near the office tonight"
    changed = "please book a table for four people at the french place near the office tonight"
    assert not verdict({"amount": 1, "note": text}, {"amount": 1, "note": changed}).passed  # default: equal
    lenient = schema_v(free_text_threshold=0.9)
    assert verdict({"amount": 1, "note": text}, {"amount": 1, "note": changed}, lenient).passed  # 14/15 words
    assert not verdict({"amount": 1, "note": text}, {"amount": 1, "note": "cancel everything"}, lenient).passed
    with_number = "transfer the money to account 12345 before the end of the day please"
    other = "transfer the money to account 12346 before the end of the day please"
    assert not verdict({"amount": 1, "note": with_number}, {"amount": 1, "note": other}, lenient).passed
    assert text_similarity("a b c d", "a b x d", "token_edit", 0.5) == pytest.approx(0.75)
    assert text_similarity("abcd", "abxd", "char_edit", 0.5) == pytest.approx(0.75)


def test_enum_knob_and_judge_presets():
    exp = {"amount": 1, "unit": "in"}
    assert not verdict(exp, {"amount": 1, "unit": "IN"}).passed
    assert verdict(
        exp, {"amount": 1, "unit": "IN"}, schema_v(exact_enums=False, string_normalisation="case_space")
    ).passed
    execution = load_config(["judge=execution", "verifier.name=tool_call_schema"]).verifier
    assert (
        not get_verifier(execution).verify(row({"amount": 1, "city": "Boston"}), call(amount=1, city=" Boston")).passed
    )
    ast_like = load_config(["judge=ast", "verifier.name=tool_call_schema"]).verifier
    v = get_verifier(ast_like)
    assert v.verify(row({"amount": 1, "order_id": "ORD-1234"}), call(amount=1, order_id="ord1234")).passed
    assert v.verify(row({"amount": 1, "unit": "in"}), call(amount=1, unit="In")).passed
    assert not v.verify(row({"amount": 1, "unit": "in"}), call(amount=1, unit="cm")).passed


def test_dotted_tool_names_in_python_syntax():
    tools = [
        {
            "type": "function",
            "name": "math.factorial",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        }
    ]
    r = row({"n": 5}, name="math.factorial", tools=tools)
    assert schema_v().verify(r, "math.factorial(n=5)").passed
    assert schema_v().verify(r, "factorial(n=5)").category == Category.UNKNOWN_TOOL


def test_recognition():
    cfg = SchemaVerifierConfig(recognise_datetimes=True)
    assert recognise("2023-09-12", None, cfg) == "date"
    assert recognise("2023-09-12 08:00:00", None, cfg) == "datetime"
    assert recognise("report_final.pdf", None, cfg) == "identifier"
    assert recognise("user@example.org", None, cfg) == "email"
    assert recognise("inches", None, cfg) == "short_text"
    assert recognise("one two three four five", None, cfg) == "free_text"
    assert recognise("anything", "date-time", cfg) == "datetime"


def test_bfcl_dialect_and_no_schema():
    tools = [
        {
            "type": "function",
            "name": "f",
            "parameters": {
                "type": "dict",
                "properties": {"x": {"type": "float"}, "t": {"type": "tuple", "items": {"type": "integer"}}},
                "required": ["x"],
            },
        }
    ]
    assert verdict({"x": 2.0, "t": [1, 2]}, {"x": 2, "t": [1, 2]}, name="f", tools=tools).passed
    assert not verdict({"x": 2.0, "t": [1, 2]}, {"x": 2, "t": [1, 2.5]}, name="f", tools=tools).passed
    chat_form = [{"type": "function", "function": {"name": "f", "parameters": tools[0]["parameters"]}}]
    assert not verdict({"x": 2.0}, {"x": 2, "y": 1}, name="f", tools=chat_form).passed  # the chat form's schema is read
    bare = [{"type": "function", "name": "g"}]  # no parameters schema: rules inferred from the expected values
    inferred = verdict({"n": 5, "s": "Hello World"}, {"n": 5.0, "s": "Hello World"}, name="g", tools=bare)
    assert inferred.passed and "inferred" in inferred.detail
    assert not verdict({"n": 5}, {"n": 5, "m": 1}, name="g", tools=bare).passed


def test_expected_value_that_breaks_its_schema_still_matches_itself():
    assert verdict({"amount": 1, "city": 7}, {"amount": 1, "city": 7}).passed
    assert not verdict({"amount": 1, "city": 7}, {"amount": 1, "city": 8}).passed


# ------------------------------------------------------------------ acceptable-value sets


ACCEPTABLE = {"amount": [200.0, 250.0], "unit": ["in", "cm", ""], "city": ["New York", "NYC"]}


@pytest.mark.parametrize("verifier", [ToolCallSchemaVerifier(), ToolCallArgsVerifier()], ids=["schema", "args"])
def test_acceptable_sets_in_both_argument_verifiers(verifier):
    exp = {"amount": 200.0, "unit": "in", "city": "New York"}
    r = row(exp, acceptable=ACCEPTABLE)
    assert not validate_pivot_row(r)
    assert verifier.verify(r, call(amount=250.0, unit="cm", city="NYC")).passed  # alternatives
    assert verifier.verify(r, call(amount=200.0, city="New York")).passed  # "" allows omitting unit
    assert not verifier.verify(r, call(amount=300.0, unit="in", city="New York")).passed
    miss = verifier.verify(r, call(amount=200.0, unit="in"))  # city has no "": omission fails
    assert miss.category == Category.WRONG_ARG_KEYS and "acceptable" in miss.detail
    assert not verifier.verify(r, call(amount=200.0, unit="in", city="Boston")).passed


def test_acceptable_sets_in_a_batch_and_malformed_sets():
    r = row({"order_id": "A1"}, name="track")
    r["expected_action"] = {
        "type": "function_call_batch",
        "calls": [
            {
                "name": "track",
                "arguments": json.dumps({"order_id": "A1"}),
                "acceptable_arguments": {"order_id": ["A1", "a1"]},
            },
            {"name": "ship", "arguments": json.dumps({"amount": 3})},
        ],
    }
    v = schema_v()
    both = (
        "<tool_call>"
        + json.dumps({"name": "ship", "arguments": {"amount": 3}})
        + "</tool_call>"
        + call("track", order_id="a1")
    )
    assert v.verify(r, both).passed
    bad = json.loads(json.dumps(r))
    bad["expected_action"]["calls"][0]["acceptable_arguments"] = {"order_id": []}
    assert any("acceptable_arguments.order_id" in field for field, _ in validate_pivot_row(bad))


# ------------------------------------------------------------------ hacking resistance


def test_padding_repetition_surplus_calls_and_huge_or_deep_arguments_earn_nothing():
    v = schema_v()
    exp = {"amount": 1, "note": "refund the customer for the broken blender"}
    padded = {"amount": 1, "note": "refund the customer for the broken blender " * 20}
    assert not verdict(exp, padded).passed
    assert not verdict({"amount": 1, "city": "Boston"}, {"amount": 1, "city": "Boston Boston Boston"}).passed
    r = row({"amount": 1})
    assert not v.verify(r, call(amount=1) + call(amount=1)).passed  # the call repeated
    assert v.verify(r, call(amount=1) + call("track", order_id="x")).category == Category.WRONG_CALL_COUNT
    assert v.verify(r, call(amount=1) + call("delete_all")).category == Category.UNKNOWN_TOOL
    started = time.perf_counter()
    huge = v.verify(row(exp), call(amount=1, note="refund " * 2500))
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    nested = v.verify(row({"amount": 1, "stops": ["a"]}), call(amount=1, stops=deep))
    assert not huge.passed and not nested.passed
    assert time.perf_counter() - started < 2.0  # bounded: no quadratic blow-up on untrusted text


def test_selected_by_config_and_default_for_jsonl():
    cfg = load_config(["verifier.name=tool_call_schema", "verifier.schema.free_text_threshold=0.9"])
    v = get_verifier(cfg.verifier)
    assert isinstance(v, ToolCallSchemaVerifier) and v.rules.free_text_threshold == 0.9
    assert DOMAINS.get("jsonl").default_verifier == "tool_call_schema"
    with pytest.raises(Exception, match="verifier.schema.string_normalisation"):
        load_config(["verifier.name=tool_call_schema", "verifier.schema.string_normalisation=loose"])


# ------------------------------------------------------------------ review findings (each was a hole)


def test_explicit_empty_string_passes_only_where_a_string_may_be_empty():
    tools = [
        {
            "type": "function",
            "name": "calc",
            "parameters": {
                "type": "object",
                "properties": {"n": {"type": "integer"}, "r": {"type": "number"}, "note": {"type": "string"}},
                "required": ["n"],
            },
        }
    ]
    r = row({"n": 5, "r": 2.0}, name="calc", tools=tools, acceptable={"n": [5], "r": [2.0, ""], "note": [""]})
    v = schema_v()
    assert not v.verify(r, call("calc", n=5, r="")).passed  # "" is not a number (BFCL: type error)
    assert v.verify(r, call("calc", n=5)).passed  # omitted: allowed by ""
    assert v.verify(r, call("calc", n=5, note="")).passed  # "" for a string listed as "" (as BFCL)


def test_integers_compare_exactly_and_huge_numbers_fail_cleanly():
    assert not verdict({"amount": 1700000000000}, {"amount": 1700000000001}).passed  # ms timestamps
    bare = [{"type": "function", "name": "g"}]
    assert not verdict({"id": 1234567890123456}, {"id": 1234567890123457}, name="g", tools=bare).passed
    huge = "<tool_call>" + '{"name": "ship", "arguments": {"amount": ' + "9" * 400 + "}}</tool_call>"
    got = schema_v().verify(row({"amount": 1.5}), huge)  # no OverflowError out of the verifier
    assert not got.passed


def test_undeclared_expected_knob_and_nested_set_arguments():
    exp = {"amount": 1, "session_token": "secret"}
    strict_schema = schema_v(undeclared_expected="compare")
    assert not verdict(exp, {"amount": 1, "session_token": "other"}, strict_schema).passed
    assert verdict(exp, {"amount": 1, "session_token": "secret"}, strict_schema).passed
    v = schema_v(set_arguments=["stops"])
    nested = {"amount": 1, "stops": [["1", "2"], ["3", "4"]]}
    assert verdict(nested, {"amount": 1, "stops": [["3", "4"], ["1", "2"]]}, v).passed
    assert not verdict(nested, {"amount": 1, "stops": [["4", "3"], ["2", "1"]]}, v).passed  # inner arrays ordered


def test_details_name_rules_of_batches_only_from_what_passed_and_stay_short():
    r = row({"order_id": "A1"}, name="track")
    r["expected_action"] = {
        "type": "function_call_batch",
        "calls": [
            {"name": "track", "arguments": json.dumps({"order_id": "A1"})},
            {"name": "ship", "arguments": json.dumps({"amount": 3})},
        ],
    }
    both = call("ship", amount=3) + call("track", order_id="A1")
    got = schema_v().verify(r, both)
    assert got.passed and "number" in got.detail and "identifier" in got.detail
    long_key = schema_v().verify(row({"amount": 1}), call(amount=1, **{"k" * 15000: 1}))
    assert not long_key.passed and len(long_key.detail) < 300


def test_set_pairing_and_free_text_stay_bounded_with_lenient_knobs():
    v = schema_v(set_arguments=["stops"], free_text_metric="char_edit", free_text_threshold=0.5)
    words = [" ".join(f"w{i}{j}" for j in range(12)) for i in range(64)]
    started = time.perf_counter()
    got = verdict({"amount": 1, "stops": words}, {"amount": 1, "stops": [w[::-1] for w in words]}, v)
    assert not got.passed and time.perf_counter() - started < 10.0
