"""Whole episodes played by a policy in a domain ``Environment`` (end-to-end RL, episode eval).

Every assistant turn is sampled from the rendered conversation so far, exactly as a pivot row's
prefix is rendered (``data.extract.message_to_items`` + ``rollout.chat.render_prompt_ids``), so
turn-level and episode-level numbers see the same prompts. All live episodes advance together:
one ``generate`` call per round, each episode copy on its own seeded random stream, so a run is
reproducible whatever the batch composition. Model output is untrusted: it is parsed with
``parse_completion`` (never evaluated) and an unparseable action fails its user turn; a backend
exception is a tool output (the environment's contract), never a crash.

``turn_limit='expert'`` ends a user turn once the policy has taken as many actions in it as the
expert did, if it has not answered by then: a policy trained only on call turns (BFCL's expert
trajectories never answer in text) would otherwise call until the environment's cap. The
closing message is the player's, not the policy's: it is neither trained on nor counted as a
rollout turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config.schema import DataConfig
from ..data.actions import Action, parse_completion
from ..data.extract import message_to_items, tools_to_responses
from ..domains.base import Environment, EpisodeCheck
from ..rollout.base import Completion, RolloutEngine, SamplingParams
from ..rollout.chat import render_prompt_ids

TurnLimit = Literal["expert", "environment"]
TURN_LIMITS: tuple[str, ...] = ("expert", "environment")


@dataclass
class EpisodeTurn:
    """One sampled assistant turn: what the policy saw and what it emitted."""

    prompt_ids: list[int]
    completion: Completion


@dataclass
class EpisodeRollout:
    """One played episode: its sampled turns (in order) and the domain's own check."""

    episode_id: str
    turns: list[EpisodeTurn] = field(default_factory=list)
    check: EpisodeCheck = field(default_factory=lambda: EpisodeCheck([]))

    def reward(self, kind: str) -> float:
        """'fraction' (user turns passed / user turns) or 'success' (1.0 when all passed)."""
        return float(self.check.success) if kind == "success" else self.check.fraction


def prompt_row(episode: dict[str, Any], messages: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """A pivot-row view of a conversation so far (the shape ``render_prompt_ids`` reads)."""
    items = [item for m in messages for item in message_to_items(m)]
    tools = tools_to_responses(episode.get("tools") or [])
    return {"id": key, "responses_create_params": {"input": items, "tools": tools, "tool_choice": "auto"}}


def expert_actions_per_user_turn(episode: dict[str, Any]) -> list[int]:
    """How many assistant messages the expert sent in each user turn (a user message starts one)."""
    counts: list[int] = []
    for m in episode.get("messages") or []:
        if m.get("role") == "user":
            counts.append(0)
        elif m.get("role") == "assistant" and counts:
            counts[-1] += 1
    return counts


@dataclass
class _Live:
    slot: int  # position in the flat list of episode copies (its random stream)
    episode: dict[str, Any]
    env: Environment
    messages: list[dict[str, Any]]
    rollout: EpisodeRollout
    budget: list[int]
    user_turn: int = 0
    actions_in_turn: int = 0
    done: bool = False


def play_episodes(
    engine: RolloutEngine,
    tokenizer: Any,
    data_cfg: DataConfig,
    make_env: Callable[[], Environment],
    episodes: list[dict[str, Any]],
    n: int,
    sampling: SamplingParams,
    turn_limit: str = "expert",
    max_rounds: int = 64,
) -> list[list[EpisodeRollout]]:
    """``n`` independent plays of each episode; result[i][j] is play j of episode i.

    ``sampling.seed`` seeds the call; play j of episode i samples on stream ``i * n + j`` (offset
    by ``sampling.stream_keys[0]`` when given), so plays do not depend on which others are live.
    ``max_rounds`` bounds the rounds (a guard; the environment's per-turn cap ends turns first).
    """
    if turn_limit not in TURN_LIMITS:
        raise ValueError(f"turn_limit must be one of {list(TURN_LIMITS)}, got {turn_limit!r}")
    base_key = int(sampling.stream_keys[0]) if sampling.stream_keys else 0
    live: list[_Live] = []
    for i, ep in enumerate(episodes):
        for j in range(n):
            env = make_env()
            first = env.reset(ep)
            live.append(
                _Live(
                    i * n + j, ep, env, list(first), EpisodeRollout(str(ep.get("id"))), expert_actions_per_user_turn(ep)
                )
            )
    for rnd in range(max_rounds):
        active = [x for x in live if not x.done]
        if not active:
            break
        prompts = [
            render_prompt_ids(
                prompt_row(x.episode, x.messages, f"{x.rollout.episode_id}@{len(x.messages)}"), tokenizer, data_cfg
            )
            for x in active
        ]
        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            seed=None if sampling.seed is None else sampling.seed + rnd * 7919,
            stream_keys=tuple(base_key + x.slot for x in active),
        )
        outs = engine.generate(prompts, 1, params)
        for x, prompt, comps in zip(active, prompts, outs):
            comp = comps[0]
            x.rollout.turns.append(EpisodeTurn(prompt, comp))
            _advance(x, parse_completion(comp.text), turn_limit)
    for x in live:
        x.rollout.check = x.env.check()
    return [[x.rollout for x in live[i * n : (i + 1) * n]] for i in range(len(episodes))]


def _advance(x: _Live, action: Action, turn_limit: str) -> None:
    """Step the environment with the policy's action; close the user turn at the expert's budget."""
    result = x.env.step(action)
    x.messages += [result.info.get("assistant_message", {"role": "assistant", "content": ""}), *result.observation]
    x.actions_in_turn += 1
    if not result.done and not result.info.get("turn_ended"):
        budget = x.budget[x.user_turn] if x.user_turn < len(x.budget) else 1
        if turn_limit == "expert" and x.actions_in_turn >= max(budget, 1):
            result = x.env.step(Action("message", content=""))  # the player's, not the policy's
            x.messages += result.observation
    if result.info.get("turn_ended") or result.done:
        x.user_turn += 1
        x.actions_in_turn = 0
    x.done = result.done
