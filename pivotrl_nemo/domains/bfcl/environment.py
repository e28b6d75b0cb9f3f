"""Whole BFCL v4 multi-turn episodes on the real backends (end-to-end RL, episode-level evaluation).

Lifecycle (``domains.base.Environment``)::

    env = BfclEnvironment()
    messages = env.reset(trajectory)        # leading system message(s) + the first user turn
    while True:
        action = parse_completion(model(messages))  # Action(kind='unparseable') when it is not
        result = env.step(action)
        messages += [result.info["assistant_message"], *result.observation]
        if result.done:
            break
    env.check()                             # EpisodeCheck(turns_passed=[...])

The episode is a trajectory as ``build`` wrote it: every user message starts a user turn (BFCL
turns hold exactly one user message; ``multi_turn_miss_param`` turns with no expected call are
two user messages in a row, so user messages are never merged); the ground truth of a turn is
the expert's tool calls between its user message and the next one.

``step`` semantics:

- a tool call or a batch is executed in order on the model's backends; only tools the episode's
  ``tools`` list offers run, so an unknown (or excluded) tool and a backend exception come back
  as tool output text (``Error during execution: ...``), never as an exception. The observation
  is one ``{"role": "tool", "tool_call_id", "content"}`` message per call; ids are ``call_<n>``,
  numbered over the episode, and ``info["assistant_message"]`` is the assistant message with the
  same ids for the caller's transcript.
- a plain message ends the user turn; the observation is the next user turn's messages, or
  ``done=True`` after the last.
- the ``max_assistant_turns_per_user_turn``-th action of a user turn that is still a tool call is
  executed and then ends the turn as if the model had answered (``info["turn_capped"]``); the
  observation is its tool messages followed by the next user turn.
- an ``unparseable`` action ends the user turn and fails it (``info["unparseable"]``); the
  episode continues with the next turn on the model's backends as they are.

The check, at the end of each user turn: the ground-truth calls of that turn run on a separate
ground-truth backend set that has already run every earlier turn's ground truth (so it is the
cumulative replay of all turns so far, as in BFCL), and the two states are compared per class
with ``backends.class_fingerprints``. By default (``compare_current_dir=False``) exactly the
attributes BFCL's own ``multi_turn_checker.state_checker`` compares are compared: every public
(non-``_``) attribute of each instance, with BFCL's own equality for file-system nodes (name and
content, not timestamps or parent links). ``compare_current_dir=True`` also compares the file
system's current directory, as the ``bfcl_state`` pivot verifier does.

``check_mode`` chooses what a turn's ``passed`` means:

- ``"state"`` (default): the state check above, for every turn (a turn without expected calls
  passes when the model left the state as the ground truth did).
- ``"bfcl"``: BFCL's ``multi_turn_checker`` verdict for the turn: a turn without expected calls
  is not checked (passes); otherwise the model must have made at least one call in the turn, the
  state check must pass, and every ground-truth output of the turn must occur among the model's
  outputs of all turns so far (as an unordered multiset; BFCL's ``response_checker``).
  ``check().success`` is then BFCL's entry-level ``valid``.

Both modes record every fact in ``check().details``. Deliberate differences from BFCL's
evaluation loop: tools the episode does not offer are refused here (BFCL's ``eval`` would run an
excluded method), an unparseable action fails its turn (BFCL would treat undecodable text as the
end of the turn), and the per-turn cap ends the turn (BFCL force-terminates the whole entry).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pivotrl_nemo.data.actions import Action, ToolCall, make_call
from pivotrl_nemo.domains.base import EpisodeCheck, StepResult
from pivotrl_nemo.domains.bfcl import backends
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)

CheckMode = Literal["state", "bfcl"]
CHECK_MODES: tuple[str, ...] = ("state", "bfcl")

# Messages before the first user message that the policy sees first (instructions, not turns).
_LEADING_ROLES = ("system", "developer")


@dataclass(frozen=True)
class UserTurn:
    """One user turn of an episode: what the policy is shown and the expert's calls for it."""

    messages: tuple[dict[str, Any], ...]
    """The user message (and any system/developer message right after it, before the expert acts)."""
    expected_calls: tuple[ToolCall, ...]
    """The ground-truth calls of the turn, in order (empty for a turn the expert does not act in)."""


