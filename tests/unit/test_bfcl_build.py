"""BFCL domain: trajectories equal BFCL's own execution, schema conversion, determinism, backends."""

import copy
import json
import time
import uuid

import pytest
from bfcl_rows import trajectory

from pivotrl_nemo.data.actions import make_call
from pivotrl_nemo.domains.bfcl import backends
from pivotrl_nemo.domains.bfcl.build import build_bfcl_trajectories, load_category, parse_ground_truth_call


@pytest.fixture(scope="module")
def base():
    return build_bfcl_trajectories(["multi_turn_base"])


def _tool_messages(traj):
    return [m["content"] for m in traj["messages"] if m["role"] == "tool"]


def _calls(traj):
    return [m["tool_calls"][0]["function"] for m in traj["messages"] if m["role"] == "assistant"]


def test_all_base_entries_build_with_every_ground_truth_call(base):
    entries, answers = load_category("multi_turn_base")
    assert len(base) == len(entries) == 200
    n_gt = sum(len(turn) for a in answers.values() for turn in a)
    n_calls = sum(len(_calls(t)) for t in base)
    assert n_calls == n_gt == 1142


def test_tool_outputs_and_state_equal_bfcl_own_executor(base):
    # BFCL's executor eval()s call strings: used here only on BFCL's own trusted ground truth.
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    entries, answers = load_category("multi_turn_base")
    by_id = {t["id"]: t for t in base}
    model = f"pivotrl_test_{uuid.uuid4().hex[:8]}"  # BFCL caches instances in globals by this name
    compared = 0
    for entry in entries:
        traj = by_id[f"bfcl/{entry['id']}"]
        gt = [s for turn in answers[entry["id"]] for s in turn]
        outputs, instances = execute_multi_turn_func_call(
            gt, entry["initial_config"], entry["involved_classes"], model, entry["id"]
        )
        assert _tool_messages(traj) == outputs, entry["id"]
        env = backends.replay(traj["metadata"]["env"], _calls(traj))
        assert env.snapshot() == backends.state_snapshot(instances), entry["id"]
        compared += len(outputs)
    assert compared == 1142


def test_positional_ground_truth_is_named_from_the_signature():
    owners = backends.make_env(
        {"initial_config": {}, "involved_classes": ["GorillaFileSystem", "MathAPI"]}
    ).method_owner
    call = parse_ground_truth_call("sort('final_report.pdf')", owners)
    assert (call.name, call.arguments) == ("sort", {"file_name": "final_report.pdf"})
    call = parse_ground_truth_call("mean([37])", owners)
    assert call.arguments == {"numbers": [37]}
    assert parse_ground_truth_call("sort('a', file_name='b')", owners) is None  # duplicate binding
    assert parse_ground_truth_call("nosuch('a')", owners) is None
    assert parse_ground_truth_call("sort(__import__('os'))", owners) is None  # not a literal


def test_trajectory_format_matches_contract():
    traj = trajectory("multi_turn_base_0")
    assert traj["id"] == "bfcl/multi_turn_base_0"
    assert traj["domain"] == "bfcl" and traj["source"] == "bfcl_v4/multi_turn_base"
    assert set(traj["metadata"]["env"]) == {"initial_config", "involved_classes"}
    names = [t["function"]["name"] for t in traj["tools"]]
    assert "cp" not in names and "mv" in names and "post_tweet" in names  # excluded_function honoured
    msgs = traj["messages"]
    assert msgs[0] == {"role": "user", "content": msgs[0]["content"]}
    n = 0
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            (tc,) = m["tool_calls"]
            assert m["content"] is None and tc["id"] == f"call_{n}" and tc["type"] == "function"
            assert isinstance(json.loads(tc["function"]["arguments"]), dict)
            assert msgs[i + 1] == {"role": "tool", "tool_call_id": f"call_{n}", "content": msgs[i + 1]["content"]}
            n += 1
    assert [c["name"] for c in _calls(traj)][:3] == ["cd", "mkdir", "mv"]
    assert _calls(traj)[5] == {"name": "sort", "arguments": '{"file_name": "final_report.pdf"}'}
    assert sum(m["role"] == "user" for m in msgs) == 4


