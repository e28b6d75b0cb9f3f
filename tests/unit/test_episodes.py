"""The end-to-end episode loop (``algorithms.episodes.play_episodes``) on BFCL's real backends:
a scripted policy's calls are executed, its turns are counted exactly, and the loop's episode
check equals BFCL's own checker (bfcl-eval's ``state_checker``, via the environment tests'
``play``) on ground-truth and corrupted episodes. Also: the e2e samples carry their episode's
group advantage on every turn."""

from __future__ import annotations

from typing import Any

import pytest
from test_bfcl_environment import call, corrupt_args, expert_policy, has_string_arg, play, state_changing

from pivotrl_nemo.algorithms.e2e import episode_samples
from pivotrl_nemo.algorithms.episodes import expert_actions_per_user_turn, play_episodes, prompt_row
from pivotrl_nemo.config.schema import AlgorithmConfig, DataConfig
from pivotrl_nemo.data.actions import Action, render_action
from pivotrl_nemo.data.tokenizer import load_tokenizer
from pivotrl_nemo.domains.bfcl.build import build_bfcl_trajectories
from pivotrl_nemo.domains.bfcl.environment import BfclEnvironment, split_user_turns
from pivotrl_nemo.rollout.base import Completion, SamplingParams
from pivotrl_nemo.rollout.chat import render_prompt_ids


@pytest.fixture(scope="module")
def episodes() -> list[dict[str, Any]]:
    return build_bfcl_trajectories(["multi_turn_base"], 6)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def bfcl_checker():
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker as mtc
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import is_empty_execute_response

    return mtc.state_checker, mtc.response_checker, is_empty_execute_response


class ScriptedEngine:
    """A policy that plays a fixed list of actions per random stream (episode copy), in order;
    it records every prompt so the test can check what the policy was shown."""

    def __init__(self, scripts: dict[int, list[Action]], tok) -> None:
        self.scripts, self.tok = {k: list(v) for k, v in scripts.items()}, tok
        self.prompts: dict[int, list[list[int]]] = {}

    def generate(self, prompts, n, sampling: SamplingParams):
        assert n == 1
        out = []
        for i, p in enumerate(prompts):
            key = sampling.stream_key(i)
            self.prompts.setdefault(key, []).append(p)
            text = render_action(self.scripts[key].pop(0))
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            out.append([Completion(text, ids, [0.0] * len(ids), "stop", p)])
        return out

    def sleep(self) -> None: ...


def _flat(policy: list[list[Action]]) -> list[Action]:
    return [a for turn in policy for a in turn]


def _play(episodes, scripts, tok, n=1):
    engine = ScriptedEngine(scripts, tok)
    cfg = DataConfig(max_prompt_tokens=4096, max_history_items=0)
    plays = play_episodes(
        engine,
        tok,
        cfg,
        lambda: BfclEnvironment(max_assistant_turns_per_user_turn=64),
        episodes,
        n,
        SamplingParams(seed=0),
    )
    return engine, plays


def test_expert_script_passes_every_turn_with_exact_turn_counts(episodes, tok, bfcl_checker):
    scripts = {i: _flat(expert_policy(ep)) for i, ep in enumerate(episodes)}
    engine, plays = _play(episodes, scripts, tok)
    for i, (ep, [p]) in enumerate(zip(episodes, plays)):
        _, bfcl_state, _ = play(ep, expert_policy(ep), bfcl_checker)
        assert p.check.turns_passed == bfcl_state and p.check.success, ep["id"]
        # one policy turn per expert assistant message, no more (the expert budget closes turns)
        assert len(p.turns) == sum(expert_actions_per_user_turn(ep)) == len(scripts[i])
        assert engine.scripts[i] == []
        assert p.reward("success") == 1.0 and p.reward("fraction") == 1.0


def test_corrupted_call_fails_its_turn_like_bfcl(episodes, tok, bfcl_checker):
    checked = 0
    for ep in episodes:
        policy = expert_policy(ep)
        for k, turn in enumerate(policy):
            j = next((j for j in state_changing(ep, k) if has_string_arg(turn[j].calls[0])), None)
            if j is None:
                continue
            bad = [list(t) for t in policy]
            bad[k][j] = call(corrupt_args(turn[j].calls[0]))
            _, [[p]] = _play([ep], {0: _flat(bad)}, tok)
            _, bfcl_state, _ = play(ep, bad, bfcl_checker)
            assert p.check.turns_passed == bfcl_state, (ep["id"], k)
            assert not p.check.success and p.reward("fraction") < 1.0
            checked += 1
            break
    assert checked >= 2


def test_the_policy_sees_its_own_calls_and_their_outputs(episodes, tok):
    ep = episodes[0]
    _, turns = split_user_turns(ep)
    script = _flat(expert_policy(ep))
    engine, [[p]] = _play([ep], {0: script}, tok)
    # the second prompt is the first plus the policy's call and the real backend's output
    first, second = engine.prompts[0][0], engine.prompts[0][1]
    assert len(second) > len(first)
    text = tok.decode(second)
    assert script[0].calls[0].name in text
    # prompts are rendered exactly like pivot rows built from the same messages
    row = prompt_row(ep, [m for m in ep["messages"][:1]], "x")
    assert render_prompt_ids(row, tok, DataConfig(max_prompt_tokens=4096, max_history_items=0)) == first


def test_unparseable_output_fails_the_turn_and_the_episode_goes_on(episodes, tok):
    ep = episodes[0]
    _, turns = split_user_turns(ep)
    policy = expert_policy(ep)
    script = [Action("message", content="<tool_call>{not json")] + _flat(policy[1:])
    _, [[p]] = _play([ep], {0: script}, tok)
    # "<tool_call>{not json" parses as unparseable: the first user turn fails, the rest are played
    assert len(p.check.turns_passed) == len(turns) and p.check.turns_passed[0] is False


def test_e2e_samples_carry_the_episode_advantage_on_every_turn(episodes, tok):
    ep = episodes[0]
    good = _flat(expert_policy(ep))
    bad = [Action("message", content="<tool_call>{")] * len(good)
    _, [[p_good, p_bad]] = _play([ep], {0: good, 1: bad}, tok, n=2)
    samples, rewards = episode_samples([[p_good, p_bad]], "fraction", AlgorithmConfig())
    assert rewards.tolist() == [[1.0, p_bad.check.fraction]]
    n_good = len(p_good.turns)
    assert len(samples) == n_good + len(p_bad.turns)
    assert {s.advantage for s in samples[:n_good]} == {samples[0].advantage} and samples[0].advantage > 0
    assert all(s.advantage < 0 for s in samples[n_good:])
