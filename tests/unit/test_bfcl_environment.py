"""BFCL episodes on real backends (``BfclEnvironment``) and the ``bfcl`` / ``jsonl`` domains.

The episode check is compared, turn by turn, with bfcl-eval's own ``state_checker`` and
``response_checker`` called in-process on the environment's own backend instances and outputs
(no ``eval`` of anything).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pivotrl_nemo.config.schema import DataConfig
from pivotrl_nemo.data.actions import Action, ToolCall, make_call
from pivotrl_nemo.data.trajectory import load_trajectories
from pivotrl_nemo.domains.bfcl import backends
from pivotrl_nemo.domains.bfcl.build import build_bfcl_trajectories
from pivotrl_nemo.domains.bfcl.domain import BfclDomain
from pivotrl_nemo.domains.bfcl.environment import BfclEnvironment, split_user_turns
from pivotrl_nemo.domains.jsonl import JsonlDomain
from pivotrl_nemo.registry import DOMAINS

N_BASE = 8
BIG_CAP = 64  # replay tests: never cut a turn


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return build_bfcl_trajectories(["multi_turn_base"], N_BASE)


@pytest.fixture(scope="module")
def by_id(base) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in base}


@pytest.fixture(scope="module")
def bfcl_checker():
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker as mtc
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import is_empty_execute_response

    return mtc.state_checker, mtc.response_checker, is_empty_execute_response


# ------------------------------------------------------------------------------ helpers

Policy = list[list[Action]]  # per user turn: the actions before the closing message


def call(c: ToolCall) -> Action:
    return Action("function_call", (c,))


def expert_policy(episode: dict[str, Any]) -> Policy:
    _, turns = split_user_turns(episode)
    return [[call(c) for c in t.expected_calls] for t in turns]


def play(episode, policy: Policy, bfcl_checker, **env_kw) -> tuple[BfclEnvironment, list[bool], list[bool]]:
    """Play ``policy`` (each turn closed by a message); returns the env and BFCL's per-turn
    verdicts: its state check alone, and its full multi-turn check (empty-turn rule, state,
    responses), both computed by bfcl-eval on this environment's instances and outputs."""
    state_checker, response_checker, is_empty = bfcl_checker
    env = BfclEnvironment(**{"max_assistant_turns_per_user_turn": BIG_CAP, **env_kw})
    env.reset(episode)
    bfcl_state, bfcl_full = [], []
    model_outputs: list[str] = []
    for k, actions in enumerate(policy):
        steps: list[list[str]] = []
        for a in actions:
            r = env.step(a)
            assert not r.done and not r.info["turn_ended"]
            model_outputs += [m["content"] for m in r.observation]
            steps.append([c.name for c in a.calls])
        r = env.step(Action("message", content="Done."))
        assert r.info["turn_ended"] and r.done == (k == len(policy) - 1)
        expected = env.user_turns[k].expected_calls
        truth_outputs = [
            h.output for h in env.truth_backends.history[len(env.truth_backends.history) - len(expected) :]
        ]
        state_ok = state_checker(env.model_backends.instances, env.truth_backends.instances)["valid"]
        response_ok = response_checker(model_outputs, truth_outputs, k)["valid"]
        bfcl_state.append(state_ok)
        bfcl_full.append(not expected or (not is_empty(steps) and state_ok and response_ok))
    return env, bfcl_state, bfcl_full


def assert_agrees(episode, policy, bfcl_checker) -> list[bool]:
    """Our check equals BFCL's in both modes; returns the state-mode turns_passed."""
    env, bfcl_state, bfcl_full = play(episode, policy, bfcl_checker)
    env_b, _, _ = play(episode, policy, bfcl_checker, check_mode="bfcl")
    assert env.check().turns_passed == bfcl_state
    assert env_b.check().turns_passed == bfcl_full
    # BFCL's entry verdict stops at the first failing turn: valid iff every turn passes
    assert env_b.check().success == all(bfcl_full)
    return env.check().turns_passed


def public_fp(env: BfclEnvironment) -> dict[str, str]:
    return env.model_backends.class_fingerprints(public_only=True)


def state_changing(episode, k: int) -> list[int]:
    """Indices of turn k's expected calls that change the public state when replayed in order."""
    _, turns = split_user_turns(episode)
    env = backends.replay(episode["metadata"]["env"], [c for t in turns[:k] for c in t.expected_calls])
    out = []
    for j, c in enumerate(turns[k].expected_calls):
        before = env.class_fingerprints(public_only=True)
        env.execute(c)
        if env.class_fingerprints(public_only=True) != before:
            out.append(j)
    return out


