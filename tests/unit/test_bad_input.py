"""Hostile input never crashes a stage: huge numbers and deep nesting in completions, bad bytes
and deep nesting in data files, unreadable paths and bad rows for ``pivotrl validate``."""

import json
import sys
import time

import pytest
from bfcl_rows import pivot_rows, trajectory

from pivotrl_nemo.algorithms.rollouts import TurnSampler
from pivotrl_nemo.config.schema import DataConfig, SamplingConfig, VerifierConfig
from pivotrl_nemo.data.actions import MAX_NESTING, MAX_NUMBER_DIGITS, parse_completion, parse_python_calls
from pivotrl_nemo.data.extract import extract_candidates
from pivotrl_nemo.data.pivots import validate_file, validate_pivot_row
from pivotrl_nemo.data.trajectory import load_trajectories
from pivotrl_nemo.domains.bfcl.verifier import BfclStateVerifier
from pivotrl_nemo.pipeline.commands import validate_main
from pivotrl_nemo.rollout.base import Completion
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.io import (
    MAX_JSON_DEPTH,
    DataError,
    atomic_write_jsonl,
    dumps_row,
    iter_jsonl,
    json_depth_exceeds,
)
from pivotrl_nemo.verifiers.base import Category
from pivotrl_nemo.verifiers.strict import StrictVerifier
from pivotrl_nemo.verifiers.tool_call_args import ToolCallArgsVerifier

BIG = "9" * 4400  # past Python's 4300-digit int conversion limit


def _long_int_forms(name: str = "f") -> list[str]:
    return [
        f'<tool_call>{{"name": "{name}", "arguments": {{"a": {BIG}}}}}</tool_call>',
        f'{{"name": "{name}", "arguments": {{"a": {BIG}}}}}',
        f'[{{"name": "{name}", "arguments": {{"a": -{BIG}}}}}]',
        f'{{"name": "{name}", "arguments": "{{\\"a\\": {BIG}}}"}}',  # arguments as a JSON string
        f"{name}(a={BIG})",  # Python call syntax
        f"[{name}(a=1.{BIG})]",
        f'<tool_call>{{"name": "{name}", "arguments": {{"a": 1.{"5" * (MAX_NUMBER_DIGITS + 1)}}}}}</tool_call>',
    ]


def _deep_forms() -> list[str]:
    d = 5000  # within the 20,000-character completion limit, past the recursion limit
    nest = "[" * d + "]" * d
    return [
        "[" * 100_000 + "]" * 100_000,
        nest,
        "{" * d,
        f'<tool_call>{{"name": "f", "arguments": {{"a": {nest}}}}}</tool_call>',
        f'{{"name": "f", "arguments": "{{\\"a\\": {nest}}}"}}',
        f"f(a={nest})",
        f'<tool_call>{{"name": "f", "arguments": {{"a": {"[" * (MAX_NESTING + 1)}{"]" * (MAX_NESTING + 1)}}}}}</tool_call>',
    ]


# ---------------------------------------------------------------------------------- the action codec


@pytest.mark.parametrize("max_digits", [None, 0])  # independent of sys.set_int_max_str_digits
def test_long_integer_completion_is_unparseable(max_digits):
    old = sys.get_int_max_str_digits()
    if max_digits is not None:
        sys.set_int_max_str_digits(max_digits)
    try:
        for text in _long_int_forms():
            action = parse_completion(text)
            assert action.kind == "unparseable", text[:60]
            assert f"longer than {MAX_NUMBER_DIGITS} digits" in action.error
        assert parse_python_calls(f"f(a={BIG})") is None
    finally:
        sys.set_int_max_str_digits(old)
    # numbers within the limit, and long digit strings, still parse
    ok = parse_completion(
        f'<tool_call>{{"name": "f", "arguments": {{"a": {"9" * MAX_NUMBER_DIGITS}, "b": "{BIG}"}}}}</tool_call>'
    )
    assert ok.kind == "function_call" and ok.calls[0].arguments["b"] == BIG  # type: ignore[index]
    assert parse_completion(f"f(a={'9' * 50}, b='{BIG}')").kind == "function_call"


def test_deep_nesting_completion_is_unparseable():
    for text in _deep_forms():
        action = parse_completion(text)  # never RecursionError
        assert action.kind == "unparseable", text[:60]
    shallow = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert parse_completion(f'<tool_call>{{"name": "f", "arguments": {{"a": {shallow[2:-2]}}}}}</tool_call>').is_call
    # brackets inside strings are not nesting
    text = '<tool_call>{"name": "f", "arguments": {"a": "' + "[" * 5000 + '"}}</tool_call>'
    assert parse_completion(text).kind == "function_call"


