"""The ``Domain`` and ``Environment`` contracts.

A **domain** is where expert trajectories come from (``docs/contracts.md``, trajectory format)
and how they are judged. Lifecycle: the ``build`` stage constructs the domain registered as
``data.source`` (``registry.DOMAINS``) from the ``DataConfig`` and calls ``trajectories()`` once;
later stages only read what ``build`` wrote. ``default_verifier`` is the verifier used when
``verifier.name`` is left empty. A domain that can execute whole episodes returns an
``Environment`` from ``environment()``; one-turn PivotRL never needs it, end-to-end RL and
episode-level evaluation do.

An **environment** plays one episode (a trajectory as ``build`` wrote it) on real backends.
Lifecycle: ``reset(episode)`` returns the first messages the policy sees (system with tools,
first user turn); then ``step(action)`` with each parsed assistant action until ``done``:
a tool call is executed and its output comes back as observation messages; a plain message
ends the current user turn and the next user turn is the observation (``done`` after the last).
``check()`` at any point gives the domain's own episode-level success signal so far.
Model output is untrusted: an environment executes only tools its episode offers, and a backend
exception becomes a tool output, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pivotrl_nemo.config.schema import DataConfig
from pivotrl_nemo.data.actions import Action


@dataclass
class StepResult:
    """What ``Environment.step`` returns."""

    observation: list[dict[str, Any]]
    """Chat messages to append after the action: tool outputs (role 'tool') or the next user turn."""
    done: bool
    """The episode is over: its last user turn ended (answered, cut by a turn cap, or failed)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Domain-specific facts for logging and the checker (e.g. which user turn ended)."""


@dataclass
class EpisodeCheck:
    """An episode's outcome by the domain's own checker."""

    turns_passed: list[bool]
    """Per user turn played so far: did the state after it match the ground truth's."""
    details: list[dict[str, Any]] = field(default_factory=list)
    """Optional per-turn facts behind ``turns_passed`` (domain-specific, for logs and analysis)."""

    @property
    def success(self) -> bool:
        """Every user turn passed."""
        return bool(self.turns_passed) and all(self.turns_passed)

    @property
    def fraction(self) -> float:
        """Fraction of user turns passed."""
        return sum(self.turns_passed) / len(self.turns_passed) if self.turns_passed else 0.0


class Environment(Protocol):
    """A multi-turn episode on real backends; see the module docstring for the lifecycle."""

    def reset(self, episode: dict[str, Any]) -> list[dict[str, Any]]:
        """Start ``episode``; returns the initial chat messages (system with tools, first user turn)."""
        ...

    def step(self, action: Action) -> StepResult:
        """Apply one parsed assistant action."""
        ...

    def check(self) -> EpisodeCheck:
        """The episode-level success signal for the user turns played so far."""
        ...


class Domain(Protocol):
    """A registered trajectory source (``registry.DOMAINS``); constructed with the ``DataConfig``."""

    default_verifier: str
    """The verifier (a ``registry.VERIFIERS`` name) used when ``verifier.name`` is ''."""

    def __init__(self, cfg: DataConfig) -> None: ...

    @staticmethod
    def config_problems(cfg: DataConfig) -> list[tuple[str, str]]:
        """``(config key, message)`` for each ``data.*`` value this domain cannot use (checked at
        start-up by ``config.validate``, before any stage runs)."""
        ...

    def trajectories(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The expert trajectories (``docs/contracts.md``) and a summary for the build marker."""
        ...

    def environment(self) -> Environment | None:
        """A fresh episode environment, or None when this domain cannot execute episodes."""
        ...