def read_only(episode, k: int) -> list[int]:
    _, turns = split_user_turns(episode)
    changing = set(state_changing(episode, k))
    return [
        j for j in range(len(turns[k].expected_calls)) if j not in changing and turns[k].expected_calls[j].name != "cd"
    ]


def corrupt_args(c: ToolCall) -> ToolCall:
    args = dict(c.arguments or {})
    key = next(k for k, v in args.items() if isinstance(v, str))
    args[key] = args[key] + "_pivotrl"
    return make_call(c.name, args)


def has_string_arg(c: ToolCall) -> bool:
    return any(isinstance(v, str) for v in (c.arguments or {}).values())


# ------------------------------------------------------------------------------ expert replay


def test_expert_replay_passes_every_turn_and_agrees_with_bfcl(base, bfcl_checker):
    for episode in base:
        passed = assert_agrees(episode, expert_policy(episode), bfcl_checker)
        _, turns = split_user_turns(episode)
        assert len(passed) == len(turns) and all(passed), episode["id"]


def test_expert_replay_miss_param_turns_and_long_context(bfcl_checker):
    miss = build_bfcl_trajectories(["multi_turn_miss_param"], 2)
    entries = {
        json.loads(line)["id"]: json.loads(line)
        for line in open(backends.data_dir() / "BFCL_v4_multi_turn_miss_param.json")
    }
    for episode in miss:
        _, turns = split_user_turns(episode)
        # a turn without expected calls is two user messages in a row: never merged
        assert len(turns) == len(entries[episode["id"].removeprefix("bfcl/")]["question"])
        assert any(not t.expected_calls for t in turns)
        assert all(assert_agrees(episode, expert_policy(episode), bfcl_checker))
    (lc,) = build_bfcl_trajectories(["multi_turn_long_context"], 1)
    env = BfclEnvironment(max_assistant_turns_per_user_turn=BIG_CAP)
    env.reset(lc)
    for actions in expert_policy(lc):
        for a in actions:
            env.step(a)
        env.step(Action("message", content="ok"))
    assert env.done and env.check().success


def test_reset_returns_leading_system_and_first_user_turn(base):
    episode = dict(base[0])
    system = {"role": "system", "content": "You are a careful agent."}
    episode["messages"] = [system, *episode["messages"]]
    env = BfclEnvironment()
    first = env.reset(episode)
    assert first == [system, base[0]["messages"][0]] and first[1]["role"] == "user"
    assert env.reset(base[0]) == [base[0]["messages"][0]]
    assert env.check().turns_passed == [] and not env.check().success


# ------------------------------------------------------------------------------ corrupted episodes


def _last_turn_target(base, pick) -> list[tuple[dict, int, int]]:
    out = []
    for ep in base:
        k = len(split_user_turns(ep)[1]) - 1
        js = pick(ep, k)
        if js:
            out.append((ep, k, js[0]))
    assert out, "no episode among the first entries has a suitable call"
    return out


def test_wrong_argument_fails_exactly_that_turn(base, bfcl_checker):
    def pick(ep, k):
        calls = split_user_turns(ep)[1][k].expected_calls
        return [j for j in state_changing(ep, k) if has_string_arg(calls[j])]

    for ep, k, j in _last_turn_target(base, pick):
        policy = expert_policy(ep)
        policy[k][j] = call(corrupt_args(policy[k][j].calls[0]))
        passed = assert_agrees(ep, policy, bfcl_checker)
        assert passed == [True] * k + [False], ep["id"]


def test_first_turn_corruptions_agree_with_bfcl_on_every_later_turn(base, bfcl_checker):
    # A wrong first-turn state usually persists: whatever later turns do, each verdict is BFCL's.
    tried = 0
    for ep in base:
        changing = state_changing(ep, 0)
        if not changing:
            continue
        for mutate in ("skip", "wrong"):
            policy = expert_policy(ep)
            j = changing[0]
            if mutate == "skip":
                del policy[0][j]
            elif has_string_arg(policy[0][j].calls[0]):
                policy[0][j] = call(corrupt_args(policy[0][j].calls[0]))
            else:
                continue
            assert assert_agrees(ep, policy, bfcl_checker)[0] is False, ep["id"]
            tried += 1
    assert tried >= 2


