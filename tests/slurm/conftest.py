"""Session fixture: a real single-node Slurm (see local_slurm.py), installed and started once."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from local_slurm import LocalSlurm, SlurmUnavailable, ensure_installed  # noqa: E402

log = logging.getLogger("tests.slurm")


@pytest.fixture(scope="session")
def slurm():
    """A running LocalSlurm; skips (with the reason) where the machine cannot run one.
    Set PIVOTRL_SKIP_SLURM=1 to skip these tests on purpose."""
    if os.environ.get("PIVOTRL_SKIP_SLURM") == "1":
        pytest.skip("PIVOTRL_SKIP_SLURM=1")
    try:
        t0 = time.perf_counter()
        install_s = ensure_installed()
        cluster = LocalSlurm().start()
        log.warning(
            "local Slurm ready: install %.1f s, start %.1f s (%s)",
            install_s,
            time.perf_counter() - t0 - install_s,
            cluster.root,
        )
    except SlurmUnavailable as e:
        pytest.skip(f"no local Slurm on this machine: {e}")

    def interrupt(signum, frame):  # a SIGTERM'd pytest (CI timeout) still tears the cluster down
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield cluster
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, old)
