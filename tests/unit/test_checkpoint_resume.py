"""Training killed with SIGKILL after a checkpoint, restarted, then preempted with SIGTERM and
restarted again, logs exactly the losses of an uninterrupted run for every step after the resume
points (real megatron policy, HF engine with weight sync, BFCL verifier, dist checkpoints)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pivotrl_nemo.utils.io import atomic_write_jsonl, read_jsonl
from pivotrl_nemo.utils.metrics import read_metrics

WORKER = [sys.executable, str(Path(__file__).with_name("checkpoint_resume_worker.py"))]
STEPS = 8
COMMON = [
    "experiment=tiny",
    "data.max_trajectories=2",
    "data.split_fractions={sft: 1.0, rl: 0.0, val: 0.0, test: 0.0}",
    "sft.steps=120",
    "sft.batch_size=8",
    "sft.optim.lr=1e-2",
    f"algorithm.steps={STEPS}",
    "algorithm.prompts_per_step=4",
    "algorithm.group_size=8",
    "algorithm.optim.lr=1e-3",
    "algorithm.save_every=2",
    "algorithm.keep_last=2",
    "algorithm.best_metric=train/reward_mean",
    "rollout.batch_size=32",
]
COMPARED = ("train/loss", "train/reward_mean", "train/grad_norm", "train/lr")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _train(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(WORKER + [str(run_dir), *COMMON], capture_output=True, text=True, env=_env(), timeout=600)


def _latest_step(run_dir: Path) -> int | None:
    latest = run_dir / "train" / "checkpoint" / "latest"
    try:
        return int(latest.read_text().strip().removeprefix("step_"))
    except (OSError, ValueError):
        return None


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "train" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.time() + 400
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before {what}: " + proc.stderr.read()[-3000:]
    assert ready(), f"timed out waiting for {what}"


@pytest.mark.timeout(1200)
def test_resume_after_sigkill_and_sigterm_reproduces_the_losses(tmp_path):
    prepared = tmp_path / "prepared"
    r = subprocess.run(
        [sys.executable, "-m", "pivotrl_nemo.cli", "run", *COMMON, f"run_dir={prepared}", "stages=[build,extract,sft]"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (prepared / "sft" / "checkpoint" / "latest").is_file()
    atomic_write_jsonl(prepared / "pivots.jsonl", read_jsonl(prepared / "candidates" / "sft.jsonl")[:4])
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    shutil.copytree(prepared, ref_dir)
    shutil.copytree(prepared, run_dir)

    r = _train(ref_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = {row["step"]: row for row in read_metrics(ref_dir / "train" / "metrics.jsonl")}
    assert sorted(ref) == list(range(1, STEPS + 1))

    # 1. SIGKILL as soon as the first checkpoint is complete
    proc = subprocess.Popen(
        WORKER + [str(run_dir), *COMMON], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    _wait(proc, lambda: _latest_step(run_dir) is not None, "the first checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _latest_step(run_dir)
    assert killed_at is not None and killed_at < STEPS

    # 2. restart; SIGTERM once it has logged a step of its own: it checkpoints that step and exits 143
    logged = len(_rows(run_dir))
    proc = subprocess.Popen(
        WORKER + [str(run_dir), *COMMON], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    _wait(proc, lambda: len(_rows(run_dir)) > logged, "a step after the resume")
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert f"resumed from {run_dir / 'train' / 'checkpoint'} at step {killed_at + 1}" in err
    preempted_at = int((run_dir / "train" / "PREEMPTED").read_text())
    assert killed_at < preempted_at < STEPS and _latest_step(run_dir) == preempted_at

    # 3. restart to the end
    r = _train(run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {preempted_at + 1}" in r.stderr and not (run_dir / "train" / "PREEMPTED").exists()
    rows = _rows(run_dir)
    for step in range(1, killed_at + 1):  # finished before the kill, never redone
        assert sum(row["step"] == step for row in rows) == 1, step
    got = {row["step"]: row for row in read_metrics(run_dir / "train" / "metrics.jsonl")}
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(killed_at + 1, STEPS + 1):
        for key in COMPARED:
            assert got[step][key] == ref[step][key], (step, key, got[step][key], ref[step][key])
    assert any(ref[s]["train/loss"] != 0.0 for s in range(killed_at + 1, STEPS + 1)), "vacuous: all losses are 0"

    ckpt = run_dir / "train" / "checkpoint"
    steps = sorted(int(d.name.removeprefix("step_")) for d in ckpt.glob("step_*"))
    best = json.loads((ckpt / "best").read_text())
    assert steps[-2:] == [STEPS - 2, STEPS] and len(steps) <= 3 and not list(ckpt.glob("*.tmp"))
    assert best["step_dir"] in {f"step_{s:08d}" for s in steps} and best["metric"] == "train/reward_mean"
    assert json.loads((run_dir / "train" / "trainer_state.json").read_text())["step"] == STEPS