def test_build_is_deterministic_and_fast(base):
    t0 = time.perf_counter()
    again = build_bfcl_trajectories(["multi_turn_base"])
    elapsed = time.perf_counter() - t0
    assert json.dumps(again, sort_keys=True) == json.dumps(base, sort_keys=True)
    assert elapsed < 10.0


def test_other_categories_do_not_crash():
    assert build_bfcl_trajectories(["multi_turn_miss_func"]) == []  # tools change mid-episode: skipped
    miss_param = build_bfcl_trajectories(["multi_turn_miss_param"], max_trajectories=3)
    assert len(miss_param) == 3 and all(t["source"] == "bfcl_v4/multi_turn_miss_param" for t in miss_param)
    long_ctx = build_bfcl_trajectories(["multi_turn_long_context"], max_trajectories=2)
    assert [t["metadata"]["env"]["long_context"] for t in long_ctx] == [True, True]
    capped = build_bfcl_trajectories(["multi_turn_base", "multi_turn_miss_param"], max_trajectories=4)
    assert [t["id"] for t in capped] == [f"bfcl/multi_turn_base_{i}" for i in range(4)]
    with pytest.raises(ValueError, match="choices"):
        build_bfcl_trajectories(["simple_python"])


# ------------------------------------------------------------------------------- schemas


def _walk_types(node, found):
    if isinstance(node, dict):
        if "type" in node:
            found.append(node["type"])
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                _walk_types(node[key], found)
        for sub in (node.get("properties") or {}).values():
            _walk_types(sub, found)


def test_all_tool_schemas_are_json_schema():
    found = []
    for cls in backends.CLASS_DOC_FILES:
        for tool in backends.tool_schemas([cls]):
            assert tool["type"] == "function" and set(tool["function"]) == {"name", "description", "parameters"}
            assert tool["function"]["parameters"]["type"] == "object"
            _walk_types(tool["function"]["parameters"], found)
    assert set(found) <= {"object", "string", "number", "integer", "boolean", "array", "null"}
    assert "number" in found and "array" in found


def test_schema_conversion_rules():
    src = {
        "type": "dict",
        "properties": {
            "type": {"type": "string", "default": "dict"},  # a property named "type" stays a property
            "pair": {"type": "tuple", "items": {"type": "float"}},
            "blob": {"type": "any", "description": "anything"},
            "nested": {"type": "dict", "properties": {"x": {"type": "integer"}}},
        },
        "required": ["pair"],
    }
    out = backends.convert_schema(src)
    assert out["type"] == "object" and out["required"] == ["pair"]
    assert out["properties"]["type"] == {"type": "string", "default": "dict"}
    assert out["properties"]["pair"] == {"type": "array", "items": {"type": "number"}}
    assert out["properties"]["blob"] == {"description": "anything"}
    assert out["properties"]["nested"]["type"] == "object"
    assert src["type"] == "dict"  # input untouched
    fuel = next(t for t in backends.tool_schemas(["VehicleControlAPI"]) if t["function"]["name"] == "fillFuelTank")
    assert fuel["function"]["parameters"]["properties"]["fuelAmount"]["type"] == "number"


# ------------------------------------------------------------------------------- backends


def _fs_env():
    traj = trajectory("multi_turn_base_0")
    return backends.make_env(traj["metadata"]["env"])


