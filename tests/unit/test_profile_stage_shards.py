"""The profile stage under a Slurm array: each task profiles its shard and leaves the stage
unfinished; a plain `pivotrl profile` then finishes missing shards and merges, with exactly one
profile per candidate (real stages, model and verifier)."""

import json
import os
import subprocess
import sys

import pytest

PIVOTRL = [sys.executable, "-m", "pivotrl_nemo.cli"]


def _run(args, env=None):
    e = dict(os.environ)
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE"):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run(PIVOTRL + args, capture_output=True, text=True, timeout=600, env=e)


@pytest.mark.timeout(900)
def test_array_tasks_then_merge(tmp_path):
    run_dir = tmp_path / "run"
    common = [
        "experiment=tiny",
        f"run_dir={run_dir}",
        "data.max_trajectories=8",
        "sft.steps=4",
        "data.split_fractions={sft: 0.25, rl: 0.5, val: 0.0, test: 0.25}",
    ]
    r = _run(["run", *common, "stages=[build,sft,extract]"])
    assert r.returncode == 0, r.stderr[-3000:]
    ids = [json.loads(line)["id"] for line in open(run_dir / "candidates" / "rl.jsonl")]
    # array task 0 of 3 only: task 1 "crashed", task 2 never ran
    r = _run(["profile", *common], env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (run_dir / ".stages" / "profile.json").exists()
    assert (run_dir / "profile" / "shards" / "shard_00000-of-00003.done.json").exists()
    r = _run(["profile", *common])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(run_dir / "profile" / "profiled.jsonl")]
    assert sorted(x["id"] for x in rows) == sorted(ids)
    marker = json.loads((run_dir / ".stages" / "profile.json").read_text())
    assert marker["summary"]["shards"] == 3 and marker["summary"]["candidates"] == len(ids)
