"""The runner that makes every stage idempotent and resumable.

A stage reads the outputs of its upstream stages from ``run_dir`` and writes its own atomically;
when it finishes, a marker ``.stages/<name>.json`` records a fingerprint of the configuration
it depends on (``Stage.sections``, plus its upstream stages' fingerprints) and its wall time.
Re-running a finished stage with the same fingerprint does nothing; a changed fingerprint re-runs
it. Interrupted stages resume from what they wrote (profiling per candidate, training per
checkpoint); their ``state_dirs`` are discarded only when the fingerprint changed.

Before a stage runs again (changed fingerprint, ``--force``, or an unfinished run) its marker and
those of every stage downstream of it are removed first, so an interruption can never leave a
marker describing state that was since discarded or rewritten. A stage runs under the run
directory's lock (``pipeline.lock``): one process writes a run directory at a time.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import AbstractContextManager
from typing import Any

from pivotrl_nemo.config import PivotRLConfig, fingerprint, to_yaml
from pivotrl_nemo.distributed import env
from pivotrl_nemo.pipeline.layout import RunLayout
from pivotrl_nemo.pipeline.lock import run_dir_lock
from pivotrl_nemo.pipeline.runtime import Runtime
from pivotrl_nemo.pipeline.stage import STAGES, Stage, StageContext, StagePartial
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.io import atomic_write_json, atomic_write_text
from pivotrl_nemo.utils.logging import get_logger

log = get_logger(__name__)


class StageOrderError(UserError, RuntimeError):
    """An upstream stage is missing or was produced under another configuration (a ``UserError``:
    the message says which stage to run; a ``RuntimeError`` as it always was, for callers)."""


class Runner:
    """Runs registered stages with idempotency markers; one ``Runtime`` per runner."""

    def __init__(self, cfg: PivotRLConfig) -> None:
        self.cfg = cfg
        self.layout = RunLayout.of(cfg.run_dir)
        self.runtime = Runtime(cfg, self.layout)

    def marker(self, stage: str) -> dict[str, Any] | None:
        p = self.layout.marker(stage)
        return json.loads(p.read_text()) if p.exists() else None

    def fingerprint(self, stage: str) -> str:
        s = STAGES.get(stage)
        ups = []
        for u in s.upstream:
            m = self.marker(u)
            ups.append(m["fingerprint"] if m else f"missing:{u}")
        return fingerprint(*s.sections(self.cfg), ups)

    def context(self) -> StageContext:
        return StageContext(self.cfg, self.layout, self.runtime)

    def _check_upstream(self, s: Stage) -> None:
        for u in s.upstream:
            m_u = self.marker(u)
            if m_u is None:
                raise StageOrderError(
                    f"stage '{s.name}' needs stage '{u}' first: run `pivotrl {u}` "
                    f"(or `pivotrl run`) with the same run_dir ({self.layout.root})"
                )
            if m_u["fingerprint"] != self.fingerprint(u):
                raise StageOrderError(
                    f"stage '{u}' in {self.layout.root} was produced with another "
                    f"configuration than this one; re-run it first (`pivotrl {u} ...` or "
                    "`pivotrl run ...`)"
                )

    def run(self, stage: str, force: bool = False) -> dict[str, Any]:
        """Run ``stage`` unless it is done under this configuration (``force`` re-runs it)."""
        s = STAGES.get(stage)
        world = env.world_size()
        if world > 1 and not s.multi_rank:
            multi = [n for n in STAGES.names() if STAGES.get(n).multi_rank]
            raise RuntimeError(
                f"stage '{stage}' runs in one process; launch it without torchrun (multi-rank stages: {multi})"
            )
        with self.lock():
            return self._run(s, force)

    def lock(self) -> AbstractContextManager[None]:
        """The run directory's lock (reentrant: hold it around several ``run`` calls)."""
        return run_dir_lock(self.layout.root)

    def _run(self, s: Stage, force: bool) -> dict[str, Any]:
        stage = s.name
        self._check_upstream(s)
        fp = self.fingerprint(stage)
        m = self.marker(stage)
        if m is not None and m["fingerprint"] == fp and not force:
            log.info("stage %-8s already done (%s); skipping", stage, self.layout.marker(stage))
            return dict(m["summary"])
        if m is not None and m["fingerprint"] != fp:
            log.info("stage %-8s: configuration or inputs changed since it ran; running again", stage)
        main = env.rank() == 0
        if main:
            self.layout.root.mkdir(parents=True, exist_ok=True)
            # First: no marker may outlive the state this run is about to discard or rewrite.
            self._invalidate(stage)
            atomic_write_text(self.layout.config_yaml, to_yaml(self.cfg))
            self._reset_stale_state(stage, fp)
        log.info("stage %-8s starting", stage)
        t0 = time.perf_counter()
        try:
            summary = s.fn(self.context())
        except StagePartial as e:
            log.info("stage %-8s: %s", stage, e)
            return {"partial": str(e)}
        secs = time.perf_counter() - t0
        # (downstream markers were removed before it ran: their fingerprints include this one)
        if main:
            atomic_write_json(self.layout.marker(stage), {"fingerprint": fp, "seconds": secs, "summary": summary})
        self.runtime.barrier()
        log.info("stage %-8s done in %.1f s", stage, secs)
        return summary

    def _invalidate(self, stage: str) -> None:
        """Remove the markers of ``stage`` and of every stage downstream of it."""
        for name in [stage, *downstream(stage)]:
            p = self.layout.marker(name)
            if p.exists():
                log.info("stage %-8s: removing its marker %s (stage '%s' runs again)", name, p, stage)
                p.unlink(missing_ok=True)

    def _reset_stale_state(self, stage: str, fp: str) -> None:
        """Keep a stage's partial outputs only if they were made under this fingerprint."""
        for name in STAGES.get(stage).state_dirs:
            d = self.layout.state_dir(name)
            stamp = d / ".fingerprint"
            if d.exists() and (not stamp.exists() or stamp.read_text().strip() != fp):
                log.info("stage %-8s: discarding %s (made under another configuration)", stage, d)
                shutil.rmtree(d)
            d.mkdir(parents=True, exist_ok=True)
            if not stamp.exists():
                atomic_write_text(stamp, fp + "\n")


