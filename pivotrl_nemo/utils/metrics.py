"""Metric sinks: JSONL (always), TensorBoard (when installed) and W&B (``logging.wandb.enabled``).
One ``log(step, metrics)``."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from .errors import UserError
from .io import atomic_write_text
from .logging import get_logger


class WandbConfig(Protocol):
    """What the W&B sink reads of ``config.schema.WandbConfig`` (``logging.wandb.*``; utils sits
    below config, so it names the fields, not the class)."""

    enabled: bool
    project: str
    entity: str
    name: str
    group: str
    tags: list[str]
    mode: str
    dir: str


log = get_logger(__name__)

WANDB_MISSING = (
    "W&B logging is on but the wandb package is not importable: `pip install wandb`, or set logging.wandb.enabled=false"
)
"""The error when ``logging.wandb.enabled`` is set without wandb (config validation and ``MetricsWriter``)."""


class MetricsWriter:
    """Writes one JSON line per step (flushed, so a killed run keeps its history) and the same
    scalars to TensorBoard under ``<dir>/tensorboard/<name>``.

    A run that resumes from a checkpoint at step S calls ``resume(S)`` before logging: the steps
    after S that a killed run had logged are dropped from the JSONL (rewritten atomically) and
    TensorBoard's writer opens with ``purge_step=S+1``, so every step appears exactly once.

    With ``wandb`` enabled (``logging.wandb``; ``run_config``, the resolved configuration, is
    recorded as the run's config) the same scalars go to one W&B run, opened on the first ``log``
    (``import wandb`` then; a missing package is a ``UserError`` here, at construction). Its id,
    ``<hash of directory and name>-<random suffix>``, and the last step it received are kept in
    ``<dir>/<name>.wandb.json``, so a resumed writer continues the same run
    (``resume="allow"``; in offline mode each process writes one more ``offline-run-*`` directory
    with that id, which ``wandb sync`` uploads as one run, in order). W&B's steps must increase
    and, offline, it cannot drop rows already written (``resume_from`` rewinding is an online,
    server-side beta in wandb 0.31), so after ``resume(S)`` the steps up to the last one W&B
    received are not sent again: W&B keeps the killed run's rows for S+1..that step (JSONL and
    TensorBoard have the replayed ones) and gets every later step once. A writer that was told of
    no resume and whose first step is not after that last step is a re-run from the start: it opens
    a new W&B run. A stage whose state directory is discarded (another configuration) loses the
    file and starts a new run too."""

    def __init__(
        self,
        directory: str | os.PathLike,
        name: str = "metrics",
        resume_step: int | None = None,
        *,
        wandb: WandbConfig | None = None,
        run_config: Any = None,
    ) -> None:
        self._wandb_cfg = wandb if wandb is not None and wandb.enabled else None
        if self._wandb_cfg is not None and importlib.util.find_spec("wandb") is None:
            raise UserError(WANDB_MISSING)
        self._run_config = run_config
        self._wb: Any = None  # the wandb Run, opened on the first log
        self._wb_id = ""
        self._wb_last: int | None = None  # the last step the W&B run received
        self._wb_resumed = resume_step is not None
        self._wb_skip_noted = False
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
        """Continue after a checkpoint at ``step``: forget every logged step > ``step`` (W&B: see
        the class docstring)."""
        self._wb_resumed = True
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

    @property
    def wandb_state_path(self) -> Path:
        """The W&B run id and the last step it received (see the class docstring)."""
        return self.dir / f"{self.name}.wandb.json"

    def _wandb_run(self, first_step: int) -> Any:
        """The W&B run (None when disabled), opened on first use: after ``resume`` is known."""
        if self._wb is None and self._wandb_cfg is not None:
            self._wb = self._open_wandb(self._wandb_cfg, first_step)
        return self._wb

    def _open_wandb(self, w: WandbConfig, first_step: int) -> Any:
        try:
            import wandb  # lazy: optional, and about half a second to import
        except ImportError as e:
            raise UserError(f"{WANDB_MISSING} ({e})") from None
        state: dict[str, Any] = {}
        try:
            state = json.loads(self.wandb_state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            pass
        last = state.get("last_step")
        if state.get("id") and (self._wb_resumed or last is None or first_step > last):
            run_id, self._wb_last = str(state["id"]), last
        else:
            if state.get("id"):
                log.info(
                    "%s: steps restart at %d (W&B run %s has %s): a new W&B run",
                    self.dir,
                    first_step,
                    state["id"],
                    last,
                )
            key = f"{self.dir.resolve()}\0{self.name}"
            run_id, self._wb_last = f"{hashlib.sha256(key.encode()).hexdigest()[:12]}-{secrets.token_hex(4)}", None
        self._wb_id = run_id
        self._save_wandb_state()
        cfg = self._run_config
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            config: dict[str, Any] = dataclasses.asdict(cfg)
        else:
            config = dict(cfg or {})
        experiment, run_dir = str(config.get("experiment") or ""), config.get("run_dir")
        label = self.dir.name
        if run_dir:
            try:
                label = self.dir.resolve().relative_to(Path(run_dir).resolve()).as_posix() or label
            except ValueError:
                pass
        if self.name != "metrics":
            label += f"/{self.name}"
        root = Path(w.dir or run_dir or self.dir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(
                project=w.project,
                entity=w.entity or None,
                name=f"{w.name or experiment or 'pivotrl'}/{label}",
                group=w.group or experiment or None,
                tags=list(w.tags) or None,
                mode=w.mode,  # type: ignore[arg-type]  # a choice() of wandb's own modes
                dir=str(root),
                id=run_id,
                resume="allow",
                config=config,
                reinit="create_new",  # one run per writer, several may be open in one process
                settings=wandb.Settings(console="off"),  # the console is ours (tqdm); metrics come via log
            )
        except wandb.errors.Error as e:  # no login (online), no network, a bad entity or project
            raise UserError(
                f"W&B run {run_id} could not start ({type(e).__name__}: {e}); logging.wandb.mode=offline "
                "needs neither login nor network (`wandb sync` uploads later), or set logging.wandb.enabled=false"
            ) from None
        if getattr(run, "resumed", False) and getattr(run, "starting_step", 0) > 0:  # online: the server's last step
            self._wb_last = max(self._wb_last if self._wb_last is not None else -1, run.starting_step - 1)
        log.info("W&B run %s (%s) under %s", run_id, w.mode, root / "wandb")
        return run

    def _save_wandb_state(self) -> None:
        atomic_write_text(self.wandb_state_path, json.dumps({"id": self._wb_id, "last_step": self._wb_last}) + "\n")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if v is not None else None) for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, **clean}) + "\n")
        self._f.flush()
        tb = self._tensorboard()
        if tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    tb.add_scalar(k, v, step)
        wb = self._wandb_run(step)
        if wb is None:
            return
        if self._wb_last is not None and step <= self._wb_last:
            if not self._wb_skip_noted:
                self._wb_skip_noted = True
                log.info(
                    "W&B already has the steps up to %d (a killed run's): logging from step %d",
                    self._wb_last,
                    self._wb_last + 1,
                )
            return
        wb.log({k: v for k, v in clean.items() if v is not None}, step=step)
        self._wb_last = step
        self._save_wandb_state()

    def close(self, *, failed: bool = False) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._wb is not None:
            self._wb.finish(exit_code=1 if failed else 0)
            self._wb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)


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
