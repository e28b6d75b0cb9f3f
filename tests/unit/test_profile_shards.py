"""Sharded profiling bookkeeping (algorithms/profile_shards.py).

These tests use a FAKE sampler (deterministic rewards and token counts from the row id): they
check only the sharding, resume and merge bookkeeping; the real engine + verifier path of
``profile_candidates`` is tested elsewhere (test_rollout_hf, the profile stage)."""

from __future__ import annotations

import json
import logging
import random
import zlib
from types import SimpleNamespace

import pytest

from pivotrl_nemo.algorithms.profile_shards import (
    ProfileMergeError,
    ShardSpec,
    merge_profiles,
    profile_missing_shards,
    profile_shard,
    shard_done_path,
    shard_from_env,
    shard_log_path,
    shard_of,
    shard_rows,
    throughput_summary,
)
from pivotrl_nemo.config.schema import ProfileConfig, SamplingConfig

CFG, SAMPLING = ProfileConfig(k=4, seed=0), SamplingConfig()
ROWS = [{"id": f"bfcl/multi_turn_base_{t}#{j}"} for t in range(20) for j in range(3)]


class FakeSampler:
    """Rewards and completion lengths are a pure function of (row id, sample index)."""

    def __init__(self, fail_after_chunks: int | None = None) -> None:
        self.sampled: list[str] = []
        self.fail_after, self.chunks = fail_after_chunks, 0

    def sample_and_score(self, rows, n, sampling, seed):
        if self.fail_after is not None and self.chunks >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.chunks += 1
        groups = []
        for r in rows:
            self.sampled.append(r["id"])
            h = zlib.crc32(r["id"].encode())
            verdicts = [SimpleNamespace(reward=float((h >> j) & 1), category="ok") for j in range(n)]
            comps = [SimpleNamespace(token_ids=list(range(3 + (h + j) % 5))) for j in range(n)]
            groups.append(SimpleNamespace(rewards=[v.reward for v in verdicts], verdicts=verdicts, completions=comps))
        return groups


def _profile_all(shard_dir, n, sampler=None):
    sampler = sampler or FakeSampler()
    return [
        profile_shard(ROWS, sampler, CFG, SAMPLING, shard_dir, ShardSpec(i, n), "pi0", 5, progress=False)
        for i in range(n)
    ], sampler


def test_shards_partition_by_id_not_position():
    n = 4
    parts = [shard_rows(ROWS, i, n) for i in range(n)]
    assert sorted(r["id"] for p in parts for r in p) == sorted(r["id"] for r in ROWS)
    assert all(len(p) > 5 for p in parts)  # roughly balanced
    shuffled = ROWS[::-1] + [{"id": "new#0"}]
    random.Random(0).shuffle(shuffled)
    for i in range(n):  # reordering and adding rows moves nobody
        assert {r["id"] for r in shard_rows(shuffled, i, n)} - {"new#0"} == {r["id"] for r in parts[i]}
    assert shard_of("bfcl/multi_turn_base_0#0", 4) == shard_of("bfcl/multi_turn_base_0#0", 4)
    with pytest.raises(ValueError, match="invalid shard 4 of 4"):
        shard_rows(ROWS, 4, 4)