def stage_seconds(layout: RunLayout) -> dict[str, float]:
    """Wall seconds of every finished stage of a run, in registration order."""
    out = {}
    for s in STAGES.names():
        p = layout.marker(s)
        if p.exists():
            out[s] = round(json.loads(p.read_text())["seconds"], 2)
    return out


def downstream(stage: str) -> list[str]:
    """Every registered stage that reads ``stage``'s outputs, directly or transitively."""
    found: set[str] = {stage}
    grew = True
    while grew:
        grew = False
        for n in STAGES.names():
            if n not in found and any(u in found for u in STAGES.get(n).upstream):
                found.add(n)
                grew = True
    return [n for n in STAGES.names() if n in found and n != stage]


def check_finished_state(layout: RunLayout, stage: str, action: str = "export") -> None:
    """Refuse ``stage``'s state directory (its checkpoint) unless the finished stage made it.

    The runner stamps ``<state_dir>/.fingerprint`` before the stage writes anything there and
    discards the directory with its stamp, so the stamp is the fingerprint the checkpoint was made
    under; it must equal the fingerprint of the stage's marker. A stamp without a marker is an
    unfinished run. A state dir with neither was not made by a stage (``pivotrl import`` into it):
    allowed. Raises a ``UserError`` naming both fingerprints and the fix; ``action`` is what the
    caller does with the checkpoint (for the message)."""
    stamp_p, marker_p = layout.state_dir(stage) / ".fingerprint", layout.marker(stage)
    stamp = stamp_p.read_text().strip() if stamp_p.exists() else None
    marker = json.loads(marker_p.read_text())["fingerprint"] if marker_p.exists() else None
    if stamp is None and marker is None:
        return
    fix = (
        f"re-run `pivotrl {stage}` with the run's configuration and the same run_dir (it resumes or "
        f"restarts that run), then {action} again"
    )
    if marker is None:
        raise UserError(
            f"the {stage} state in {layout.state_dir(stage)} is from a `pivotrl {stage}` run that did not finish "
            f"(stamped with fingerprint {stamp}; no marker {marker_p}); {fix}"
        )
    if stamp != marker:
        made = f"fingerprint {stamp}" if stamp is not None else "an unknown fingerprint (no stamp)"
        raise UserError(
            f"the {stage} state in {layout.state_dir(stage)} was made under {made} ({stamp_p}), "
            f"but the finished {stage} stage under fingerprint {marker} ({marker_p}): a later run under another "
            f"configuration replaced it; {fix}"
        )
