"""SIGTERM handling for Slurm preemption and time limits.

``PreemptionGuard`` records a SIGTERM instead of dying; the training loop checks
``requested`` at each step boundary, saves a checkpoint and raises ``Preempted``. The CLI turns
that into exit code 143 (128 + SIGTERM) so the Slurm launcher knows to requeue.
"""

from __future__ import annotations

import signal
import types
from collections.abc import Callable
from typing import Any

from .logging import get_logger

log = get_logger(__name__)
PREEMPTED_EXIT_CODE = 143


class Preempted(RuntimeError):
    """Raised after a checkpoint was saved in response to SIGTERM."""


class PreemptionGuard:
    def __init__(self) -> None:
        self.requested = False
        self._old: Callable[[int, types.FrameType | None], Any] | int | None = None
        """The SIGTERM handler to restore (what ``signal.signal`` returned); None: not installed."""

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        if not self.requested:
            log.warning("received signal %d: will checkpoint at the end of this step and exit", signum)
        self.requested = True

    def __enter__(self) -> PreemptionGuard:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: leave the default behaviour
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
