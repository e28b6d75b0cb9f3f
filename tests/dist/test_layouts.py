"""TP=2, TP=2+SP with MoE, EP=2, PP=2 (megatron's 1F1B schedule) and DP=2, each over gloo with 2
processes, and the hybrid (Nemotron-H-like) policy at TP=2+SP and EP=2, give the single-rank GRPO step: the same loss and the same updated weights (Adam
configured so the update is ~ -10 x gradient, i.e. the same gradients, scale included)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("layouts_worker.py")
LAYOUTS = ["dp2", "tp2", "tp2_sp_moe", "ep2", "pp2", "pp2_dense", "hybrid_tp2_sp", "hybrid_ep2"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts") / "results.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(WORKER), str(out)],
                       capture_output=True, text=True, env=env, timeout=500)
    assert r.returncode == 0, r.stderr[-4000:]
    return torch.load(out)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_step_equals_single_rank(results, layout):
    r = results[layout]
    assert r["tensors"], "the layout's full state has other tensor names than the single-rank model"
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-6, abs=1e-7)
    assert r["moved"] > 0.1, "the reference step barely changed the weights: the comparison would be vacuous"
    assert r["max_diff"] < 2e-6, f"{r['worst']} differs by {r['max_diff']:.3g} from the single-rank step"
