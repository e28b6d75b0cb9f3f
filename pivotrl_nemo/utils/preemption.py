"""SIGTERM (Slurm preemption, time limits) and SIGINT (Ctrl-C) handling for training.

``PreemptionGuard`` records the first SIGTERM or SIGINT instead of dying; the training loop
checks ``requested`` at each step boundary, saves a checkpoint and raises ``Preempted``, whose
``exit_code`` the CLI returns: 143 (128 + SIGTERM) so that the Slurm launcher requeues, 130
(128 + SIGINT) after a Ctrl-C. A first Ctrl-C restores the previous SIGINT handler, so a second
one aborts at once (``KeyboardInterrupt``) without waiting for the step to end. A signal that
was ignored when the guard was entered (``nohup``: SIGINT) stays ignored.
"""

from __future__ import annotations

import signal
import types
from collections.abc import Callable
from typing import Any

from .logging import get_logger

log = get_logger(__name__)
PREEMPTED_EXIT_CODE = 143
"""128 + SIGTERM: checkpointed after a preemption or time limit (the launcher requeues)."""
INTERRUPTED_EXIT_CODE = 130
"""128 + SIGINT: checkpointed after a Ctrl-C."""
EXIT_CODES: dict[int, int] = {signal.SIGTERM: PREEMPTED_EXIT_CODE, signal.SIGINT: INTERRUPTED_EXIT_CODE}

_Handler = Callable[[int, types.FrameType | None], Any] | int | None


class Preempted(RuntimeError):
    """Raised after a checkpoint was saved in response to SIGTERM or SIGINT; ``exit_code`` is
    what the process should exit with (143 or 130)."""

    def __init__(self, message: str, exit_code: int = PREEMPTED_EXIT_CODE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PreemptionGuard:
    """``with PreemptionGuard() as g:`` records SIGTERM / SIGINT in ``g.requested`` / ``g.signum``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        """The first signal received (None: none)."""
        self._old: dict[int, _Handler] = {}
        """The handlers to restore (what ``signal.signal`` returned), by signal, for those installed."""

    @property
    def exit_code(self) -> int:
        """The exit code for the signal received (143 when none, e.g. on a rank that got none)."""
        return EXIT_CODES.get(self.signum, PREEMPTED_EXIT_CODE) if self.signum else PREEMPTED_EXIT_CODE

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request"

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        first = not self.requested
        self.requested = True
        if first:
            self.signum = signum
        if signum == signal.SIGINT:
            # the next Ctrl-C goes to the previous handler: KeyboardInterrupt, at once
            signal.signal(signal.SIGINT, self._old.get(signal.SIGINT) or signal.default_int_handler)
        if first:
            log.warning(
                "received %s: will checkpoint at the end of this step and exit%s",
                signal.Signals(signum).name,
                " (Ctrl-C again to abort at once, without a checkpoint)" if signum == signal.SIGINT else "",
            )

    def __enter__(self) -> PreemptionGuard:
        for sig in self.SIGNALS:
            try:
                if signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave the default behaviour
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()