def test_skipped_state_changing_call_fails_exactly_that_turn(base, bfcl_checker):
    for ep, k, j in _last_turn_target(base, state_changing):
        policy = expert_policy(ep)
        del policy[k][j]
        assert assert_agrees(ep, policy, bfcl_checker) == [True] * k + [False], ep["id"]


def test_skipped_read_only_call_fails_only_bfcl_response_check(base, bfcl_checker):
    # BFCL's state check cannot see a skipped read (ls, cat, grep, ...); its response check does.
    ep, k, j = _last_turn_target(base, read_only)[0]
    policy = expert_policy(ep)
    del policy[k][j]
    assert assert_agrees(ep, policy, bfcl_checker) == [True] * (k + 1)
    env_b, _, full = play(ep, policy, bfcl_checker, check_mode="bfcl")
    assert env_b.check().turns_passed == full == [True] * k + [False]
    assert env_b.check().details[k]["state_match"] and not env_b.check().details[k]["response_match"]


def test_extra_state_changing_call_fails_exactly_that_turn(base, bfcl_checker):
    tried = 0
    for ep in base:
        names = {t["function"]["name"] for t in ep["tools"]}
        n_turns = len(split_user_turns(ep)[1])
        if not {"mkdir", "rmdir"} <= names or n_turns < 3:
            continue
        policy = expert_policy(ep)
        # an extra directory in turn 1, removed again at the start of turn 2
        policy[1].append(call(make_call("mkdir", {"dir_name": "pivotrl_extra"})))
        policy[2].insert(0, call(make_call("rmdir", {"dir_name": "pivotrl_extra"})))
        expected = [True] * n_turns
        expected[1] = False
        assert assert_agrees(ep, policy, bfcl_checker) == expected, ep["id"]
        tried += 1
    assert tried


def test_bfcl_mode_fails_a_turn_without_calls(by_id, bfcl_checker):
    # multi_turn_base_1 turn 0 is ``ls(a=True)``: answering without calling keeps the state,
    # but BFCL's checker requires a call in every turn that has expected calls.
    ep = by_id["bfcl/multi_turn_base_1"]
    policy = expert_policy(ep)
    policy[0] = []
    assert assert_agrees(ep, policy, bfcl_checker)[0] is True
    env_b, _, full = play(ep, policy, bfcl_checker, check_mode="bfcl")
    assert full[0] is False and env_b.check().turns_passed[0] is False


def test_current_dir_is_compared_only_when_asked(by_id, bfcl_checker):
    # An extra ``cd`` changes only the private current directory: BFCL does not compare it.
    ep = by_id["bfcl/multi_turn_base_1"]
    policy = expert_policy(ep)
    policy[-1].append(call(make_call("cd", {"folder": ".."})))
    assert all(assert_agrees(ep, policy, bfcl_checker))
    strict, _, _ = play(ep, policy, bfcl_checker, compare_current_dir=True)
    assert strict.check().turns_passed[-1] is False


# ------------------------------------------------------------------------------ untrusted actions


def test_unknown_tools_and_backend_errors_are_tool_outputs(by_id):
    ep = by_id["bfcl/multi_turn_base_0"]  # offers no ``cp`` (excluded_function)
    env = BfclEnvironment()
    env.reset(ep)
    before = public_fp(env)
    batch = Action(
        "function_call_batch",
        (
            make_call("cp", {"source": "a", "destination": "b"}),  # a backend method, not offered
            make_call("launch_rockets", {}),
            make_call("mkdir", {"bogus_argument": "x"}),  # TypeError inside the backend
            make_call("ls", "{not json"),
        ),
    )
    r = env.step(batch)
    assert not r.done and not r.info["turn_ended"]
    assert [m["role"] for m in r.observation] == ["tool"] * 4
    assert all(m["content"].startswith("Error during execution") for m in r.observation)
    assert "not one of the available tools" in r.observation[0]["content"]
    assert "not one of the available tools" in r.observation[1]["content"]
    assert r.info["tool_errors"] == [True] * 4
    ids = [tc["id"] for tc in r.info["assistant_message"]["tool_calls"]]
    assert ids == [m["tool_call_id"] for m in r.observation] and len(set(ids)) == 4
    assert public_fp(env) == before
    ok = env.step(call(make_call("ls", {})))
    assert ok.info["tool_errors"] == [False] and ok.observation[0]["tool_call_id"] not in ids
    assert env.messages[-1] == ok.observation[0] and env.messages[-2] == ok.info["assistant_message"]