@dataclass(frozen=True)
class TurnRecord:
    """The check of one finished user turn (``EpisodeCheck.details`` holds these as dicts)."""

    user_turn: int
    passed: bool
    """The turn's verdict under the environment's ``check_mode``."""
    end_reason: str
    """'answered' (a plain message), 'turn_cap' or 'unparseable'."""
    state_match: bool
    """The model's backend state equals the ground truth's after this turn."""
    differing_classes: tuple[str, ...]
    """Backend classes whose state differs (empty when ``state_match``)."""
    response_match: bool
    """Every ground-truth output of this turn occurs among the model's outputs so far (BFCL)."""
    missing_outputs: int
    """How many ground-truth outputs of this turn the model's outputs lack."""
    model_calls: int
    """Tool-call actions (single calls or batches) the model made in this turn."""
    expected_calls: int
    """Ground-truth calls of this turn."""


def split_user_turns(episode: dict[str, Any]) -> tuple[list[dict[str, Any]], list[UserTurn]]:
    """The leading system/developer messages and the user turns of a trajectory (module doc)."""
    messages = episode.get("messages")
    if not isinstance(messages, list):
        raise ValueError(f"episode {episode.get('id')!r}: 'messages' must be a list")
    leading: list[dict[str, Any]] = []
    i = 0
    while i < len(messages) and isinstance(messages[i], dict) and messages[i].get("role") in _LEADING_ROLES:
        leading.append(messages[i])
        i += 1
    turns: list[UserTurn] = []
    shown: list[dict[str, Any]] | None = None
    calls: list[ToolCall] = []
    expert_acted = False
    for m in messages[i:]:
        role = m.get("role") if isinstance(m, dict) else None
        if role == "user":
            if shown is not None:
                turns.append(UserTurn(tuple(shown), tuple(calls)))
            shown, calls, expert_acted = [m], [], False
        elif shown is None:
            raise ValueError(f"episode {episode.get('id')!r}: a {role!r} message before the first user message")
        elif role == "assistant":
            expert_acted = True
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function", tc) if isinstance(tc, dict) else {}
                calls.append(make_call(str(fn.get("name", "")), fn.get("arguments", "{}")))
        elif role in _LEADING_ROLES and not expert_acted:
            shown.append(m)
        # tool messages are the expert's observations: the environment produces its own
    if shown is not None:
        turns.append(UserTurn(tuple(shown), tuple(calls)))
    if not turns:
        raise ValueError(f"episode {episode.get('id')!r}: no user message")
    return leading, turns


def offered_tool_names(episode: dict[str, Any]) -> frozenset[str]:
    """Names in the episode's ``tools`` list (chat format ``{"function": {...}}`` or flat)."""
    names = set()
    for tool in episode.get("tools") or []:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return frozenset(names)


def missing_outputs(expected: list[str], produced: list[str]) -> list[str]:
    """Expected outputs not matched one-to-one by a produced output (BFCL's unordered subsequence)."""
    pool = list(produced)
    missing = []
    for item in expected:
        try:
            pool.remove(item)
        except ValueError:
            missing.append(item)
    return missing