def test_shard_from_slurm_array_and_ranks():
    assert shard_from_env({}) == ShardSpec(0, 1)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "8"}) == ShardSpec(7, 8)
    # --array=1-8 (min 1), and --array=0-14:2 (step 2)
    assert shard_from_env(
        {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    ) == ShardSpec(0, 8)
    assert shard_from_env(
        {
            "SLURM_ARRAY_TASK_ID": "6",
            "SLURM_ARRAY_TASK_COUNT": "8",
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_STEP": "2",
        }
    ) == ShardSpec(3, 8)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4"}) == ShardSpec(3, 4)
    assert shard_from_env(
        {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "RANK": "1", "WORLD_SIZE": "2"}
    ) == ShardSpec(5, 6)


def test_every_candidate_profiled_once_with_throughput(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pivotrl_nemo"):
        summaries, sampler = _profile_all(tmp_path, 3)
    assert sorted(sampler.sampled) == sorted(r["id"] for r in ROWS)  # each sampled exactly once
    merged = merge_profiles(ROWS, tmp_path)
    assert list(merged) == [r["id"] for r in ROWS]
    for r in ROWS:
        h = zlib.crc32(r["id"].encode())
        assert merged[r["id"]]["rewards"] == [float((h >> j) & 1) for j in range(4)]
    toks = sum(3 + (zlib.crc32(r["id"].encode()) + j) % 5 for r in ROWS for j in range(4))
    assert sum(s["generated_tokens"] for s in summaries) == toks
    assert all(s["candidates_per_s"] > 0 and s["generated_tokens_per_s"] > 0 for s in summaries)
    done = json.loads(shard_done_path(tmp_path, ShardSpec(1, 3)).read_text())
    assert done["candidates"] == len(shard_rows(ROWS, 1, 3)) and done["resumed"] == 0
    assert "candidates/s" in caplog.text and "generated tokens/s" in caplog.text
    tot = throughput_summary(tmp_path, 3)
    assert tot["shards_done"] == 3 and tot["candidates_profiled"] == len(ROWS) and tot["generated_tokens"] == toks


def test_rerun_after_crash_does_only_what_is_missing(tmp_path):
    spec = ShardSpec(0, 2)
    mine = [r["id"] for r in shard_rows(ROWS, 0, 2)]
    crashing = FakeSampler(fail_after_chunks=2)  # 2 chunks of 5 done, then the process dies
    with pytest.raises(RuntimeError, match="simulated crash"):
        profile_shard(ROWS, crashing, CFG, SAMPLING, tmp_path, spec, "pi0", 5, progress=False)
    assert not shard_done_path(tmp_path, spec).exists()
    with open(shard_log_path(tmp_path, spec), "a") as f:
        f.write('{"id": "torn')  # killed mid-write
    again = FakeSampler()
    summary = profile_shard(ROWS, again, CFG, SAMPLING, tmp_path, spec, "pi0", 5, progress=False)
    assert again.sampled == mine[10:] and summary["resumed"] == 10
    # a finished shard reruns nothing
    third = FakeSampler()
    profile_shard(ROWS, third, CFG, SAMPLING, tmp_path, spec, "pi0", 5, progress=False)
    assert third.sampled == []


def test_merge_names_missing_duplicated_and_unknown(tmp_path):
    n = 3
    for i in (0, 2):  # shard 1 never ran (its array task was lost)
        profile_shard(ROWS, FakeSampler(), CFG, SAMPLING, tmp_path, ShardSpec(i, n), "pi0", 5, progress=False)
    lost = [r["id"] for r in shard_rows(ROWS, 1, n)]
    with pytest.raises(ProfileMergeError, match=r"have no profile .*incomplete shards \[1\]") as e:
        merge_profiles(ROWS, tmp_path, n)
    assert e.value.missing == lost
    # the merge job completes only the missing shard
    finisher = FakeSampler()
    new = profile_missing_shards(ROWS, finisher, CFG, SAMPLING, tmp_path, n, "pi0", 5, progress=False)
    assert [s["shard"] for s in new] == [1] and sorted(finisher.sampled) == sorted(lost)
    assert len(merge_profiles(ROWS, tmp_path, n)) == len(ROWS)

    # a record appended twice (two jobs ran one shard) and one of a row that is not a candidate
    log0 = shard_log_path(tmp_path, ShardSpec(0, n))
    first = log0.read_text().splitlines()[0]
    dup_id = json.loads(first)["id"]
    with open(log0, "a") as f:
        f.write(first + "\n" + json.dumps({**json.loads(first), "id": "gone#9"}) + "\n")
    with pytest.raises(ProfileMergeError) as e:
        merge_profiles(ROWS, tmp_path, n)
    assert e.value.duplicated == [dup_id] and e.value.unknown == ["gone#9"] and not e.value.missing
    assert dup_id in str(e.value) and "gone#9" in str(e.value)


def test_merge_refuses_mixed_layouts(tmp_path):
    _profile_all(tmp_path, 2)
    profile_shard(ROWS, FakeSampler(), CFG, SAMPLING, tmp_path, ShardSpec(0, 3), "pi0", 5, progress=False)
    with pytest.raises(ValueError, match=r"one layout, found \[2, 3\]"):
        merge_profiles(ROWS, tmp_path)
    assert len(merge_profiles(ROWS, tmp_path, num_shards=2)) == len(ROWS)
