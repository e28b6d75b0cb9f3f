"""The ``jsonl`` domain: expert trajectories from a validated OpenAI-chat JSONL file.

Lifecycle (``domains.base``): the ``build`` stage constructs ``JsonlDomain(cfg.data)`` and calls
``trajectories()`` once: ``data.path`` is read with ``data.trajectory.load_trajectories`` (stop at
the first malformed row, or skip and count them with ``data.skip_invalid``), then capped to
``data.max_trajectories`` when that is > 0. Pivot rows are judged by argument comparison
(``tool_call_schema``, under the tools' JSON schemas): a JSONL source comes with no backends, so it has no ``environment()``.
"""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.config.schema import DataConfig
from pivotrl_nemo.data.trajectory import load_trajectories
from pivotrl_nemo.domains.base import Environment


class JsonlDomain:
    """Trajectories from ``data.path`` (``data.source='jsonl'``)."""

    default_verifier = "tool_call_schema"

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @staticmethod
    def config_problems(cfg: DataConfig) -> list[tuple[str, str]]:
        """A JSONL source needs a file."""
        if not cfg.path:
            return [("data.path", "data.source=jsonl needs data.path=/path/to/trajectories.jsonl")]
        return []

    def trajectories(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The valid rows in file order (capped) and ``{"skipped_invalid": rows skipped}``."""
        if not self.cfg.path:
            raise ValueError("data.path: required when data.source == 'jsonl'")
        trajs, report = load_trajectories(self.cfg.path, self.cfg.skip_invalid)
        if self.cfg.max_trajectories > 0:
            trajs = trajs[: self.cfg.max_trajectories]
        return trajs, {"skipped_invalid": report.skipped}

    def environment(self) -> Environment | None:
        """None: a JSONL file records trajectories, not executable tools."""
        return None