def test_fingerprint_is_deterministic_and_tracks_state():
    a, b = _fs_env(), _fs_env()
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    a.execute(make_call("ls", {}))
    assert a.fingerprint() == b.fingerprint()  # read-only call
    a.execute(make_call("cd", {"folder": "document"}))
    assert a.fingerprint() != b.fingerprint()  # the current directory is state
    b.execute(make_call("cd", {"folder": "document/"}))
    assert a.fingerprint() == b.fingerprint()  # same folder through an equivalent argument
    a.execute(make_call("mkdir", {"dir_name": "temp"}))
    assert a.class_fingerprints()["GorillaFileSystem"] != b.class_fingerprints()["GorillaFileSystem"]
    assert a.class_fingerprints()["TwitterAPI"] == b.class_fingerprints()["TwitterAPI"]
    json.dumps(a.snapshot())  # plain JSON: no Directory / File objects leak out


def test_copy_is_independent():
    env = _fs_env()
    env.execute(make_call("cd", {"folder": "document"}))
    before = env.fingerprint()
    twin = env.copy()
    assert twin.fingerprint() == before
    out = twin.execute(make_call("touch", {"file_name": "new.txt"}))
    assert not out.raised and twin.fingerprint() != before and env.fingerprint() == before
    assert twin.execute(make_call("ls", {})).output == json.dumps(
        {"current_directory_content": ["final_report.pdf", "previous_report.pdf", "new.txt"]}
    )


def test_canonical_state_numbers_sets_and_cycles():
    assert backends.canonical(5) == backends.canonical(5.0)
    assert json.dumps(backends.canonical(True)) != json.dumps(backends.canonical(1))
    assert backends.canonical({2, 1}) == backends.canonical({1, 2})
    assert backends.canonical(float("nan")) == "NaN"
    node = {"a": []}
    node["a"].append(node)
    json.dumps(backends.canonical(node))  # depth-bounded, never infinite
    assert backends.canonical_output('{"fuelLevel": 50}') == backends.canonical_output('{"fuelLevel": 50.0}')
    assert backends.canonical_output("None") == "None"


def test_executor_never_raises_and_only_calls_documented_methods():
    env = _fs_env()
    fp = env.fingerprint()
    for name in ("_load_scenario", "__init__", "__class__", "eval", "system", "_navigate_to_directory"):
        res = env.execute(make_call(name, {}))
        assert res.raised and "unknown function" in res.output
    assert env.execute(make_call("cd", "not json")).raised
    res = env.execute(make_call("cd", {"folder": 5}))  # backend raises AttributeError on int.rstrip
    assert res.raised and res.output.startswith("Error during execution")
    res = env.execute(make_call("cd", {"folder": "x", "self": 1}))
    assert res.raised
    res = env.execute(make_call("cd", {"folder": "x", "__class__": 1}))
    assert res.raised
    assert env.fingerprint() == fp


def test_executor_refuses_unbounded_arguments_and_keeps_precision_local():
    import mpmath

    env = backends.make_env({"initial_config": {}, "involved_classes": ["MathAPI"]})
    t0 = time.perf_counter()
    for args in ({"base": 10, "exponent": 10**9}, {"base": 2**100, "exponent": 2}):
        res = env.execute(make_call("power", args))
        assert res.raised and "refused" in res.output
    res = env.execute(make_call("logarithm", {"value": 8, "base": 2, "precision": 10**7}))
    assert res.raised and "refused" in res.output
    assert time.perf_counter() - t0 < 1.0
    dps = mpmath.mp.dps
    res = env.execute(make_call("logarithm", {"value": 8, "base": 2, "precision": 30}))
    assert not res.raised and "mpf('2.99999" in res.output and mpmath.mp.dps == dps
    assert env.execute(make_call("power", {"base": 2, "exponent": 10})).output == json.dumps({"result": 1024})


def test_replay_accepts_dicts_and_does_not_touch_initial_config():
    traj = trajectory("multi_turn_base_0")
    meta = traj["metadata"]["env"]
    frozen = copy.deepcopy(meta)
    env = backends.replay(meta, _calls(traj))
    assert meta == frozen
    assert [r.output for r in env.history] == _tool_messages(traj)
