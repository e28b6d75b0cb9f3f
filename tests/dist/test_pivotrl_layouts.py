"""5 PivotRL training steps at TP=2 (+SP, MoE) and at EP=2 (2 processes over gloo) give the same
rollouts, rewards and losses as the same 5 steps on one rank, from the same pi_0."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pivotrl_nemo.pipeline import Runner
from pivotrl_nemo.config import load_config
from pivotrl_nemo.utils.io import atomic_write_jsonl, read_jsonl
from pivotrl_nemo.utils.metrics import read_metrics

WORKER = Path(__file__).with_name("pivotrl_layout_worker.py")
TRAIN = ["algorithm.steps=5", "algorithm.prompts_per_step=2", "algorithm.group_size=8", "algorithm.save_every=5",
         "algorithm.optim.lr=1e-3", "algorithm.micro_batch_size=3"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _train(run_dir: Path, ranks: int, overrides: list[str]) -> list[dict]:
    if ranks == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--nproc_per_node", str(ranks), "--master_port", "29537", str(WORKER)]
    r = subprocess.run(cmd + [str(run_dir), *TRAIN, *overrides], capture_output=True, text=True, env=_env(),
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return read_metrics(run_dir / "train" / "metrics.jsonl")


@pytest.mark.timeout(1200)
def test_pivotrl_steps_match_single_rank_at_tp2_and_ep2(tmp_path):
    base = tmp_path / "base"
    cfg = load_config(["experiment=tiny", f"run_dir={base}", "data.max_trajectories=2",
                       "data.split_fractions={sft: 1.0, rl: 0.0, val: 0.0, test: 0.0}", "sft.steps=120",
                       "sft.batch_size=8", "sft.optim.lr=1e-2"])
    runner = Runner(cfg)
    for name in ("build", "extract", "sft"):
        runner.run(name)
    atomic_write_jsonl(base / "pivots.jsonl", read_jsonl(base / "candidates" / "sft.jsonl")[:4])
    runs = {}
    for name, ranks, overrides in (("one", 1, []), ("tp2", 2, ["parallel=tp2"]), ("ep2", 2, ["parallel=ep2"])):
        shutil.copytree(base, tmp_path / name)
        runs[name] = _train(tmp_path / name, ranks, overrides)
    one = runs["one"]
    assert len(one) == 5
    assert any(m["train/trained_sequences"] > 0 for m in one), "no step trained: the comparison would be vacuous"
    for name in ("tp2", "ep2"):
        other = runs[name]
        assert len(other) == 5, name
        for a, b in zip(one, other):
            step = a["step"]
            assert b["train/reward_mean"] == a["train/reward_mean"], f"{name} step {step}: different rollouts"
            assert b["train/valid_tokens"] == a["train/valid_tokens"], f"{name} step {step}"
            assert b["train/loss"] == pytest.approx(a["train/loss"], abs=2e-5), f"{name} step {step}"
            assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4, abs=1e-6), f"{name} {step}"
