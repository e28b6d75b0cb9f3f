"""Offline profiling: K one-turn samples per candidate from the frozen pi_0, scored.

Resumable: each finished candidate is one fsynced line of ``profile_log.jsonl``. A restarted
profile (after SIGKILL, preemption, a crash) truncates a torn last line, skips every candidate
already in the log, and finishes with exactly one profile per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from ..config.schema import ProfileConfig, SamplingConfig
from ..data.row_store import ids_of
from ..utils.io import JsonlAppender
from ..utils.logging import get_logger
from .rollouts import ScoredGroup

log = get_logger(__name__)


class ScoringSampler(Protocol):
    """What profiling uses of a sampler (``rollouts.TurnSampler``, or a wrapper of one):
    ``n`` scored samples per row."""

    def sample_and_score(self, rows: list[dict], n: int, sampling: SamplingConfig, seed: int) -> list[ScoredGroup]: ...


def summarize_rewards(rewards: list[float]) -> tuple[float, float]:
    """Mean and population variance of K rewards (p(1-p) for binary rewards)."""
    k = len(rewards)
    mean = sum(rewards) / k
    return mean, sum((r - mean) ** 2 for r in rewards) / k


def profile_candidates(
    rows: Sequence[dict],
    sampler: ScoringSampler,
    cfg: ProfileConfig,
    sampling: SamplingConfig,
    log_path: str | Path,
    policy_id: str,
    chunk_candidates: int,
    progress: bool = True,
) -> dict[str, dict]:
    """Profile every row not yet in ``log_path``; returns {row id: profile} for all rows."""
    done = {r["id"]: r for r in JsonlAppender.repair(log_path)}
    ids = ids_of(rows)
    todo = [i for i, rid in enumerate(ids) if rid not in done]
    if done:
        log.info("profile: resuming, %d of %d candidates already profiled", len(rows) - len(todo), len(rows))
    bar = None
    if progress and todo:
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="profile", unit="cand", dynamic_ncols=True)
    with JsonlAppender(log_path) as out:
        for start in range(0, len(todo), chunk_candidates):
            chunk = todo[start : start + chunk_candidates]
            # The seed depends on the first candidate's index, not on how far a previous run got.
            chunk_rows = [rows[i] for i in chunk]  # parsed here, one chunk at a time (PivotRows)
            groups = sampler.sample_and_score(chunk_rows, cfg.k, sampling, seed=cfg.seed + chunk[0])
            for row, g in zip(chunk_rows, groups):
                mean, var = summarize_rewards(g.rewards)
                rec = {
                    "id": row["id"],
                    "k": cfg.k,
                    "rewards": g.rewards,
                    "mean": mean,
                    "variance": var,
                    "categories": [v.category for v in g.verdicts],
                    "policy_id": policy_id,
                }
                out.append(rec)
                done[row["id"]] = rec
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return {rid: done[rid] for rid in ids}


def attach_profile(row: dict, prof: dict) -> dict:
    """A profiled pivot row: ``profile`` plus Gym's top-level pass-rate fields."""
    out = dict(row)
    out["profile"] = {k: prof[k] for k in ("k", "rewards", "mean", "variance", "categories", "policy_id")}
    out["pass_rate"] = prof["mean"]
    out["pass_rate_total"] = prof["k"]
    out["pass_rate_passed"] = int(round(sum(prof["rewards"])))
    return out
