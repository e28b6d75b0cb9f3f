"""Where this process sits in the job: global rank, local rank (the GPU on its node), world size.

The one place these are read. Standard library only: importing it costs nothing, so the logging
set-up, config validation and the CLI use it before torch is imported.

Sources, first match wins:

1. torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (``launchers/pivot_rl.slurm`` exports
   them under ``srun`` too);
2. Slurm's ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (a bare ``srun`` launch);
3. ``torch.distributed``, when a process group is up (a group created without those variables,
   e.g. by a test); it is consulted only if something already imported it;
4. alone: rank 0 of 1.

The launcher's variables come first: ``distributed.setup.init_distributed`` joins the job with
them (``launch``), so they agree with ``torch.distributed`` once the group exists. Code that runs
collectives asks its process group directly (``dist.get_rank(group)``), not this module.

Every function takes an optional ``environ`` mapping (default ``os.environ``); an explicit one is
read alone, without consulting ``torch.distributed`` (tests, ``profile_shards.shard_from_env``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Launch:
    """The ranks a process was launched with (``launch``)."""

    rank: int
    world_size: int
    local_rank: int


def _process_group(environ: Mapping[str, str] | None) -> Any:
    """``torch.distributed`` when ``environ`` is the process's own and a default group is up."""
    if environ is not None:
        return None
    dist = sys.modules.get("torch.distributed")  # never imported here: no group without it
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank: ``RANK``, else ``SLURM_PROCID``, else torch.distributed's, else 0."""
    env = os.environ if environ is None else environ
    for var in ("RANK", "SLURM_PROCID"):
        if var in env:
            return int(env[var])
    dist = _process_group(environ)
    return dist.get_rank() if dist is not None else 0


def world_size(environ: Mapping[str, str] | None = None) -> int:
    """How many ranks the job has: ``WORLD_SIZE``, else ``SLURM_NTASKS`` (when ``SLURM_PROCID`` is
    set), else torch.distributed's, else 1."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env:
        return int(env.get("SLURM_NTASKS", "1"))
    dist = _process_group(environ)
    return dist.get_world_size() if dist is not None else 1


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank on its node (the CUDA device it uses): ``LOCAL_RANK``, else
    ``SLURM_LOCALID`` (when ``SLURM_PROCID`` is set), else 0."""
    env = os.environ if environ is None else environ
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"])
    if "SLURM_PROCID" in env:
        return int(env.get("SLURM_LOCALID", "0"))
    return 0


def is_main(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this is global rank 0 (the rank that writes shared files and prints)."""
    return rank(environ) == 0


def launch(environ: Mapping[str, str] | None = None) -> Launch:
    """The ranks ``init_distributed`` creates the default process group with (environment only).

    A complete torchrun set (``RANK`` and ``WORLD_SIZE``) or a multi-task Slurm step
    (``SLURM_PROCID`` with ``SLURM_NTASKS`` > 1) gives its ranks; anything else is a world of one,
    so a stray variable never makes a lone process wait for peers.
    """
    env = os.environ if environ is None else environ
    torchrun = "RANK" in env and "WORLD_SIZE" in env
    slurm = "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1
    if torchrun or slurm:
        return Launch(rank(env), world_size(env), local_rank(env))
    return Launch(0, 1, 0)
