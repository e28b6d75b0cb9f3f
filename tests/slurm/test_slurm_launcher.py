"""``sbatch launchers/pivot_rl.slurm`` on a real single-node Slurm (slurmctld + slurmd + munge).

Every job runs 2 ranks over gloo on the CPU, started by one torchrun (default) or as 2 srun
tasks. Asserted: the job succeeds, checkpoints / metrics / resolved config / logs exist; and a job
that receives SIGTERM mid-training (what ``--signal=B:TERM@N`` delivers before the time limit)
checkpoints, requeues itself and finishes from its checkpoint with the same final step count.

The job command is chosen by JOB_COMMAND below (the one-line switch):
  "pivotrl": the real ``pivotrl train`` on a tiny CPU configuration (the stages before train are
             prepared once per session, outside Slurm, and copied into each job's run_dir);
  "standin": tests/slurm/standin_stage.py, which follows the same contract (run_dir, metrics,
             checkpoint, PREEMPTED, exit 143) and also records every rank's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launchers" / "pivot_rl.slurm"
STANDIN = Path(__file__).with_name("standin_stage.py")

JOB_COMMAND = "pivotrl"  # "pivotrl" | "standin"  <- the one-line switch

if JOB_COMMAND == "pivotrl":
    STEPS = 24
    PIVOTRL_CMD = str(Path(sys.executable).with_name("pivotrl"))
    OVERRIDES = [
        "experiment=quickstart",
        "data.max_trajectories=6",
        "sft.steps=4",
        "profile.k=2",
        "filter.lambda_diff=1.0",
        "filter.min_variance=-1.0",
        f"algorithm.steps={STEPS}",
        "algorithm.save_every=4",
        "algorithm.prompts_per_step=2",
        "algorithm.group_size=2",
    ]
    JOB_TIMEOUT = 420.0
else:
    STEPS = 8
    PIVOTRL_CMD = f"{sys.executable} {STANDIN}"
    OVERRIDES = [f"algorithm.steps={STEPS}", "standin.step_seconds=0.6"]
    JOB_TIMEOUT = 180.0
LAUNCH_MODES = [("torchrun", ()), ("srun", ("--ntasks-per-node=2",))]
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory):
    """For the real command: build, sft, extract, profile and filter once (single process)."""
    if JOB_COMMAND != "pivotrl":
        return None
    run_dir = tmp_path_factory.mktemp("prepared") / "run"
    stages = "stages=[build,sft,extract,profile,filter]"
    r = subprocess.run(
        [PIVOTRL_CMD, "run", *OVERRIDES, stages, f"run_dir={run_dir}"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return run_dir


def _new_run_dir(tmp_path: Path, prepared: Path | None) -> Path:
    run_dir = tmp_path / "run"
    if prepared is not None:
        shutil.copytree(prepared, run_dir)
    return run_dir


def _submit(slurm, job_root: Path, run_dir: Path, name: str, launch: str, *sbatch_args: str) -> int:
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PIVOTRL_JOB_ROOT": str(job_root),
        "PIVOTRL_CMD": PIVOTRL_CMD,
        "PIVOTRL_LAUNCH": launch,
        "NPROC_PER_NODE": "2",
        "OMP_NUM_THREADS": "1",
        "PIVOTRL_SHUTDOWN_TIMEOUT": "120",
    }
    return slurm.sbatch(
        f"--job-name={name}",
        f"--output={job_root}/{name}-%j.out",
        *sbatch_args,
        str(LAUNCHER),
        "train",
        *OVERRIDES,
        f"run_dir={run_dir}",
        env=env,
        cwd=job_root,
    )


def _steps(run_dir: Path) -> list[int]:
    p = run_dir / "train" / "metrics.jsonl"
    return [json.loads(line)["step"] for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def _explain(slurm, root: Path) -> str:
    parts = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".out", ".log", ".err") and p.stat().st_size < 2_000_000:
            parts.append(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts) + "\n" + slurm.logs()


def _assert_trained(run_dir: Path) -> None:
    assert _steps(run_dir) == list(range(1, STEPS + 1)), "every step logged exactly once"
    assert json.loads((run_dir / "train" / "trainer_state.json").read_text())["step"] == STEPS
    assert any((run_dir / "train" / "checkpoint").iterdir())
    assert not (run_dir / "train" / "PREEMPTED").exists()


def _assert_ranks(run_dir: Path, attempt: int) -> None:
    """The stand-in records each rank's environment: ranks 0 and 1 of 2, one rendezvous."""
    envs = [json.loads((run_dir / "ranks" / f"rank{r}-attempt{attempt}.json").read_text()) for r in (0, 1)]
    assert [e["RANK"] for e in envs] == ["0", "1"] and {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert sorted(e["LOCAL_RANK"] for e in envs) == ["0", "1"]
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs}) == 1