def _bfcl_row():
    return pivot_rows(trajectory("multi_turn_base_0"))[0]


@pytest.mark.parametrize(
    "verifier",
    [StrictVerifier(), ToolCallArgsVerifier(), BfclStateVerifier(VerifierConfig(name="bfcl_state"))],
    ids=["strict", "tool_call_args", "bfcl_state"],
)
def test_verifiers_score_long_integers_and_deep_nesting_unparseable(verifier):
    row = _bfcl_row()
    name = row["expected_action"]["name"]
    for text in _long_int_forms(name) + _deep_forms():
        verdict = verifier.verify(row, text)
        assert verdict.category == Category.UNPARSEABLE and verdict.reward == 0.0, text[:60]


class _FakeEngine:
    """A RolloutEngine that returns fixed completions."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, n, sampling):
        return [[Completion(t, [1, 2], [-0.1, -0.1], "stop", list(p)) for t in self.texts[:n]] for p in prompts]

    def update_weights(self, named_tensors):
        pass


def test_turn_sampler_scores_long_integer_completion():
    row = _bfcl_row()
    name = row["expected_action"]["name"]
    good = f'<tool_call>{{"name": "{name}", "arguments": {row["expected_action"]["arguments"]}}}</tool_call>'
    texts = [_long_int_forms(name)[0], good, _deep_forms()[3]]
    sampler = TurnSampler(_FakeEngine(texts), None, DataConfig(), BfclStateVerifier(VerifierConfig(name="bfcl_state")))
    sampler._prompt_cache[row["id"]] = [5, 6, 7]  # no tokenizer: the sampler and verifier are under test
    (group,) = sampler.sample_and_score([row], 3, SamplingConfig(), seed=0)
    assert [v.category for v in group.verdicts] == [Category.UNPARSEABLE, Category.CORRECT, Category.UNPARSEABLE]
    assert group.rewards == [0.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------- data files


def _traj(tid):
    return {
        "id": tid,
        "tools": [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "list"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "ls", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c0", "content": "a"},
            {"role": "assistant", "content": "done"},
        ],
    }


def _hostile_file(tmp_path):
    """Line 1 valid, 2 invalid UTF-8, 3 nested 100k deep, 4 deep arguments string, 5 long int, 6 valid."""
    deep_args = _traj("d")
    deep_args["messages"][1]["tool_calls"][0]["function"]["arguments"] = "[" * 100_000 + "]" * 100_000
    lines = [
        dumps_row(_traj("a")).encode(),
        b'{"id": "b", "x": "caf\xe9"}',
        b"[" * 100_000 + b"]" * 100_000,
        dumps_row(deep_args).encode(),
        b'{"id": ' + BIG.encode() + b"}",
        dumps_row(_traj("e")).encode(),
    ]
    p = tmp_path / "traj.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_trajectory_file_with_bad_bytes_and_deep_nesting(tmp_path):
    p = _hostile_file(tmp_path)
    with pytest.raises(DataError) as e:
        load_trajectories(str(p))
    assert str(e.value) == f"{p}:2: invalid UTF-8 (byte offset 21)"
    assert isinstance(e.value, UserError)
    trajs, rep = load_trajectories(str(p), skip_invalid=True)
    assert [t["id"] for t in trajs] == ["a", "e"] and rep.skipped == 4
    text = "\n".join(rep.problems)
    assert f"{p}:3: nested deeper than {MAX_JSON_DEPTH}" in text
    assert f"{p}:4: messages[1].tool_calls[0].function.arguments: must be a JSON object" in text
    assert f"{p}:5: <row>: not valid JSON" in text
    vrep = validate_file(str(p))  # pivotrl validate: every problem, no traceback
    assert vrep.format == "trajectory" and vrep.rows == 6 and vrep.invalid == 4
    assert f"{p}:2: invalid UTF-8 (byte offset 21)" in vrep.problems


def test_depth_scan_is_linear_on_hostile_quotes(tmp_path):
    # many escaped quotes after an open string once made the string-skipping regex quadratic
    # (3 s for one 20,000-character completion, hours for a long JSONL line)
    hostile = "[" * 300 + '"' + '\\"' * 200_000
    start = time.perf_counter()
    assert json_depth_exceeds(hostile, MAX_JSON_DEPTH)
    assert json_depth_exceeds("[" * 300 + "'" + "\\'" * 200_000, MAX_NESTING, quotes="\"'")
    unterminated = '"' + '\\"' * 200_000 + "[" * 300  # every bracket inside the (open) string
    assert not json_depth_exceeds(unterminated, MAX_JSON_DEPTH)
    assert not json_depth_exceeds(unterminated.replace('"', "'"), MAX_NESTING, quotes="\"'")
    p = tmp_path / "hostile.jsonl"
    p.write_text(hostile + "\n" + unterminated + "\n")
    ((_, deep), (_, bad)) = list(iter_jsonl(p, yield_errors=True))
    assert str(deep) == f"{p}:1: nested deeper than {MAX_JSON_DEPTH}"
    assert str(bad).startswith(f"{p}:2: <row>: not valid JSON (")
    assert parse_completion("[" * 300 + '"' + '\\"' * 9_000).kind == "unparseable"
    assert parse_completion("f(a='" + "\\'" * 9_000 + "[" * 300 + ")").kind == "message"
    assert time.perf_counter() - start < 5.0
    # escapes are honoured: a string ending in an escaped backslash closes
    assert json_depth_exceeds('["\\\\"' + "[" * 300, 200)
    assert not json_depth_exceeds('["' + "[" * 300 + '"]', 200)


def test_row_arguments_with_long_numbers_are_refused(tmp_path):
    """Rows are held to the codec's limit, so no verifier meets an expected call it cannot read."""
    long_args = json.dumps({"folder": 1}).replace("1", "9" * (MAX_NUMBER_DIGITS + 1))  # < 4300 digits
    traj = _traj("a")
    traj["messages"][1]["tool_calls"][0]["function"]["arguments"] = long_args
    p = tmp_path / "traj.jsonl"
    atomic_write_jsonl(p, [traj])
    with pytest.raises(DataError) as e:
        load_trajectories(str(p))
    assert str(e.value) == (
        f"{p}:1: messages[1].tool_calls[0].function.arguments: must be a JSON object (string-encoded) "
        f"(number longer than {MAX_NUMBER_DIGITS} digits)"
    )
    row = _bfcl_row()
    row["expected_action"]["arguments"] = long_args
    assert validate_pivot_row(row) == [
        (
            "expected_action.arguments",
            f"must be a JSON object encoded as a string (number longer than {MAX_NUMBER_DIGITS} digits)",
        )
    ]
    # a row that skipped validation is a data error (ValueError), not a TypeError out of verify
    for verifier in (StrictVerifier(), ToolCallArgsVerifier()):
        with pytest.raises(ValueError, match="expected arguments of cd are not a JSON object"):
            verifier.verify(row, "cd(folder='x')")


