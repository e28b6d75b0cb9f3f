"""Profiling at cluster scale: candidates sharded over Slurm array tasks or data-parallel ranks.

A candidate's shard is a hash of its row id (not its position), so adding, dropping or
reordering rows never moves the others. Shard ``i`` of ``n`` is profiled by
``profiling.profile_candidates`` into its own resumable per-candidate log
``<shard_dir>/shard_{i:05d}-of-{n:05d}.jsonl`` (one fsynced line per candidate: a crash or
preemption loses at most the chunk in flight, and a rerun does only what is missing). When a
shard completes, ``shard_{i:05d}-of-{n:05d}.done.json`` is written atomically with its throughput.

``merge_profiles`` reads every shard log of the layout and checks that each candidate has exactly
one profile (naming missing, duplicated, unknown and misplaced ids). ``profile_missing_shards``
is what a merge job runs first: it finishes any shard whose array task never completed.

Where the shard index comes from (``shard_from_env``): ``SLURM_ARRAY_TASK_ID`` /
``SLURM_ARRAY_TASK_COUNT`` (``sbatch --array=0-7``), or the process's rank and world size
(``distributed.env``: ``RANK`` / ``WORLD_SIZE`` under torchrun, one engine per data-parallel
rank), or both (array task x rank); none of them: one shard.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import ProfileConfig, SamplingConfig
from ..data.jsonl_index import id_hash
from ..data.row_store import ids_of, select
from ..distributed import env
from ..utils.io import JsonlAppender, atomic_write_json
from ..utils.logging import get_logger
from .profiling import ScoringSampler, profile_candidates
from .rollouts import ScoredGroup

log = get_logger(__name__)

_SHARD_FILE = re.compile(r"^shard_(\d{5})-of-(\d{5})\.jsonl$")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"invalid shard {self.index} of {self.count}: need 0 <= index < count")

    @property
    def tag(self) -> str:
        return f"shard_{self.index:05d}-of-{self.count:05d}"


def shard_of(row_id: str, num_shards: int) -> int:
    """The shard of a candidate: a stable hash of its id (same on every machine and Python run;
    ``load_pivot_rows(..., shard=)`` reads a shard's rows from a file by the same hash)."""
    return id_hash(row_id) % num_shards


def shard_rows(rows: Sequence[dict], shard_index: int, num_shards: int) -> Sequence[dict]:
    """The rows of shard ``shard_index`` of ``num_shards``, in input order (a ``PivotRows``
    subset for a ``PivotRows``: nothing is parsed)."""
    ShardSpec(shard_index, num_shards)
    ids = ids_of(rows)
    return select(rows, [j for j, rid in enumerate(ids) if shard_of(rid, num_shards) == shard_index])


def shard_from_env(environ: Mapping[str, str] | None = None) -> ShardSpec:
    """This process's shard from the Slurm array variables and its rank (see the module docstring);
    ``environ`` defaults to ``os.environ``."""
    vars_ = os.environ if environ is None else environ
    array = ShardSpec()
    if "SLURM_ARRAY_TASK_ID" in vars_ and "SLURM_ARRAY_TASK_COUNT" in vars_:
        task, count = int(vars_["SLURM_ARRAY_TASK_ID"]), int(vars_["SLURM_ARRAY_TASK_COUNT"])
        first, step = int(vars_.get("SLURM_ARRAY_TASK_MIN", "0")), int(vars_.get("SLURM_ARRAY_TASK_STEP", "1"))
        if (task - first) % step:
            raise ValueError(f"array task {task} is not on the grid min={first} step={step}")
        array = ShardSpec((task - first) // step, count)
    dp = ShardSpec(env.rank(environ), env.world_size(environ))
    return ShardSpec(array.index * dp.count + dp.index, array.count * dp.count)


def shard_log_path(shard_dir: str | os.PathLike, shard: ShardSpec) -> Path:
    return Path(shard_dir) / f"{shard.tag}.jsonl"


def shard_done_path(shard_dir: str | os.PathLike, shard: ShardSpec) -> Path:
    return Path(shard_dir) / f"{shard.tag}.done.json"


class _CountingSampler:
    """Wraps a TurnSampler and counts what it generated (for throughput)."""

    def __init__(self, sampler: ScoringSampler) -> None:
        self.sampler, self.candidates, self.tokens = sampler, 0, 0

    def sample_and_score(
        self, rows: list[dict], n: int, sampling: SamplingConfig, seed: int, **kw: Any
    ) -> list[ScoredGroup]:
        groups = self.sampler.sample_and_score(rows, n, sampling, seed=seed, **kw)
        self.candidates += len(groups)
        self.tokens += sum(len(c.token_ids) for g in groups for c in g.completions)
        return groups


def profile_shard(
    rows: Sequence[dict],
    sampler: ScoringSampler,
    cfg: ProfileConfig,
    sampling: SamplingConfig,
    shard_dir: str | os.PathLike,
    shard: ShardSpec,
    policy_id: str,
    chunk_candidates: int,
    progress: bool = True,
) -> dict:
    """Profile the candidates of ``shard`` (of all ``rows``); resumable; returns the shard summary
    (also written to the shard's ``.done.json``), with candidates/s and generated tokens/s."""
    mine = shard_rows(rows, shard.index, shard.count)
    counting = _CountingSampler(sampler)
    t0 = time.perf_counter()
    profs = profile_candidates(
        mine,
        counting,
        cfg,
        sampling,
        shard_log_path(shard_dir, shard),
        policy_id,
        chunk_candidates,
        progress=progress,
    )
    secs = time.perf_counter() - t0
    if len(profs) != len(mine):
        raise RuntimeError(f"{shard.tag}: {len(profs)} profiles for {len(mine)} candidates")
    summary = {
        "shard": shard.index,
        "num_shards": shard.count,
        "candidates": len(mine),
        "profiled_now": counting.candidates,
        "resumed": len(mine) - counting.candidates,
        "seconds": round(secs, 3),
        "candidates_per_s": counting.candidates / max(secs, 1e-9),
        "generated_tokens": counting.tokens,
        "generated_tokens_per_s": counting.tokens / max(secs, 1e-9),
        "samples_per_candidate": cfg.k,
        "policy_id": policy_id,
        "host": socket.gethostname(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(shard_done_path(shard_dir, shard), summary)
    log.info(
        "profile %s: %d candidates (%d resumed) in %.1f s: %.2f candidates/s, %.0f generated tokens/s "
        "(per process; K=%d samples per candidate)",
        shard.tag,
        len(mine),
        summary["resumed"],
        secs,
        summary["candidates_per_s"],
        summary["generated_tokens_per_s"],
        cfg.k,
    )
    return summary


def profile_missing_shards(
    rows: Sequence[dict],
    sampler: ScoringSampler,
    cfg: ProfileConfig,
    sampling: SamplingConfig,
    shard_dir: str | os.PathLike,
    num_shards: int,
    policy_id: str,
    chunk_candidates: int,
    progress: bool = True,
) -> list[dict]:
    """Finish, in this process, every shard of the layout without a ``.done.json`` (an array task
    that crashed or never ran); finished shards are not touched. Returns the new summaries."""
    out = []
    for i in range(num_shards):
        spec = ShardSpec(i, num_shards)
        if not shard_done_path(shard_dir, spec).exists():
            log.info("profile: %s is incomplete; profiling what it lacks here", spec.tag)
            out.append(
                profile_shard(rows, sampler, cfg, sampling, shard_dir, spec, policy_id, chunk_candidates, progress)
            )
    return out


class ProfileMergeError(ValueError):
    """The shard logs do not hold exactly one profile per candidate; the message says which ids."""

    def __init__(
        self, message: str, missing: list[str], duplicated: list[str], unknown: list[str], misplaced: list[str]
    ) -> None:
        super().__init__(message)
        self.missing, self.duplicated, self.unknown, self.misplaced = missing, duplicated, unknown, misplaced


def shard_layouts(shard_dir: str | os.PathLike) -> set[int]:
    """The shard counts of the shard logs present in ``shard_dir`` (empty when none)."""
    return _layouts(Path(shard_dir))


def _layouts(shard_dir: Path) -> set[int]:
    return {int(m[2]) for p in shard_dir.glob("shard_*.jsonl") if (m := _SHARD_FILE.match(p.name))}


def _few(ids: list[str], k: int = 10) -> str:
    return ", ".join(ids[:k]) + (f", ... ({len(ids)} in all)" if len(ids) > k else "")


def merge_profiles(
    rows: Sequence[dict], shard_dir: str | os.PathLike, num_shards: int | None = None
) -> dict[str, dict]:
    """{row id: profile} from every shard log; raises ProfileMergeError naming missing,
    duplicated, unknown (not a candidate) and misplaced (in the wrong shard) ids."""
    shard_dir = Path(shard_dir)
    if num_shards is None:
        layouts = _layouts(shard_dir)
        if len(layouts) != 1:
            raise ValueError(
                f"{shard_dir}: expected shard logs of one layout, found "
                f"{sorted(layouts) or 'none'}; pass num_shards or remove stale shards"
            )
        num_shards = layouts.pop()
    ids = ids_of(rows)
    known = set(ids)
    found: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    unknown, misplaced = [], []
    for i in range(num_shards):
        for rec in JsonlAppender.read_complete(shard_log_path(shard_dir, ShardSpec(i, num_shards))):
            rid = rec["id"]
            if rid not in known:
                unknown.append(rid)
                continue
            if shard_of(rid, num_shards) != i:
                misplaced.append(rid)
            found[rid].append((i, rec))
    missing = [r for r in ids if r not in found]
    duplicated = sorted(r for r, recs in found.items() if len(recs) > 1)
    if missing or duplicated or unknown or misplaced:
        parts = []
        if missing:
            shards = sorted({shard_of(r, num_shards) for r in missing})
            parts.append(
                f"{len(missing)} candidates have no profile ({_few(missing)}); incomplete shards "
                f"{shards}: rerun those array tasks or `profile_missing_shards`"
            )
        if duplicated:
            where = {r: sorted(i for i, _ in found[r]) for r in duplicated[:10]}
            parts.append(
                f"{len(duplicated)} candidates profiled more than once ({_few(duplicated)}; shards {where}): "
                "did two jobs run the same shard? delete those shard files and rerun them"
            )
        if unknown:
            parts.append(
                f"{len(unknown)} profiles of ids that are not candidates ({_few(unknown)}): stale shards "
                "from another candidate set?"
            )
        if misplaced:
            parts.append(f"{len(misplaced)} profiles in the wrong shard ({_few(misplaced)})")
        raise ProfileMergeError(
            f"{shard_dir} ({num_shards} shards): " + "; ".join(parts), missing, duplicated, unknown, misplaced
        )
    return {r: found[r][0][1] for r in ids}


def throughput_summary(shard_dir: str | os.PathLike, num_shards: int) -> dict:
    """Totals over the shards' ``.done.json``: candidates/s and generated tokens/s, per process
    (mean over shards) and for the whole job (sum of work over the longest shard's wall time)."""
    done = []
    for i in range(num_shards):
        p = shard_done_path(shard_dir, ShardSpec(i, num_shards))
        if p.exists():
            done.append(json.loads(p.read_text()))
    if not done:
        return {"shards_done": 0}
    wall = max(d["seconds"] for d in done)
    cands = sum(d["profiled_now"] for d in done)
    toks = sum(d["generated_tokens"] for d in done)
    return {
        "shards_done": len(done),
        "candidates_profiled": cands,
        "generated_tokens": toks,
        "job_candidates_per_s": cands / max(wall, 1e-9),
        "job_generated_tokens_per_s": toks / max(wall, 1e-9),
        "shard_candidates_per_s_mean": sum(d["candidates_per_s"] for d in done) / len(done),
    }
