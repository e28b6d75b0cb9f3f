"""``launchers/pivot_rl.slurm --dry-run``: the commands it would run, derived from Slurm's variables.

Runs anywhere (no Slurm daemons): the launcher is given the environment a 2-node allocation has."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parents[2] / "launchers" / "pivot_rl.slurm"


def _dry_run(tmp_path: Path, *args: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PIVOTRL_", "CONTAINER_", "MASTER_"))}
    base.update(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="exp",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="gpu[07-08]",
        SLURM_SUBMIT_DIR=str(tmp_path),
        NPROC_PER_NODE="8",
        **env,
    )
    r = subprocess.run(
        ["bash", str(LAUNCHER), "--dry-run", *args], env=base, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"
    return r.stdout


def test_torchrun_per_node(tmp_path):
    out = _dry_run(
        tmp_path,
        "train",
        "experiment=quickstart",
        "data.bfcl_categories=[a, b]",
        SLURM_CPUS_ON_NODE="64",
        MASTER_PORT="1234",
    )  # a stale MASTER_PORT is not inherited
    job_dir = tmp_path / "runs" / "slurm" / "exp-4242"
    assert 'exec torchrun --nnodes=2 --nproc_per_node=8 --node_rank="$SLURM_NODEID"' in out
    assert "--master_addr=gpu07 --master_port=24242 --no_python" in out
    # overrides are passed through quoted (the one with a space stays one argument), run_dir added
    assert f"pivotrl train experiment=quickstart data.bfcl_categories=\\[a\\,\\ b\\] run_dir={job_dir}" in out
    assert (
        f"+ srun --nodes=2 --ntasks-per-node=1 --output={job_dir}/logs/attempt0/node%n.log --cpus-per-task=64 "
        "--kill-on-bad-exit=0 --wait=240 bash"
    ) in out  # survivors get the checkpoint grace, not KillWait
    assert "show-config" in out and f"> {job_dir}/logs/attempt0/config.yaml" in out
    assert "--container-image" not in out
    # torch < 2.12 ignores TORCH_ELASTIC_SHUTDOWN_TIMEOUT (ranks SIGKILLed 30 s after SIGTERM): say so
    assert "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=240" in out and "warning: torch < 2.12" in out


def test_srun_per_task_in_container_with_user_run_dir(tmp_path):
    out = _dry_run(
        tmp_path,
        "profile",
        "run_dir=/lustre/exp1",
        PIVOTRL_LAUNCH="srun",
        CONTAINER_IMAGE="nvcr.io/nvidia/nemo-rl:v0.5.0",
        SLURM_RESTART_COUNT="2",
    )
    assert "export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID" in out
    assert "export MASTER_ADDR=gpu07 MASTER_PORT=24242" in out
    assert "exec pivotrl profile run_dir=/lustre/exp1 \n" in out  # the user's run_dir, not the job dir
    assert "--container-image=nvcr.io/nvidia/nemo-rl:v0.5.0" in out
    assert "--no-container-mount-home" in out  # ~/.local must not shadow the image's packages
    assert "\\,/lustre/exp1:/lustre/exp1 --container-workdir=" in out  # the run_dir is mounted too
    assert "logs/attempt2/task%t.log" in out  # third attempt after two requeues
    assert "requeued run (restart 2)" in out


def test_stage_and_overrides_from_environment(tmp_path):
    out = _dry_run(
        tmp_path,
        PIVOTRL_STAGE="filter",
        PIVOTRL_OVERRIDES="filter.lambda_diff=0.5 seed=3",
        PIVOTRL_CMD="python -m pivotrl_nemo.cli",
    )
    assert "--no_python \\\n  python -m pivotrl_nemo.cli filter filter.lambda_diff=0.5 seed=3 run_dir=" in out


def test_missing_stage_is_an_error(tmp_path):
    r = subprocess.run(
        ["bash", str(LAUNCHER), "--dry-run"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIVOTRL_")},
    )
    assert r.returncode == 2 and "usage:" in r.stderr
