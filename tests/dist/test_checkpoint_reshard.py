"""A dist checkpoint saved at TP=2 + sequence parallelism (MoE) or at EP=2 loads at TP=1 / EP=1
(2 gloo processes, DP=2 after the load), and one of megatron's DistributedOptimizer saved at DP=2
or EP=2 loads at DP=2 or TP=2 + SP: the same full weights, the same loss, and the same next
optimizer step (Adam's moments and step resharded too). See checkpoint_reshard_worker.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("checkpoint_reshard_worker.py")
CASES = ["tp2_sp_moe_to_tp1", "ep2_to_ep1", "distopt_dp2", "distopt_ep2_to_tp2_sp"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("reshard")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29537", str(WORKER),
                        str(work / "results.pt"), str(work)], capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    return torch.load(work / "results.pt")


@pytest.mark.timeout(500)
@pytest.mark.parametrize("case", CASES)
def test_checkpoint_loads_at_another_layout(results, case):
    r = results[case]
    saved = Path(r["saved_dir"])
    assert saved.name == "step_00000001" and (saved.parent / "latest").read_text().strip() == saved.name
    assert r["extra"] == {"loop_step": 1, "case": case} and r["step_count"] == 1
    assert r["same_names"], "the target layout's full state has other tensor names"
    assert r["before"] > 1e-2, "the target policy started from the saved weights: the load would be untested"
    assert r["weights_diff"] == 0.0, f"{r['weights_worst']} differs after the resharded load"
    assert r["loss_b_loaded"] == pytest.approx(r["loss_b"], abs=1e-5)
    assert r["lr"] == r["ref_lr"]
    # the next step continues the saved optimizer: a fresh optimizer would land ~1e-4 away
    assert r["fresh_optimizer_diff"] > 1e-4
    assert r["after_diff"] < 1e-6, f"{r['after_worst']} differs by {r['after_diff']:.3g} after the next step"
