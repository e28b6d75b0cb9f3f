"""Metric sinks: JSONL (always) and TensorBoard (when installed). One ``log(step, metrics)``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .logging import get_logger

log = get_logger(__name__)


class MetricsWriter:
    """Writes one JSON line per step (flushed, so a killed run keeps its history) and the same
    scalars to TensorBoard under ``<dir>/tensorboard``."""

    def __init__(self, directory: str | os.PathLike, name: str = "metrics") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{name}.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # lazy and tolerated absent: tensorboard is heavy

            self._tb = SummaryWriter(str(self.dir / "tensorboard" / name))
        except ImportError:  # tensorboard is a declared dependency; tolerate its absence
            log.warning("tensorboard not importable: metrics go to %s only", self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if v is not None else None) for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, **clean}) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows by step; when a run resumed after a crash re-logged steps, the last row of a step wins."""
    p = Path(path)
    if not p.exists():
        return []
    by_step: dict[int, dict] = {}
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        by_step[int(row["step"])] = row
    return [by_step[k] for k in sorted(by_step)]
