"""One command at a time per run directory: an advisory ``flock`` on ``<run_dir>/.lock``.

Two commands on one run directory corrupt each other: two ``pivotrl profile`` both sample every
candidate, and a ``pivotrl train`` under another configuration deletes the first one's
``train/``. ``run_dir_lock(run_dir)`` takes the lock without waiting; when another process holds it,
``RunLockedError`` (a ``UserError``: exit 2) names the holder from what it wrote into the file
(pid, host, since when, command; ``lock_holder``).

- **Reentrant within a process**: ``pivotrl run`` may hold it across its stages while
  ``Runner.run`` takes it again for each one; the flock is released when the outermost holder
  leaves.
- **One launch, one holder**: only (global) rank 0 of a torchrun / srun launch takes the flock;
  the other ranks of that launch are coordinated by rank 0 (they act only after rank 0 set the
  run directory up), and taking it on every rank would make the launch lock itself out.
- **Slurm array tasks share it**: the tasks of a profiling array run concurrently on one run
  directory by design (each writes its own shard log), so they take a shared flock; any other
  command takes an exclusive one and therefore excludes them, and they exclude it.
- **A dead holder does not block**: the kernel drops a flock with its process, so the lock of a
  killed command is simply taken again; the holder record it left (a clean release empties the
  file) is reported in a warning.
- **Filesystems without flock** (some network mounts answer ENOLCK / EOPNOTSUPP): the command runs
  unlocked with a warning rather than not at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotrl_nemo.distributed import env
from pivotrl_nemo.utils.errors import UserError
from pivotrl_nemo.utils.logging import get_logger

__all__ = ["LOCK_NAME", "RunLockedError", "lock_holder", "lock_path", "run_dir_lock"]

log = get_logger(__name__)

LOCK_NAME = ".lock"
"""The lock file's name under ``run_dir``."""


class RunLockedError(UserError):
    """Another process holds the run directory; the message names it and what to do."""

    def __init__(self, run_dir: Path, holder: dict[str, Any]) -> None:
        self.run_dir, self.holder = run_dir, holder
        super().__init__(
            f"run directory {run_dir} is in use by another process: {describe_holder(holder)}; a run directory takes one "
            "command at a time: wait for it to finish, stop it, or use another run_dir"
        )


def lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOCK_NAME


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the holder wrote into the lock file (pid, host, since, command, shared); None when
    nobody holds it or the last holder released it cleanly (the file is then empty)."""
    try:
        text = lock_path(run_dir).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        holder = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:  # a holder killed mid-write
        return {}
    return holder if isinstance(holder, dict) or holder is None else {}


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that has not written its details (yet)"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"
    if holder.get("command"):
        text += f", running `{holder['command']}`"
    if holder.get("shared"):
        text += f" (Slurm array job {holder.get('array_job', '?')} task {holder.get('array_task', '?')})"
    return text


def _command_line() -> str:
    """``pivotrl train a=b`` rather than ``/long/venv/path/pivotrl train a=b``."""
    argv = sys.argv or ["?"]
    return " ".join([Path(argv[0]).name, *argv[1:]])


def _array_task(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(array job id, task id) when this process is a task of a Slurm array."""
    if "SLURM_ARRAY_TASK_ID" in environ:
        return environ.get("SLURM_ARRAY_JOB_ID", "?"), environ["SLURM_ARRAY_TASK_ID"]
    return None


@dataclass
class _Hold:
    fd: int | None  # None: held without a flock (a filesystem without flock support)
    shared: bool
    depth: int


_HELD: dict[str, _Hold] = {}
"""Run directories this process holds, by resolved path (reentrancy)."""
_GUARD = threading.Lock()


def _flock(fd: int, op: int) -> bool:
    """``flock(fd, op | LOCK_NB)``: False when another process holds it."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _acquire(path: Path, shared: bool, info: dict[str, Any]) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC (os.open's default): a process this one execs must not inherit the lock and
    # keep the run directory held after this command ended.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # Exclusive first, for a shared holder too: holding it alone proves any record in the file
        # is a dead holder's (and only then is the record ours to write).
        alone = _flock(fd, fcntl.LOCK_EX)
        if not alone and not (shared and _flock(fd, fcntl.LOCK_SH)):
            raise RunLockedError(path.parent, lock_holder(path.parent) or {})
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            log.warning(
                "%s: this filesystem does not support flock (%s); running without the run-directory lock", path, e
            )
            return None
        raise
    except RunLockedError:
        os.close(fd)
        raise
    if alone:
        left = lock_holder(path.parent)
        if left is not None:
            # A clean release empties the file, so a record means that command died (killed,
            # OOM, node lost) while holding the lock; the kernel released its flock.
            log.warning(
                "%s: taking over the lock left by %s, which ended without releasing it (killed?)",
                path,
                describe_holder(left),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        # An array task shares it with the other tasks of its array. The conversion is not atomic
        # (flock(2)): a plain command slipping in between makes this task fail, never both run.
        if shared and not _flock(fd, fcntl.LOCK_SH):
            os.close(fd)
            raise RunLockedError(path.parent, lock_holder(path.parent) or {})
    # else: another task of an array holds it shared and its record names the array
    return fd


def _release(fd: int, shared: bool) -> None:
    try:
        # Empty the record while still holding the lock, so the next holder can tell a clean
        # release from a dead holder. A shared holder empties it only when it is the last one
        # (its non-blocking upgrade to exclusive succeeds).
        if not shared:
            os.ftruncate(fd, 0)
        else:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_dir_lock(
    run_dir: str | os.PathLike, command: str | None = None, environ: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Hold ``run_dir`` for the duration of the block (see the module docstring).

    Raises ``RunLockedError`` at once when another process holds it. ``command`` is what the
    record names (default: this process's command line); ``environ`` (default ``os.environ``)
    decides the rank and whether this is a Slurm array task.
    """
    vars_ = os.environ if environ is None else environ
    if env.rank(vars_) != 0:
        yield  # another rank of this launch: rank 0 holds the lock for all of them
        return
    array = _array_task(vars_)
    shared = array is not None
    key = str(Path(run_dir).resolve())
    with _GUARD:
        hold = _HELD.get(key)
        if hold is not None:
            if hold.shared and not shared:
                raise RuntimeError(f"{run_dir}: already held shared by this process; cannot take it exclusively")
            hold.depth += 1
        else:
            info: dict[str, Any] = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.time(),
                "command": command or _command_line(),
                "shared": shared,
            }
            if array is not None:
                info["array_job"], info["array_task"] = array
            hold = _HELD[key] = _Hold(_acquire(lock_path(run_dir), shared, info), shared, 1)
    try:
        yield
    finally:
        with _GUARD:
            hold.depth -= 1
            if hold.depth == 0:
                del _HELD[key]
                if hold.fd is not None:
                    _release(hold.fd, hold.shared)
