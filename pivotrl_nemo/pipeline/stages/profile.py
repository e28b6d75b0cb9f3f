"""``profile``: K samples per RL-split candidate from the frozen pi_0; resumable per candidate."""

from __future__ import annotations

from typing import Any

from pivotrl_nemo.data.jsonl_index import write_indexed_jsonl
from pivotrl_nemo.data.row_store import load_pivot_rows
from pivotrl_nemo.pipeline.stage import StageContext, StagePartial, stage

POLICY_ID = "pi0:sft"


@stage(
    "profile",
    upstream=("sft", "extract"),
    sections=lambda c: [c.profile, c.rollout, c.verifier, c.data],
    state_dirs=("profile",),
    multi_rank=True,
    help="K one-turn samples per rl candidate from frozen pi_0, scored by the verifier (resumable, shardable)",
)
def profile(ctx: StageContext) -> dict[str, Any]:
    """K samples per RL-split candidate from the frozen pi_0; resumable per candidate.

    In a Slurm array (``sbatch --array=0-N launchers/pivot_rl.slurm profile ...``) each task
    profiles its shard of the candidates into ``profile/shards/`` and stops there; the next plain
    ``pivotrl profile`` finishes any incomplete shard, merges (every candidate exactly once) and
    completes the stage. Without an array, one resumable log ``profile/profile_log.jsonl``.

    Memory: a shard task holds its shard's candidates (``PivotRows``, ~1-2 KB per BFCL-shaped row);
    the merge / single-process run holds all of them and one profile per candidate (~1 KB each),
    and streams ``profiled.jsonl`` out.
    """
    # lazy: torch (the samplers run the policy)
    from pivotrl_nemo.algorithms.profile_shards import (
        merge_profiles,
        profile_missing_shards,
        profile_shard,
        shard_from_env,
        shard_layouts,
    )
    from pivotrl_nemo.algorithms.profiling import attach_profile, profile_candidates

    cfg, layout, rt = ctx.cfg, ctx.layout, ctx.runtime
    shard_dir, spec = layout.profile_shards, shard_from_env()
    # an array task / rank reads only its shard of the candidates; the merge reads them all
    rows, skipped = load_pivot_rows(layout.candidates("rl"), cfg.data.skip_invalid, (spec.index, spec.count))
    policy = rt.pi0()
    engine, _ = rt.engine_for(policy)
    sampler = rt.sampler_for(engine)
    chunk = max(1, cfg.rollout.batch_size // cfg.profile.k)
    if spec.count > 1:
        done = profile_shard(rows, sampler, cfg.profile, cfg.rollout.sampling, shard_dir, spec, POLICY_ID, chunk)
        raise StagePartial(
            f"profiled {spec.tag} ({done.get('candidates', '?')} candidates); run `pivotrl profile` "
            "once without the array to merge the shards"
        )
    layouts, n = shard_layouts(shard_dir), 1
    if layouts:
        if len(layouts) > 1:
            raise RuntimeError(
                f"{shard_dir} holds shard logs of several layouts {sorted(layouts)}; remove the stale ones"
            )
        n = layouts.pop()
        profile_missing_shards(rows, sampler, cfg.profile, cfg.rollout.sampling, shard_dir, n, POLICY_ID, chunk)
        profs = merge_profiles(rows, shard_dir, n)
    else:
        profs = profile_candidates(
            rows,
            sampler,
            cfg.profile,
            cfg.rollout.sampling,
            layout.profile_log,
            policy_id=POLICY_ID,
            chunk_candidates=chunk,
        )
    # validated: the rows came through load_pivot_rows, so training may read them lazily
    n_out = write_indexed_jsonl(layout.profiled, (attach_profile(r, profs[r["id"]]) for r in rows), validated=True)
    mean = sum(p["mean"] for p in profs.values()) / max(len(profs), 1)
    return {"candidates": n_out, "skipped_invalid": skipped, "k": cfg.profile.k, "mean_pass_rate": mean, "shards": n}
