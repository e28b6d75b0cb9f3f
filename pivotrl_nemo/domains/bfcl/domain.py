"""The ``bfcl`` domain: BFCL v4 multi-turn entries executed on their real backends.

Lifecycle (``domains.base``): the ``build`` stage constructs ``BfclDomain(cfg.data)`` and calls
``trajectories()`` once (``build.build_bfcl_trajectories`` over ``data.bfcl_categories``, capped
by ``data.max_trajectories``); pivot rows are then judged by the ``bfcl_state`` verifier. Whole
episodes (end-to-end RL, episode-level evaluation) run in a ``BfclEnvironment`` from
``environment()``.
"""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.config.schema import DataConfig
from pivotrl_nemo.domains.bfcl.build import CATEGORIES, build_bfcl_trajectories
from pivotrl_nemo.domains.bfcl.environment import BfclEnvironment, CheckMode


class BfclDomain:
    """BFCL v4 multi-turn trajectories (``data.source='bfcl'``)."""

    default_verifier = "bfcl_state"

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @staticmethod
    def config_problems(cfg: DataConfig) -> list[tuple[str, str]]:
        """Only the multi-turn categories this builder supports."""
        bad = [c for c in cfg.bfcl_categories if c not in CATEGORIES]
        if bad:
            return [
                ("data.bfcl_categories", f"unknown BFCL multi-turn categories {bad}; choose from {list(CATEGORIES)}")
            ]
        return []

    def trajectories(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The built trajectories; entries BFCL cannot give us are logged by the builder, not counted
        as invalid rows (``skipped_invalid`` is about malformed input rows, which BFCL has none of)."""
        return build_bfcl_trajectories(self.cfg.bfcl_categories, self.cfg.max_trajectories), {"skipped_invalid": 0}

    def environment(
        self, max_assistant_turns_per_user_turn: int = 8, check_mode: CheckMode = "state"
    ) -> BfclEnvironment:
        """A fresh environment; ``reset`` it with one of the trajectories."""
        return BfclEnvironment(
            max_assistant_turns_per_user_turn=max_assistant_turns_per_user_turn, check_mode=check_mode
        )