def test_file_without_trajectories_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no trajectories$"):
        load_trajectories(str(empty), skip_invalid=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\n")
    with pytest.raises(DataError, match=r"bad.jsonl: no trajectories \(1 invalid rows skipped"):
        load_trajectories(str(bad), skip_invalid=True)


# ---------------------------------------------------------------------------------- pivotrl validate


def test_validate_missing_file_and_directory(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert validate_main([str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such file\n"
    assert validate_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: is a directory\n"


def test_validate_detects_trajectory_format(tmp_path, capsys):
    p = tmp_path / "traj.jsonl"
    atomic_write_jsonl(p, [_traj("a"), _traj("b")])
    assert validate_main([str(p)]) == 0
    out = capsys.readouterr().out
    assert "responses_create_params" not in out
    assert out.startswith(f"{p}: trajectory file, 2 rows, 0 invalid;")
    q = tmp_path / "pivots.jsonl"
    atomic_write_jsonl(q, extract_candidates(_traj("a"), "rl", "tool_call_args"))
    assert validate_main([str(q)]) == 0
    assert capsys.readouterr().out.startswith(f"{q}: pivot file, 2 rows, 0 invalid;")


def test_validate_reports_duplicate_ids_and_nonfinite_numbers(tmp_path):
    rows = extract_candidates(_traj("a"), "rl", "tool_call_args")
    prof = json.loads(json.dumps(rows[0]))
    prof["id"] = "p"
    prof["profile"] = {"k": 4, "rewards": [1.0, 0.0, 1.0, float("nan")], "mean": float("inf"), "variance": 0.25}
    prof["pass_rate"] = float("-inf")
    p = tmp_path / "pivots.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], rows[1], rows[0], prof]))  # NaN / Infinity
    rep = validate_file(str(p))
    assert rep.format == "pivot" and rep.rows == 4 and rep.invalid == 2
    assert rep.problems == [
        f"{p}:3: id: duplicate of line 1",
        f"{p}:4: profile.rewards[3]: not a finite number",
        f"{p}:4: profile.mean: not a finite number",
        f"{p}:4: pass_rate: not a finite number",
    ]
