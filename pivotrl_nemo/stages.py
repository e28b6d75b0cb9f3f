"""The stages of an experiment and the runner that makes each one idempotent.

A stage reads the outputs of earlier stages from ``run_dir`` and writes its own atomically;
when it finishes, a marker ``.stages/<name>.json`` records a fingerprint of the configuration
it depends on (including its upstream stages' fingerprints) and its wall time. Re-running a
finished stage with the same fingerprint does nothing; a changed fingerprint re-runs it.
Interrupted stages resume from what they wrote (profiling per candidate, training per
checkpoint).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .config import PivotRLConfig, fingerprint, to_yaml
from .utils.io import atomic_write_json, atomic_write_text
from .utils.logging import get_logger

log = get_logger(__name__)

# Stages that run over every rank of a torchrun/Slurm launch: train (data-parallel) and profile
# (each rank profiles its shard; a later single-process `pivotrl profile` merges). The others
# are single-process.
MULTI_RANK_STAGES = ("train", "profile")

class StagePartial(Exception):
    """A stage did its share of the work (e.g. one Slurm array task's profiling shard) but the
    stage as a whole is not finished: no marker is written and the command exits 0."""


# Directories holding a stage's resumable partial state. They are kept across an interruption
# (same configuration) and discarded when the stage re-runs under a different fingerprint, so a
# changed configuration never resumes from, or appends to, an earlier configuration's work.
STAGE_STATE_DIRS = {"sft": ["sft"], "profile": ["profile"], "train": ["train"], "eval": ["eval"]}

UPSTREAM = {
    "build": [], "sft": ["build"], "extract": ["build"], "profile": ["sft", "extract"],
    "filter": ["profile"], "train": ["filter"], "eval": ["train"], "report": ["eval"],
}


def _sections(cfg: PivotRLConfig, stage: str) -> list:
    c = cfg
    return {
        "build": [c.data.source, c.data.path, c.data.bfcl_categories, c.data.max_trajectories,
                  c.data.split_fractions, c.data.split_seed, c.model.tokenizer, c.model.tokenizer_vocab_size],
        "sft": [c.model, c.sft, c.data, c.seed],
        "extract": [c.verifier.name],
        "profile": [c.profile, c.rollout, c.verifier, c.data],
        "filter": [c.filter],
        "train": [c.algorithm, c.loss, c.rollout, c.verifier, c.model.moe_router_freeze],
        "eval": [c.eval, c.rollout.sampling],
        "report": [],
    }[stage]


class Runner:
    """Runs stages in order with idempotency markers; the functions live in ``stage_impl``."""

    def __init__(self, cfg: PivotRLConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.marker_dir = self.run_dir / ".stages"

    def marker(self, stage: str) -> dict | None:
        p = self.marker_dir / f"{stage}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def fingerprint(self, stage: str) -> str:
        ups = []
        for u in UPSTREAM[stage]:
            m = self.marker(u)
            ups.append(m["fingerprint"] if m else f"missing:{u}")
        return fingerprint(*_sections(self.cfg, stage), ups)

    def run(self, stage: str, fn: Callable[[PivotRLConfig, Path], dict], force: bool = False) -> dict:
        from .distributed.dp import current_dp, world_rank
        from .utils.logging import global_rank

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and stage not in MULTI_RANK_STAGES:
            raise RuntimeError(f"stage '{stage}' runs in one process; launch it without torchrun "
                               f"(multi-rank stages: {list(MULTI_RANK_STAGES)})")
        for u in UPSTREAM[stage]:
            m_u = self.marker(u)
            if m_u is None:
                raise RuntimeError(f"stage '{stage}' needs stage '{u}' first: run `pivotrl {u}` "
                                   f"(or `pivotrl run`) with the same run_dir ({self.run_dir})")
            if m_u["fingerprint"] != self.fingerprint(u):
                raise RuntimeError(f"stage '{u}' in {self.run_dir} was produced with another configuration "
                                   f"than this one; re-run it first (`pivotrl {u} ...` or `pivotrl run ...`)")
        fp = self.fingerprint(stage)
        m = self.marker(stage)
        if m is not None and m["fingerprint"] == fp and not force:
            log.info("stage %-8s already done (%s); skipping", stage, self.marker_dir / f"{stage}.json")
            return m["summary"]
        if m is not None and m["fingerprint"] != fp:
            log.info("stage %-8s: configuration or inputs changed since it ran; running again", stage)
        main = global_rank() == 0
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
            self._reset_stale_state(stage, fp)
        log.info("stage %-8s starting", stage)
        t0 = time.perf_counter()
        try:
            summary = fn(self.cfg, self.run_dir)
        except StagePartial as e:
            log.info("stage %-8s: %s", stage, e)
            return {"partial": str(e)}
        secs = time.perf_counter() - t0
        # Downstream markers are now stale: their fingerprints include this one.
        if world_rank() == 0 and main:
            atomic_write_json(self.marker_dir / f"{stage}.json", {"fingerprint": fp, "seconds": secs, "summary": summary})
        current_dp().barrier()
        log.info("stage %-8s done in %.1f s", stage, secs)
        return summary

    def _reset_stale_state(self, stage: str, fp: str) -> None:
        """Keep a stage's partial outputs only if they were made under this fingerprint."""
        import shutil

        for name in STAGE_STATE_DIRS.get(stage, []):
            d = self.run_dir / name
            stamp = d / ".fingerprint"
            if d.exists() and (not stamp.exists() or stamp.read_text().strip() != fp):
                log.info("stage %-8s: discarding %s (made under another configuration)", stage, d)
                shutil.rmtree(d)
            d.mkdir(parents=True, exist_ok=True)
            if not stamp.exists():
                atomic_write_text(stamp, fp + "\n")

    def stage_seconds(self) -> dict[str, float]:
        out = {}
        for s in UPSTREAM:
            m = self.marker(s)
            if m is not None:
                out[s] = round(m["seconds"], 2)
        return out
