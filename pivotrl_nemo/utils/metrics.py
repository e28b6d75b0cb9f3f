"""Metric sinks: JSONL (always) and TensorBoard (when installed). One ``log(step, metrics)``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .io import atomic_write_text
from .logging import get_logger

log = get_logger(__name__)


class MetricsWriter:
    """Writes one JSON line per step (flushed, so a killed run keeps its history) and the same
    scalars to TensorBoard under ``<dir>/tensorboard/<name>``.

    A run that resumes from a checkpoint at step S calls ``resume(S)`` before logging: the steps
    after S that a killed run had logged are dropped from the JSONL (rewritten atomically) and
    TensorBoard's writer opens with ``purge_step=S+1``, so every step appears exactly once."""

    def __init__(self, directory: str | os.PathLike, name: str = "metrics", resume_step: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.path = self.dir / f"{name}.jsonl"
        self._purge_step: int | None = None
        self._tb: Any = None
        self._tb_tried = False
        if resume_step is not None:
            self._truncate(resume_step)
        self._f = open(self.path, "a", encoding="utf-8")

    def resume(self, step: int) -> None:
        """Continue after a checkpoint at ``step``: forget every logged step > ``step``."""
        self._f.close()
        if self._tb is not None:
            self._tb.close()
            self._tb, self._tb_tried = None, False
        self._truncate(step)
        self._f = open(self.path, "a", encoding="utf-8")

    def _truncate(self, step: int) -> None:
        self._purge_step = step + 1
        if not self.path.exists():
            return
        lines, kept = self.path.read_text(encoding="utf-8").splitlines(), []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the torn last line of a killed run
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line + "\n")
        if len(kept) == len(lines):
            return
        log.info("%s: dropping the rows after step %d (resuming from it)", self.path, step)
        # atomic (tmp + rename): a kill mid-rewrite leaves the old log, never a half one
        atomic_write_text(self.path, "".join(kept))

    def _tensorboard(self) -> Any:
        """The SummaryWriter, opened on first use (after ``resume`` knows its ``purge_step``)."""
        if not self._tb_tried:
            self._tb_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter  # lazy and tolerated absent: tensorboard is heavy

                self._tb = SummaryWriter(str(self.dir / "tensorboard" / self.name), purge_step=self._purge_step)
            except ImportError:  # tensorboard is a declared dependency; tolerate its absence
                log.warning("tensorboard not importable: metrics go to %s only", self.path)
        return self._tb

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if v is not None else None) for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, **clean}) + "\n")
        self._f.flush()
        tb = self._tensorboard()
        if tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    tb.add_scalar(k, v, step)

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
