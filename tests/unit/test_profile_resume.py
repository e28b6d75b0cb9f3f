"""Profiling killed with SIGKILL and restarted finishes with exactly one profile per candidate,
without redoing the ones already written (real stages, real model, real BFCL verifier)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PIVOTRL = [sys.executable, "-m", "pivotrl_nemo.cli"]


def _run(args, **kw):
    return subprocess.run(PIVOTRL + args, capture_output=True, text=True, timeout=600, **kw)


def _log_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.timeout(900)
def test_profile_resumes_after_sigkill(tmp_path):
    run_dir = tmp_path / "run"
    common = [
        "experiment=tiny",
        f"run_dir={run_dir}",
        "data.max_trajectories=20",
        "data.split_fractions={sft: 0.3, rl: 0.5, val: 0.0, test: 0.2}",
        "rollout.batch_size=8",
    ]
    r = _run(["run", *common, "stages=[build,sft,extract]"])
    assert r.returncode == 0, r.stderr[-3000:]
    n = sum(1 for _ in open(run_dir / "candidates" / "rl.jsonl"))
    assert n >= 8, "the test needs enough candidates to kill the stage part-way"
    log = run_dir / "profile" / "profile_log.jsonl"

    proc = subprocess.Popen(
        PIVOTRL + ["profile", *common], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while len(_log_ids(log)) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "profile finished before it could be killed: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _log_ids(log)
    assert 4 <= len(before) < n
    assert not (run_dir / ".stages" / "profile.json").exists(), "a killed stage must not be marked done"
    # simulate a torn write at the moment of the kill
    with open(log, "a") as f:
        f.write('{"id": "torn')

    r = _run(["profile", *common])
    assert r.returncode == 0, r.stderr[-3000:]
    after = _log_ids(log)
    assert after[: len(before)] == before, "finished candidates were rewritten"
    assert len(after) == n and len(set(after)) == n, "every candidate exactly once"
    assert "resuming" in r.stderr and f"{len(before)} of {n}" in r.stderr
    rows = [json.loads(line) for line in open(run_dir / "profile" / "profiled.jsonl")]
    assert sorted(x["id"] for x in rows) == sorted(after)
    assert all(len(x["profile"]["rewards"]) == 4 and x["pass_rate_total"] == 4 for x in rows)

    # idempotent: a third run does nothing
    r = _run(["profile", *common])
    assert r.returncode == 0 and "already done" in r.stderr
    assert _log_ids(log) == after
