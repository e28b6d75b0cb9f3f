"""DP=2 over gloo (torchrun, 2 processes) gives exactly the single-rank GRPO step: the loss is
normalised by the global valid-token count and rescaled for megatron DDP's gradient averaging."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("grpo_dp_worker.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.timeout(300)
def test_dp2_step_equals_single_rank(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    r = subprocess.run([sys.executable, str(WORKER), str(one)], capture_output=True, text=True, env=_env(), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29531", str(WORKER), str(two)],
                       capture_output=True, text=True, env=_env(), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert a["metrics"]["valid_tokens"] == b["metrics"]["valid_tokens"]
    assert a["metrics"]["reward_mean"] == pytest.approx(b["metrics"]["reward_mean"])
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], abs=1e-6)
    changed = 0
    for k, w in a["weights"].items():
        assert torch.allclose(w, b["weights"][k], atol=1e-6), k
        changed += 1
    assert changed > 10