@pytest.mark.parametrize("launch,sbatch_args", LAUNCH_MODES)
def test_job_runs_to_completion(slurm, prepared_run, tmp_path, launch, sbatch_args):
    """2 ranks over gloo: the job succeeds; metrics, checkpoint, config and logs are in place."""
    run_dir = _new_run_dir(tmp_path, prepared_run)
    job_id = _submit(slurm, tmp_path, run_dir, f"ok-{launch}", launch, *sbatch_args)
    info = slurm.wait_job(job_id, JOB_TIMEOUT)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), _explain(
        slurm, tmp_path
    )
    attempt = tmp_path / f"ok-{launch}-{job_id}" / "logs" / "attempt0"
    for f in ("launch.sh", "command.txt", "env.txt", "config.yaml"):
        assert (attempt / f).is_file(), f
    assert f"run_dir: {run_dir}" in (attempt / "config.yaml").read_text()  # the resolved config
    logs = list(attempt.glob("node*.log" if launch == "torchrun" else "task*.log"))
    assert len(logs) == (1 if launch == "torchrun" else 2)
    _assert_trained(run_dir)
    if JOB_COMMAND == "standin":
        _assert_ranks(run_dir, attempt=0)
    assert "requeue" not in (attempt.parent.parent / "events.log").read_text()


@pytest.mark.parametrize("launch,sbatch_args", LAUNCH_MODES)
def test_sigterm_checkpoints_requeues_and_resumes(slurm, prepared_run, tmp_path, launch, sbatch_args):
    """SIGTERM to the batch script mid-training: checkpoint, exit 143, requeue, resume, same end."""
    run_dir = _new_run_dir(tmp_path, prepared_run)
    job_id = _submit(slurm, tmp_path, run_dir, "preempt", launch, *sbatch_args)
    end = time.monotonic() + JOB_TIMEOUT
    while len(_steps(run_dir)) < 2:  # mid-training: a couple of steps done
        assert time.monotonic() < end and slurm.job(job_id).get("JobState") in ("PENDING", "RUNNING"), _explain(
            slurm, tmp_path
        )
        time.sleep(0.2)
    slurm.scancel("--batch", "--signal=TERM", str(job_id))  # = what --signal=B:TERM@N sends
    info = slurm.wait_job(job_id, max(end - time.monotonic(), 1.0), hurry_requeued=True)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), _explain(
        slurm, tmp_path
    )

    events = (tmp_path / f"preempt-{job_id}" / "events.log").read_text()
    assert "attempt=0] SIGTERM" in events and "attempt=0] requeue" in events, events
    # torchrun itself exits 1 when signalled (after its ranks exited 143); srun tasks report 143.
    assert f"attempt=0] ranks exited with {143 if launch == 'srun' else 1}" in events, events
    assert "attempt=1] stage train finished" in events, events
    saved_at = int(events.split("checkpoint saved at step ")[1].split()[0])
    assert saved_at >= 1 and saved_at < STEPS, "the SIGTERM arrived mid-training"
    _assert_trained(run_dir)  # resumed after the checkpoint: no step twice, same final step
    assert (tmp_path / f"preempt-{job_id}" / "logs" / "attempt1" / "config.yaml").is_file()
    if JOB_COMMAND == "standin":
        _assert_ranks(run_dir, attempt=0)
        _assert_ranks(run_dir, attempt=1)
