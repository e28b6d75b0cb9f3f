"""A real single-node Slurm cluster for tests: Debian's slurmctld + slurmd + munge.

``LocalSlurm`` installs the packages when missing (root only), writes a private ``slurm.conf``
under a temporary directory (own ports, own munge socket, own state and spool directories, so
nothing in /etc is touched and a system Slurm, if any, is not disturbed), starts ``munged``,
``slurmctld`` and ``slurmd`` as child processes in the foreground, and stops exactly those
processes (by pid) in ``stop()``.

Client commands (sbatch, scontrol, scancel) find the cluster through ``SLURM_CONF``, which
``env()`` returns; jobs inherit it, so ``srun`` inside a job talks to the same controller.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "munged")


class SlurmUnavailable(RuntimeError):
    """This machine cannot run a local Slurm; the message says why (used as a skip reason)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_binaries() -> list[str]:
    found = {
        b: shutil.which(b) or next((p for p in (f"/usr/sbin/{b}", f"/usr/bin/{b}") if os.path.exists(p)), None)
        for b in BINARIES
    }
    return [b for b, p in found.items() if p is None]


def ensure_installed(timeout: float = 900.0) -> float:
    """Install the Debian packages if any binary is missing; returns the seconds it took (0 when
    already installed). Raises SlurmUnavailable when not root, not Debian, or apt fails."""
    if not missing_binaries():
        return 0.0
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"Slurm is not installed ({', '.join(missing_binaries())} missing) and installing it "
            "needs root (apt-get install -y slurmctld slurmd slurm-client munge)"
        )
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            "Slurm is not installed and this machine has no apt-get (the test uses Debian's packages)"
        )
    t0 = time.perf_counter()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(
                f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s (Debian mirrors unreachable?)"
            ) from None
        if r.returncode != 0:
            raise SlurmUnavailable(
                f"`{' '.join(cmd)}` failed (exit {r.returncode}); Debian packages unreachable? "
                f"{r.stderr.strip()[-400:]}"
            )
    if missing_binaries():
        raise SlurmUnavailable(f"installed {PACKAGES} but still missing {missing_binaries()}")
    return time.perf_counter() - t0


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    """One controller + one compute node (this machine) with CPUs = nproc; see the module docstring."""

    def __init__(self, root: str | os.PathLike | None = None, cpus: int | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="pivotrl-slurm-"))
        self.root.chmod(0o755)  # munged (user munge) must traverse it
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}

    # ----------------------------------------------------------------------------- setup
    def env(self) -> dict[str, str]:
        """The environment for client commands and the jobs they submit."""
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            del env[k]  # a test run inside a Slurm job must not leak that job's settings
        return env

    def _write_munge(self) -> None:
        pw = pwd.getpwnam("munge")
        self.munge_dir.mkdir(exist_ok=True)
        self.munge_dir.chmod(0o755)  # munged requires the socket directory to be traversable by all
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (self.munge_dir, key):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        key.chmod(0o400)

    def _write_conf(self) -> None:
        mem_mb = max(512, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8))
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(exist_ok=True)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=pivotrl-test
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=3
SchedulerParameters=sched_interval=2
SlurmctldParameters=enable_configless
PlugStackConfig={r}/plugstack.conf
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        (r / "plugstack.conf").write_text("")

    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> None:
        ids = {}
        if user is not None:  # the daemon itself is our child, so stop() reaps it
            pw = pwd.getpwnam(user)
            ids = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        with open(self.root / "log" / f"{name}.stdout", "wb") as log:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True, **ids
            )

    def start(self, timeout: float = 60.0) -> LocalSlurm:
        ensure_installed()
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmd with SlurmdUser=root needs root")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self._write_conf()
        self._write_munge()
        m = self.munge_dir
        self._spawn(
            "munged",
            [
                _sbin("munged"),
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={m}/munge.key",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
            user="munge",
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(
            lambda: self._run("scontrol", "ping").returncode == 0 and "UP" in self._run("scontrol", "ping").stdout,
            timeout,
            "slurmctld did not answer `scontrol ping`",
        )
        self._spawn("slurmd", [_sbin("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(
            lambda: re.search(r"State=(IDLE|MIXED|ALLOCATED)", self._run("scontrol", "show", "node", self.node).stdout),
            timeout,
            "the node did not become IDLE",
        )

    def _run(self, *cmd: str, check: bool = False, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, check=check, timeout=timeout)

    def _wait(self, cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while starting; logs:\n{self.logs()}")
            if cond():
                return
            time.sleep(0.25)
        raise RuntimeError(f"{what} within {timeout:.0f} s; logs:\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        out = []
        for p in sorted((self.root / "log").glob("*")) + [self.munge_dir / "munged.log"]:
            if p.exists():
                out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def cancel_all_jobs(self, timeout: float = 60.0) -> None:
        """Cancel every job of this cluster and wait until none is left (so no slurmstepd, batch
        script or rank outlives the daemons)."""
        if self.procs.get("slurmctld") is None or self.procs["slurmctld"].poll() is not None:
            return
        ids = self._run("squeue", "-h", "-o", "%A").stdout.split()
        if ids:
            self._run("scancel", "--full", *ids)
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._run("squeue", "-h").stdout.strip():
            time.sleep(0.5)

    def stop(self, remove: bool = True) -> None:
        """Cancel the jobs, stop the daemons this object started (by pid, slurmd first) and remove
        the state directory."""
        try:
            self.cancel_all_jobs()
        except (OSError, subprocess.SubprocessError):
            pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------------------- jobs
    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None) -> int:
        r = subprocess.run(
            ["sbatch", "--parsable", *args],
            env={**self.env(), **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"sbatch failed ({r.returncode}): {r.stderr}\n{self.logs()}")
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, ...); {} when unknown."""
        r = self._run("scontrol", "-o", "show", "job", str(job_id))
        if r.returncode != 0:
            return {}
        return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)

    def wait_job(self, job_id: int, timeout: float, hurry_requeued: bool = True) -> dict[str, str]:
        """Poll until the job reaches a final state; returns its scontrol record.

        Slurm holds a requeued batch job for 120 s (BeginTime); with ``hurry_requeued`` the wait
        starts it sooner, though not in the second of the requeue: slurmd revokes the old job
        credential with 1 s resolution and refuses a new one issued in that second."""
        end = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < end:
            info = self.job(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            if hurry_requeued and info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                time.sleep(2.5)
                self.scontrol("update", f"JobId={job_id}", "StartTime=now")
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {info}\n{self.logs()}")

    def scontrol(self, *args: str) -> str:
        return self._run("scontrol", *args, check=True).stdout

    def scancel(self, *args: str) -> None:
        self._run("scancel", *args, check=True)