def test_turn_cap_ends_the_turn_as_if_answered(by_id):
    ep = by_id["bfcl/multi_turn_base_1"]  # turn 0 is ``ls(a=True)``
    _, turns = split_user_turns(ep)
    env = BfclEnvironment(max_assistant_turns_per_user_turn=2)
    env.reset(ep)
    ls = call(make_call("ls", {"a": True}))
    r1 = env.step(ls)
    assert not r1.info["turn_ended"] and "turn_capped" not in r1.info
    r2 = env.step(ls)
    assert r2.info["turn_capped"] and r2.info["turn_ended"] and r2.info["end_reason"] == "turn_cap"
    assert [m["role"] for m in r2.observation] == ["tool", "user"]
    assert r2.observation[1] == turns[1].messages[0] and not r2.done
    assert env.check().turns_passed == [True] and env.current_turn == 1
    assert env.check().details[0]["end_reason"] == "turn_cap"


def test_unparseable_fails_the_turn_and_the_episode_continues(by_id):
    ep = by_id["bfcl/multi_turn_base_1"]
    _, turns = split_user_turns(ep)
    env = BfclEnvironment()
    env.reset(ep)
    r = env.step(Action("unparseable", error="tool_call block is not a JSON call"))
    assert r.info["turn_ended"] and r.info["unparseable"] and not r.done
    assert r.info["state_match"]  # nothing changed, yet the turn counts as failed
    assert r.observation == list(turns[1].messages)
    assert env.check().turns_passed == [False]
    for actions in expert_policy(ep)[1:]:
        for a in actions:
            env.step(a)
        last = env.step(Action("message", content="ok"))
    assert last.done and env.check().turns_passed == [False] + [True] * (len(turns) - 1)
    assert env.check().fraction == pytest.approx((len(turns) - 1) / len(turns))
    with pytest.raises(RuntimeError):
        env.step(Action("message", content="again"))


def test_reset_validation(base):
    env = BfclEnvironment()
    with pytest.raises(RuntimeError):
        env.step(Action("message", content="hi"))
    with pytest.raises(ValueError):
        env.reset({"id": "x", "messages": base[0]["messages"], "metadata": {}})
    with pytest.raises(ValueError):
        BfclEnvironment(check_mode="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BfclEnvironment(max_assistant_turns_per_user_turn=0)


# ------------------------------------------------------------------------------ domains


def test_domains_resolve_and_bfcl_domain_matches_build():
    assert DOMAINS.get("bfcl") is BfclDomain and DOMAINS.get("jsonl") is JsonlDomain
    cfg = DataConfig(source="bfcl", bfcl_categories=["multi_turn_base"], max_trajectories=3)
    domain = BfclDomain(cfg)
    assert domain.default_verifier == "bfcl_state"
    assert domain.trajectories() == (build_bfcl_trajectories(["multi_turn_base"], 3), {"skipped_invalid": 0})
    assert isinstance(domain.environment(), BfclEnvironment)
    assert domain.environment() is not domain.environment()


def _jsonl_traj(tid: str) -> dict[str, Any]:
    tools = [
        {
            "type": "function",
            "function": {"name": "ls", "description": "List.", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    return {
        "id": tid,
        "domain": "generic",
        "tools": tools,
        "messages": [
            {"role": "user", "content": "List the files."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "ls", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c0", "content": "a.txt"},
            {"role": "assistant", "content": "There is a.txt."},
        ],
    }


def test_jsonl_domain_matches_load_trajectories(tmp_path):
    path = tmp_path / "trajs.jsonl"
    rows = [_jsonl_traj("t0"), {"id": "bad", "messages": []}, _jsonl_traj("t1"), _jsonl_traj("t2")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, report = load_trajectories(str(path), True)
    assert [t["id"] for t in loaded] == ["t0", "t1", "t2"] and report.skipped == 1

    capped = JsonlDomain(DataConfig(source="jsonl", path=str(path), skip_invalid=True, max_trajectories=2))
    assert capped.default_verifier == "tool_call_schema" and capped.environment() is None
    assert capped.trajectories() == (loaded[:2], {"skipped_invalid": 1})
    everything = JsonlDomain(DataConfig(source="jsonl", path=str(path), skip_invalid=True))
    assert everything.trajectories() == (loaded, {"skipped_invalid": 1})
    from pivotrl_nemo.utils.io import DataError

    with pytest.raises(DataError):
        JsonlDomain(DataConfig(source="jsonl", path=str(path))).trajectories()
