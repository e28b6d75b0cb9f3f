"""Rank-aware logging: every module logs through ``get_logger(__name__)``.

Only rank 0 emits INFO and below; every rank emits WARNING and above, prefixed with its rank,
so a failure on rank 3 is never hidden. The rank is ``distributed.env.rank()`` (torchrun / Slurm
variables), read once at configuration time.
"""

from __future__ import annotations

import logging
import os
import sys

from pivotrl_nemo.distributed import env

_CONFIGURED = False


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.rank == 0 or record.levelno >= logging.WARNING


def configure_logging(level: str = "INFO", log_file: str | None = None) -> None:
    """Install the rank-aware handler on the package logger (idempotent)."""
    global _CONFIGURED
    root = logging.getLogger("pivotrl_nemo")
    root.setLevel(level)
    if _CONFIGURED and log_file is None:
        return
    rank = env.rank()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s r%(rank)d %(name)s] %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = []
    if not _CONFIGURED:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(_RankFilter(rank))
        root.addHandler(h)
    root.propagate = False
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    """A logger under the package namespace; configures a default handler on first use."""
    if not _CONFIGURED:
        configure_logging(os.environ.get("PIVOTRL_LOG_LEVEL", "INFO"))
    if not name.startswith("pivotrl_nemo"):
        name = f"pivotrl_nemo.{name}"
    return logging.getLogger(name)
