"""Expert tensor parallelism reaches megatron's ``parallel_state``: ``conf/parallel/tp2_ep2.yaml``
(expert TP 1 under attention TP 2) initialises on 2 gloo processes and its GRPO step equals the
single-rank one, and a second ``init_distributed`` at another expert TP is refused. See
expert_tp_layout_worker.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("expert_tp_layout_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("expert_tp") / "results.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    r = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29539", str(WORKER), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return torch.load(out)


@pytest.mark.timeout(400)
def test_tp2_ep2_config_initialises_with_its_expert_tp(results):
    p = results["parallel"]
    sizes = ("tensor_model_parallel_size", "expert_model_parallel_size", "expert_tensor_parallel_size")
    assert [p[k] for k in sizes] == [2, 2, 1]
    # the groups the experts are sharded over agree with the TransformerConfig the model got
    assert results["groups"] == {"tp": 2, "ep": 2, "expert_tp": 1, "expert_dp": 1}
    assert results["model_expert_tp"] == 1


@pytest.mark.timeout(400)
def test_tp2_ep2_step_equals_single_rank(results):
    assert results["same_names"], "the layout's full state has other tensor names than the single-rank model"
    assert results["loss"] == pytest.approx(results["ref_loss"], rel=1e-6, abs=1e-7)
    assert results["moved"] > 0.1, "the reference step barely changed the weights: the comparison would be vacuous"
    assert results["max_diff"] < 2e-6, f"{results['worst']} differs by {results['max_diff']:.3g}"


@pytest.mark.timeout(400)
def test_another_expert_tp_is_another_layout(results):
    assert results["tp2_expert_tp"] == 2  # null expert TP is TP, as in megatron
    assert results["spelled_out"] == 2, "expert TP 2 spelled out is the layout null already gave"
    assert "already initialized with another layout" in results["other_expert_tp"]