class BfclEnvironment:
    """A BFCL episode on live backends; see the module docstring for the lifecycle and the check.

    One instance plays one episode at a time; ``reset`` starts a new one on fresh backends.
    """

    def __init__(
        self,
        max_assistant_turns_per_user_turn: int = 8,
        check_mode: CheckMode = "state",
        compare_current_dir: bool = False,
    ) -> None:
        if max_assistant_turns_per_user_turn < 1:
            raise ValueError("max_assistant_turns_per_user_turn must be >= 1")
        if check_mode not in CHECK_MODES:
            raise ValueError(f"check_mode must be one of {list(CHECK_MODES)}, got {check_mode!r}")
        self.max_assistant_turns_per_user_turn = int(max_assistant_turns_per_user_turn)
        self.check_mode: CheckMode = check_mode
        self.compare_current_dir = bool(compare_current_dir)
        self._episode_id: str | None = None
        self._turns: list[UserTurn] = []
        self._tools: frozenset[str] = frozenset()
        self._model: backends.BfclEnv | None = None
        self._truth: backends.BfclEnv | None = None
        self._records: list[TurnRecord] = []
        self._transcript: list[dict[str, Any]] = []
        self._model_outputs: list[str] = []  # every model call's output, all turns (BFCL's response check)
        self._turn = 0
        self._steps_in_turn = 0
        self._calls_in_turn = 0
        self._next_call_id = 0

    # ------------------------------------------------------------------------------ lifecycle

    def reset(self, episode: dict[str, Any]) -> list[dict[str, Any]]:
        """Start ``episode`` on fresh backends; returns the leading messages and the first user turn."""
        env_meta = (episode.get("metadata") or {}).get("env")
        if not isinstance(env_meta, dict) or not env_meta.get("involved_classes"):
            raise ValueError(f"episode {episode.get('id')!r} has no metadata.env with involved_classes")
        leading, turns = split_user_turns(episode)
        self._episode_id = episode.get("id")
        self._turns = turns
        self._tools = offered_tool_names(episode)
        # Two independent backend sets from the same initial config: the model's, and the
        # ground truth's, which only ever runs the expert calls (never the model's).
        self._model = backends.make_env(env_meta)
        self._truth = backends.make_env(env_meta)
        self._records = []
        self._model_outputs = []
        self._turn = 0
        self._steps_in_turn = 0
        self._calls_in_turn = 0
        self._next_call_id = 0
        initial = copy.deepcopy(leading + list(turns[0].messages))
        self._transcript = copy.deepcopy(initial)
        return initial

    def step(self, action: Action) -> StepResult:
        """Apply one parsed assistant action (module docstring); never raises on model output."""
        model = self._active()
        self._steps_in_turn += 1
        info: dict[str, Any] = {"user_turn": self._turn, "step_in_turn": self._steps_in_turn}
        if action.is_call and action.calls:
            calls = list(action.calls)
            ids = [self._new_call_id() for _ in calls]
            assistant = _assistant_call_message(calls, ids, action.content)
            observation = []
            errors = []
            for call, call_id in zip(calls, ids):
                result = self._execute(model, call)
                self._model_outputs.append(result.output)
                errors.append(result.raised)
                observation.append({"role": "tool", "tool_call_id": call_id, "content": result.output})
            self._calls_in_turn += 1
            info.update(assistant_message=assistant, tool_errors=errors, turn_ended=False)
            self._transcript.append(assistant)
            if self._steps_in_turn >= self.max_assistant_turns_per_user_turn:
                info["turn_capped"] = True
                return self._end_turn("turn_cap", observation, info)
            self._transcript.extend(copy.deepcopy(observation))
            return StepResult(observation, False, info)
        assistant = {"role": "assistant", "content": action.content}
        info["assistant_message"] = assistant
        self._transcript.append(assistant)
        if action.kind == "message":
            return self._end_turn("answered", [], info)
        # 'unparseable' (or a call action without calls): a failed step that ends the turn
        info["unparseable"] = action.error or "unparseable action"
        return self._end_turn("unparseable", [], info)

    def check(self) -> EpisodeCheck:
        """The verdicts of the user turns finished so far, with their ``TurnRecord`` facts."""
        return EpisodeCheck(
            turns_passed=[r.passed for r in self._records],
            details=[asdict(r) for r in self._records],
        )

    # ------------------------------------------------------------------------------ views

    @property
    def done(self) -> bool:
        """The last user turn has ended (or no episode was started)."""
        return self._turn >= len(self._turns)

    @property
    def user_turns(self) -> list[UserTurn]:
        """The current episode's user turns (with their ground-truth calls)."""
        return list(self._turns)

    @property
    def current_turn(self) -> int:
        """Index of the user turn being played (== number of turns when done)."""
        return self._turn

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation so far: initial messages, assistant messages and observations."""
        return copy.deepcopy(self._transcript)

    @property
    def model_backends(self) -> backends.BfclEnv:
        """The backends the model's calls run on (read them, do not call them)."""
        if self._model is None:
            raise RuntimeError("reset() an episode first")
        return self._model

    @property
    def truth_backends(self) -> backends.BfclEnv:
        """The ground-truth backends: every finished turn's expert calls replayed, nothing else."""
        if self._truth is None:
            raise RuntimeError("reset() an episode first")
        return self._truth

    # ------------------------------------------------------------------------------ internals

    def _active(self) -> backends.BfclEnv:
        if self._model is None:
            raise RuntimeError("reset() an episode before step()")
        if self.done:
            raise RuntimeError(f"episode {self._episode_id!r} is over; reset() the next one")
        return self._model

    def _new_call_id(self) -> str:
        call_id = f"call_{self._next_call_id}"
        self._next_call_id += 1
        return call_id

    def _execute(self, model: backends.BfclEnv, call: ToolCall) -> backends.ExecResult:
        # The episode's tool list is the contract: a backend method it does not offer (BFCL's
        # excluded_function) is as unknown as a made-up name.
        if call.name not in self._tools:
            return backends.ExecResult(
                f"Error during execution: {str(call.name)[:80]!r} is not one of the available tools", True
            )
        return model.execute(call)

    def _end_turn(self, reason: str, observation: list[dict[str, Any]], info: dict[str, Any]) -> StepResult:
        record = self._judge(reason)
        self._records.append(record)
        info.update(
            turn_ended=True,
            end_reason=reason,
            turn_passed=record.passed,
            state_match=record.state_match,
            differing_classes=list(record.differing_classes),
            response_match=record.response_match,
        )
        log.debug("episode %s turn %d ended (%s): passed=%s", self._episode_id, record.user_turn, reason, record.passed)
        self._turn += 1
        self._steps_in_turn = 0
        self._calls_in_turn = 0
        done = self.done
        if not done:
            observation = observation + copy.deepcopy(list(self._turns[self._turn].messages))
        self._transcript.extend(copy.deepcopy(observation))
        return StepResult(observation, done, info)

    def _judge(self, reason: str) -> TurnRecord:
        assert self._model is not None and self._truth is not None
        turn = self._turns[self._turn]
        # The ground-truth set has run turns 0..k-1 already; running turn k now makes it the
        # cumulative replay BFCL compares against after turn k.
        truth_outputs = [r.output for r in self._truth.execute_all(turn.expected_calls)]
        public_only = not self.compare_current_dir
        model_fp = self._model.class_fingerprints(public_only=public_only)
        truth_fp = self._truth.class_fingerprints(public_only=public_only)
        differing = tuple(c for c in truth_fp if model_fp.get(c) != truth_fp[c])
        missing = missing_outputs(truth_outputs, self._model_outputs)
        state_ok, response_ok = not differing, not missing
        if self.check_mode == "state":
            passed = state_ok
        else:  # BFCL's multi_turn_checker: turns without expected calls are not checked
            passed = not turn.expected_calls or (self._calls_in_turn > 0 and state_ok and response_ok)
        if reason == "unparseable":
            passed = False
        return TurnRecord(
            user_turn=self._turn,
            passed=passed,
            end_reason=reason,
            state_match=state_ok,
            differing_classes=differing,
            response_match=response_ok,
            missing_outputs=len(missing),
            model_calls=self._calls_in_turn,
            expected_calls=len(turn.expected_calls),
        )


def _assistant_call_message(calls: list[ToolCall], ids: list[str], content: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}
            for c, i in zip(calls, ids)
        ],
    }
